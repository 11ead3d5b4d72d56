"""The SOC overview board: fleet state at a glance, per brand."""

from __future__ import annotations

from typing import Any

from grafana_panels import (
    RI,
    B,
    dashboard,
    datasource_variable,
    heatmap,
    label_variable,
    piechart,
    ratio,
    row,
    stat,
    sum_rate,
    table,
    target,
    timeseries,
)


def soc_overview() -> dict[str, Any]:
    opened = "canwatch_incidents_opened_total"
    anomaly_rate = ratio(
        "canwatch_anomalous_windows_total", "canwatch_windows_scored_total", B, "brand"
    )
    panels = [
        row("Fleet at a glance"),
        stat("Active incidents", f"sum(canwatch_incidents_active{{{B}}})", "short", red_at=1),
        stat(
            "Active critical incidents",
            f'sum(canwatch_incidents_active{{{B}, severity="critical"}})',
            "short",
            red_at=1,
        ),
        stat("Incidents opened (time range)", f"sum(increase({opened}{{{B}}}[$__range]))", "short"),
        stat(
            "Anomalous windows (fleet)",
            ratio("canwatch_anomalous_windows_total", "canwatch_windows_scored_total", B, ""),
            "percentunit",
        ),
        stat("Vehicles active", f"sum(canwatch_vehicles_active{{{B}}})", "short"),
        stat(
            "Brands with a model",
            f"count(count by (brand) (canwatch_model_info{{{B}}}))",
            "short",
        ),
        row("Incidents"),
        timeseries(
            "Incidents opened per brand and severity",
            [
                target(
                    f"sum by (brand, severity) (increase({opened}{{{B}}}[{RI}]))",
                    "{{brand}} {{severity}}",
                )
            ],
            "short",
            bars=True,
            description="Incidents opened per interval, stacked by brand and severity.",
        ),
        timeseries(
            "Active incidents by brand and severity",
            [
                target(
                    f"sum by (brand, severity) (canwatch_incidents_active{{{B}}})",
                    "{{brand}} {{severity}}",
                )
            ],
            "short",
            stack=True,
        ),
        piechart(
            "Attack types (incidents opened in time range)",
            target(
                f"sum by (attack) (increase({opened}{{{B}}}[$__range]))", "{{attack}}", instant=True
            ),
            w=8,
        ),
        timeseries(
            "Incidents opened by attack type",
            [target(f"sum by (attack) (increase({opened}{{{B}}}[{RI}]))", "{{attack}}")],
            "short",
            bars=True,
            w=8,
        ),
        timeseries(
            "Incidents opened and closed",
            [
                target(f"sum(increase({opened}{{{B}}}[{RI}]))", "opened"),
                target(
                    f"-sum(increase(canwatch_incidents_closed_total{{{B}}}[{RI}]))",
                    "closed",
                    ref="B",
                ),
            ],
            "short",
            bars=True,
            w=8,
            description="Opened above the axis, closed below it.",
        ),
        row("Anomaly"),
        timeseries(
            "Anomalous-window rate per brand",
            [target(anomaly_rate, "{{brand}}")],
            "percentunit",
            description="Share of scored vehicle windows at or above the calibrated threshold.",
        ),
        heatmap(
            "Anomaly score distribution",
            target(
                f"sum by (le) (rate(canwatch_anomaly_score_bucket{{{B}}}[{RI}]))",
                "{{le}}",
                fmt="heatmap",
            ),
            description="Window scores (1.0 = calibrated threshold), windows per second per bucket.",
        ),
        timeseries(
            "Anomaly score p99 per brand",
            [
                target(
                    f"histogram_quantile(0.99, sum by (brand, le) "
                    f"(rate(canwatch_anomaly_score_bucket{{{B}}}[{RI}])))",
                    "{{brand}}",
                )
            ],
            "short",
            threshold=1.0,
            description="Above the red line (1.0) more than 1% of the brand's windows are anomalous.",
        ),
        table(
            "Brands ranked by current anomaly rate",
            [
                target(
                    "sort_desc("
                    + ratio(
                        "canwatch_anomalous_windows_total",
                        "canwatch_windows_scored_total",
                        B,
                        "brand",
                        "5m",
                    )
                    + ")",
                    fmt="table",
                    instant=True,
                    ref="A",
                ),
                target(
                    f"sum by (brand) (canwatch_incidents_active{{{B}}})",
                    fmt="table",
                    instant=True,
                    ref="B",
                ),
                target(
                    f"sum by (brand) (increase({opened}{{{B}}}[1h]))",
                    fmt="table",
                    instant=True,
                    ref="C",
                ),
                target(
                    sum_rate("canwatch_frames_consumed_total", B, "brand", "5m"),
                    fmt="table",
                    instant=True,
                    ref="D",
                ),
            ],
            rename={
                "brand": "Brand",
                "Value #A": "Anomaly rate (5m)",
                "Value #B": "Active incidents",
                "Value #C": "Incidents opened (1h)",
                "Value #D": "Frames/s",
            },
            units={"Anomaly rate (5m)": "percentunit", "Frames/s": "short"},
            sort_by="Anomaly rate (5m)",
        ),
        row("Fleet traffic and models"),
        timeseries(
            "Frames consumed per brand",
            [target(sum_rate("canwatch_frames_consumed_total", B, "brand"), "{{brand}}")],
            "short",
            axis_label="frames/s",
        ),
        timeseries(
            "Vehicles active per brand",
            [target(f"sum by (brand) (canwatch_vehicles_active{{{B}}})", "{{brand}}")],
            "short",
        ),
        table(
            "Model version per brand",
            [
                target(
                    f"max by (brand, platform, version) (canwatch_model_info{{{B}}})",
                    fmt="table",
                    instant=True,
                    ref="A",
                ),
                target(
                    f"max by (brand) (canwatch_model_threshold{{{B}}})",
                    fmt="table",
                    instant=True,
                    ref="B",
                ),
            ],
            rename={
                "brand": "Brand",
                "platform": "Platform",
                "version": "Model version",
                "Value #B": "Threshold (raw score)",
            },
            hide=("Value #A",),
            w=24,
            sort_by="Brand",
            desc=False,
        ),
    ]
    return dashboard(
        "canwatch-soc-overview",
        "canwatch / SOC overview",
        "Fleet state at a glance: incidents, attack types, anomaly rate and models per brand.",
        [datasource_variable(), label_variable("brand", "Brand", "canwatch_frames_consumed_total")],
        panels,
    )
