"""Grafana panel, variable and dashboard builders (pure functions returning dicts).

Used by build.py. Every query targets the ``datasource`` variable; no data
source uid is ever written into a dashboard.
"""

from __future__ import annotations

from typing import Any

SCHEMA_VERSION = 39

# -- panels (pure: each returns one panel dict; ``grid`` places them) ----------------

DS = {"type": "prometheus", "uid": "${datasource}"}


def target(
    expr: str, legend: str = "", *, ref: str = "A", fmt: str = "time_series", instant: bool = False
) -> dict[str, Any]:
    return {
        "datasource": DS,
        "editorMode": "code",
        "expr": expr,
        "format": fmt,
        "instant": instant,
        "range": not instant,
        "legendFormat": legend or "__auto",
        "refId": ref,
    }


def table_target(expr: str, ref: str = "A") -> dict[str, Any]:
    """An instant query whose result is a table (for ``table`` panels)."""
    return target(expr, fmt="table", instant=True, ref=ref)


def _panel(kind: str, title: str, targets: list[dict], w: int, h: int, **extra: Any) -> dict:
    return {"type": kind, "title": title, "datasource": DS, "targets": targets, "w": w, "h": h} | {
        k: v for k, v in extra.items() if v is not None
    }


def row(title: str) -> dict[str, Any]:
    return {"type": "row", "title": title, "collapsed": False, "panels": [], "w": 24, "h": 1}


def stat(title: str, expr: str, unit: str, *, red_at: float | None = None) -> dict[str, Any]:
    steps = [{"color": "green", "value": None}]
    if red_at is not None:
        steps.append({"color": "red", "value": red_at})
    return _panel(
        "stat",
        title,
        [target(expr, instant=False)],
        4,
        4,
        fieldConfig={
            "defaults": {"unit": unit, "thresholds": {"mode": "absolute", "steps": steps}},
            "overrides": [],
        },
        options={
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "area",
            "justifyMode": "auto",
            "orientation": "auto",
            "textMode": "auto",
        },
    )


