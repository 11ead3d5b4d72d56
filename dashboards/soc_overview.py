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
    rate_timeseries,
    ratio,
    row,
    stat,
    sum_increase,
    sum_rate,
    table,
    table_target,
    target,
    timeseries,
)

OPENED = "canwatch_incidents_opened_total"
ESCALATED = "canwatch_incidents_escalated_total"
ANOMALOUS, SCORED = "canwatch_anomalous_windows_total", "canwatch_windows_scored_total"


def at_a_glance() -> list[dict[str, Any]]:
    return [
        row("Fleet at a glance"),
        stat("Active incidents", f"sum(canwatch_incidents_active{{{B}}})", "short", red_at=1),
        stat(
            "Active critical incidents",
            f'sum(canwatch_incidents_active{{{B}, severity="critical"}})',
            "short",
            red_at=1,
        ),
        stat("Incidents opened (time range)", sum_increase(OPENED, B, "", "$__range"), "short"),
        stat("Anomalous windows (fleet)", ratio(ANOMALOUS, SCORED, B, ""), "percentunit"),
        stat("Vehicles active", f"sum(canwatch_vehicles_active{{{B}}})", "short"),
        stat(
            "Brands with a model",
            f"count(count by (brand) (canwatch_model_info{{{B}}}))",
            "short",
        ),
    ]


def incidents() -> list[dict[str, Any]]:
    return [
        row("Incidents"),
        timeseries(
            "Incidents opened per brand and severity",
            [target(sum_increase(OPENED, B, "brand, severity"), "{{brand}} {{severity}}")],
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
            target(sum_increase(OPENED, B, "attack", "$__range"), "{{attack}}", instant=True),
            w=8,
        ),
        timeseries(
            "Incidents opened by attack type",
            [target(sum_increase(OPENED, B, "attack"), "{{attack}}")],
            "short",
            bars=True,
            w=8,
        ),
        timeseries(
            "Incidents opened and closed",
            [
                target(sum_increase(OPENED, B, ""), "opened"),
                target(sum_increase(ESCALATED, B, ""), "escalated", ref="C"),
                target(
                    "-" + sum_increase("canwatch_incidents_closed_total", B, ""), "closed", ref="B"
                ),
            ],
            "short",
            bars=True,
            w=8,
            description="Opened and escalated (an open incident whose severity rose) above "
            "the axis, closed below it.",
        ),
    ]


CAMPAIGNS_OPENED = "canwatch_campaigns_opened_total"


def campaigns() -> list[dict[str, Any]]:
    """From ``canwatch campaigns``: one attack on one CAN id across a brand's vehicles."""
    by = "brand, attack"
    return [
        row("Fleet campaigns"),
        stat("Active campaigns", f"sum(canwatch_campaigns_active{{{B}}})", "short", red_at=1),
        stat(
            "Vehicles in active campaigns",
            f"sum(canwatch_campaign_vehicles{{{B}}})",
            "short",
            red_at=1,
        ),
        stat(
            "Campaigns opened (time range)",
            sum_increase(CAMPAIGNS_OPENED, B, "", "$__range"),
            "short",
        ),
        timeseries(
            "Campaigns opened by brand and attack",
            [target(sum_increase(CAMPAIGNS_OPENED, B, by), "{{brand}} {{attack}}")],
            "short",
            bars=True,
            w=12,
        ),
        table(
            "Campaigns by brand and attack",
            [
                table_target(f"sum by ({by}) (canwatch_campaigns_active{{{B}}})"),
                table_target(f"sum by ({by}) (canwatch_campaign_vehicles{{{B}}})", "B"),
                table_target(sum_increase(CAMPAIGNS_OPENED, B, by, "$__range"), "C"),
            ],
            rename={
                "brand": "Brand",
                "attack": "Attack",
                "Value #A": "Active campaigns",
                "Value #B": "Vehicles",
                "Value #C": "Opened (time range)",
            },
            sort_by="Active campaigns",
            drop_zero=("Active campaigns", "Opened (time range)"),
            w=24,
            description="The same suspected attack on the same CAN id on at least "
            "campaigns.min_vehicles vehicles of a brand. Campaign ids, CAN ids and member "
            "vehicles are in the campaign records: canwatch incidents --campaigns.",
        ),
    ]


def anomaly() -> list[dict[str, Any]]:
    return [
        row("Anomaly"),
        timeseries(
            "Anomalous-window rate per brand",
            [target(ratio(ANOMALOUS, SCORED, B, "brand"), "{{brand}}")],
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
                table_target(f"sort_desc({ratio(ANOMALOUS, SCORED, B, 'brand', '5m')})"),
                table_target(f"sum by (brand) (canwatch_incidents_active{{{B}}})", "B"),
                table_target(sum_increase(OPENED, B, "brand", "1h"), "C"),
                table_target(sum_rate("canwatch_frames_consumed_total", B, "brand", "5m"), "D"),
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
    ]


def traffic_and_models() -> list[dict[str, Any]]:
    return [
        row("Fleet traffic and models"),
        rate_timeseries(
            "Frames consumed per brand",
            "canwatch_frames_consumed_total",
            B,
            "brand",
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
                table_target(f"max by (brand, platform, version) (canwatch_model_info{{{B}}})"),
                table_target(f"max by (brand) (canwatch_model_threshold{{{B}}})", "B"),
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


def soc_overview() -> dict[str, Any]:
    groups = (at_a_glance, incidents, campaigns, anomaly, traffic_and_models)
    return dashboard(
        "canwatch-soc-overview",
        "canwatch / SOC overview",
        "Fleet state at a glance: incidents, attack types, anomaly rate and models per brand.",
        [datasource_variable(), label_variable("brand", "Brand", "canwatch_frames_consumed_total")],
        [panel for group in groups for panel in group()],
    )
