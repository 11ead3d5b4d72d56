"""The brand -> platform map (configs/brands.toml)."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from detector.core.errors import ConfigError

DEFAULT_BRANDS_FILE = Path(__file__).resolve().parents[2] / "configs" / "brands.toml"
_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


@dataclass(frozen=True)
class Brand:
    slug: str
    name: str
    platform: str


@dataclass(frozen=True)
class Fleet:
    brands: dict[str, Brand]
    platform_dbc: dict[str, str]

    def platform_of(self, brand: str) -> str:
        """The platform serving ``brand``; an unlisted valid slug is its own platform."""
        validate_slug(brand)
        known = self.brands.get(brand)
        return known.platform if known else brand

    def brands_of(self, platform: str) -> list[str]:
        return sorted(b.slug for b in self.brands.values() if b.platform == platform)

    @property
    def platforms(self) -> list[str]:
        return sorted(self.platform_dbc)


def validate_slug(brand: str) -> str:
    if not isinstance(brand, str) or not _SLUG.fullmatch(brand):
        raise ConfigError(f"brand must be a lower-case slug (a-z, 0-9, '-'), got {brand!r}")
    return brand


def load_fleet(path: Path | str = DEFAULT_BRANDS_FILE) -> Fleet:
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read brand map: {exc}") from None
    platforms = raw.get("platforms", {})
    dbc = {name: str(p.get("dbc", "")) for name, p in platforms.items()}
    brands: dict[str, Brand] = {}
    for slug, entry in raw.get("brands", {}).items():
        validate_slug(slug)
        platform = entry.get("platform")
        if platform not in dbc:
            raise ConfigError(
                f"{path}: brands.{slug}.platform must be one of {sorted(dbc)}, got {platform!r}"
            )
        brands[slug] = Brand(slug, str(entry.get("name", slug)), platform)
    return Fleet(brands, dbc)