def timeseries(
    title: str,
    targets: list[dict],
    unit: str,
    *,
    stack: bool = False,
    bars: bool = False,
    threshold: float | None = None,
    axis_label: str = "",
    description: str | None = None,
    w: int = 12,
) -> dict[str, Any]:
    steps = [{"color": "green", "value": None}]
    if threshold is not None:
        steps.append({"color": "red", "value": threshold})
    custom = {
        "drawStyle": "bars" if bars else "line",
        "fillOpacity": 80 if bars else 10,
        "lineWidth": 1,
        "showPoints": "never",
        "axisLabel": axis_label,
        "stacking": {"mode": "normal" if (stack or bars) else "none", "group": "A"},
        "thresholdsStyle": {"mode": "line" if threshold is not None else "off"},
    }
    return _panel(
        "timeseries",
        title,
        targets,
        w,
        8,
        description=description,
        fieldConfig={
            "defaults": {
                "unit": unit,
                "custom": custom,
                "thresholds": {"mode": "absolute", "steps": steps},
            },
            "overrides": [],
        },
        options={
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    )


def rate_timeseries(
    title: str, metric: str, sel: str, by: str, unit: str = "short", **options: Any
) -> dict[str, Any]:
    """A time series of ``metric``'s rate summed by one label, a line per value of it."""
    return timeseries(title, [target(sum_rate(metric, sel, by), f"{{{{{by}}}}}")], unit, **options)


def heatmap(title: str, tgt: dict, *, description: str | None = None, w: int = 12) -> dict:
    """A heatmap of a Prometheus histogram: buckets already computed (calculate: false)."""
    return _panel(
        "heatmap",
        title,
        [tgt],
        w,
        8,
        description=description,
        fieldConfig={
            "defaults": {"custom": {"scaleDistribution": {"type": "linear"}}},
            "overrides": [],
        },
        options={
            "calculate": False,
            "cellGap": 1,
            "color": {
                "mode": "scheme",
                "scheme": "Oranges",
                "steps": 64,
                "exponent": 0.5,
                "scale": "exponential",
                "fill": "dark-orange",
                "reverse": False,
            },
            "filterValues": {"le": 1e-9},
            "rowsFrame": {"layout": "auto"},
            "yAxis": {"axisPlacement": "left", "unit": "short", "reverse": False},
            "tooltip": {"show": True, "yHistogram": True},
            "legend": {"show": True},
            "cellValues": {"unit": "short"},
            "exemplars": {"color": "rgba(255,0,255,0.7)"},
        },
    )


def piechart(title: str, tgt: dict, *, w: int = 12) -> dict[str, Any]:
    return _panel(
        "piechart",
        title,
        [tgt],
        w,
        8,
        fieldConfig={"defaults": {"unit": "short"}, "overrides": []},
        options={
            "pieType": "donut",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "legend": {
                "displayMode": "table",
                "placement": "right",
                "showLegend": True,
                "values": ["value"],
            },
            "tooltip": {"mode": "single"},
        },
    )


def table(
    title: str,
    targets: list[dict],
    *,
    rename: dict[str, str],
    hide: tuple[str, ...] = (),
    units: dict[str, str] | None = None,
    sort_by: str,
    desc: bool = True,
    keep_instance: bool = False,
    drop_zero: tuple[str, ...] = (),
    description: str | None = None,
    w: int = 12,
) -> dict[str, Any]:
    """Instant table queries merged on their common labels, columns renamed; rows
    whose ``drop_zero`` columns are all 0 are left out."""
    overrides = [
        {"matcher": {"id": "byName", "options": col}, "properties": [{"id": "unit", "value": unit}]}
        for col, unit in (units or {}).items()
    ]
    excluded = {"Time": True, "job": True} | {c: True for c in hide}
    if not keep_instance:  # several instances report the same brand: merge them
        excluded["instance"] = True
    return _panel(
        "table",
        title,
        targets,
        w,
        8,
        fieldConfig={"defaults": {"custom": {"align": "auto"}}, "overrides": overrides},
        options={
            "showHeader": True,
            "cellHeight": "sm",
            "sortBy": [{"displayName": sort_by, "desc": desc}],
        },
        description=description,
        transformations=[
            {"id": "merge", "options": {}},
            {"id": "organize", "options": {"excludeByName": excluded, "renameByName": rename}},
            *([_drop_zero_rows(drop_zero)] if drop_zero else []),
        ],
    )


def _drop_zero_rows(columns: tuple[str, ...]) -> dict[str, Any]:
    """Grafana's filter-by-value: leave out the rows where every one of ``columns`` is 0."""
    zero = {"id": "equal", "options": {"value": 0}}
    return {
        "id": "filterByValue",
        "options": {
            "type": "exclude",
            "match": "all",
            "filters": [{"fieldName": c, "config": zero} for c in columns],
        },
    }


def grid(panels: list[dict]) -> list[dict]:
    """Number the panels and flow them left to right into Grafana's 24-column grid."""
    placed, x, y, line_h = [], 0, 0, 0
    for n, p in enumerate(panels, start=1):
        p = dict(p)
        w, h = p.pop("w"), p.pop("h")
        if x + w > 24 or p["type"] == "row":
            x, y, line_h = 0, y + line_h, 0
        placed.append({"id": n, "gridPos": {"h": h, "w": w, "x": x, "y": y}} | p)
        x, line_h = x + w, max(line_h, h)
        if p["type"] == "row":
            x, y, line_h = 24, y, h  # a row fills its line
    return placed


# -- templating --------------------------------------------------------------------


def datasource_variable() -> dict[str, Any]:
    return {
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
        "hide": 0,
        "includeAll": False,
        "multi": False,
        "options": [],
        "refresh": 1,
        "regex": "",
        "skipUrlSync": False,
    }


def label_variable(name: str, label: str, metric: str) -> dict[str, Any]:
    """A multi-value query variable over one label; "All" is the regex ``.*``."""
    query = f"label_values({metric}, {name})"
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "definition": query,
        "query": query,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "hide": 0,
        "includeAll": True,
        "allValue": ".*",
        "multi": True,
        "options": [],
        "refresh": 2,
        "regex": "",
        "sort": 1,
        "skipUrlSync": False,
    }


def dashboard(
    uid: str, title: str, description: str, variables: list[dict], panels: list[dict]
) -> dict[str, Any]:
    return {
        "id": None,
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["canwatch"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "annotations": {"list": []},
        "links": [
            {
                "title": "canwatch",
                "type": "dashboards",
                "tags": ["canwatch"],
                "asDropdown": True,
                "includeVars": True,
                "keepTime": True,
            }
        ],
        "templating": {"list": variables},
        "panels": grid(panels),
    }


# -- PromQL helpers: label selectors on the board variables ---------------------

B = 'brand=~"$brand"'
I = 'instance=~"$instance"'  # noqa: E741 - reads like the label it filters
RI = "$__rate_interval"
PROC = 'job="canwatch", instance=~"$instance"'


def sum_rate(metric: str, sel: str, by: str, window: str = RI) -> str:
    agg = f"sum by ({by}) " if by else "sum"
    return f"{agg}(rate({metric}{{{sel}}}[{window}]))"


def sum_increase(metric: str, sel: str, by: str, window: str = RI) -> str:
    agg = f"sum by ({by}) " if by else "sum"
    return f"{agg}(increase({metric}{{{sel}}}[{window}]))"


def ratio(num: str, den: str, sel: str, by: str, window: str = RI) -> str:
    return f"{sum_rate(num, sel, by, window)}\n/\n{sum_rate(den, sel, by, window)}"
