"""canwatch's exception tree.

CanwatchError                 anything canwatch reports to a user as one line
 +-- InputError               a malformed input file (message starts "file:line:")
 +-- ConfigError              a bad configuration key or value (names the key)
 +-- ModelError               a model that cannot be trusted or used
 +-- DecodeError              a Kafka record that fails to decode or validate;
                              ``reason`` is the bounded metric label
"""

from __future__ import annotations


class CanwatchError(Exception):
    """Base of every error canwatch turns into a one-line message."""


class InputError(CanwatchError):
    """A malformed input file; str() is ``file:line: what is wrong``."""

    def __init__(self, path: str, line: int | None, what: str) -> None:
        self.path, self.line, self.what = str(path), line, what
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {what}")


class ConfigError(CanwatchError):
    """A configuration value that fails validation."""


class ModelError(CanwatchError):
    """A model file or manifest that is missing, tampered with or incompatible."""


class DecodeError(CanwatchError):
    """A telemetry record that cannot be decoded; goes to the DLQ."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason, self.detail = reason, detail
        super().__init__(f"{reason}: {detail}")
