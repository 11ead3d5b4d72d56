"""The model-owner board: is the serving model still right for its brands, and would the
shadow be better? Serving vs shadow per brand, the version timeline, and drift."""

from __future__ import annotations

from typing import Any

from grafana_panels import (
    RI,
    B,
    dashboard,
    datasource_variable,
    label_variable,
    ratio,
    row,
    sum_increase,
    table,
    table_target,
    target,
    timeseries,
)

WINDOWS, ANOMALOUS = "canwatch_model_windows_total", "canwatch_model_anomalous_windows_total"
INCIDENTS = "canwatch_model_incidents_total"
BY_ROLE = "brand, role"


def serving_vs_shadow() -> list[dict[str, Any]]:
    return [
        row("Serving vs shadow"),
        timeseries(
            "Anomalous-window rate per brand and role",
            [target(ratio(ANOMALOUS, WINDOWS, B, BY_ROLE), "{{brand}} {{role}}")],
            "percentunit",
            description="Share of the brand's windows at or above each model's own threshold. "
            "Both models score the same windows: a shadow far above the serving line would "
            "flood the analysts, one far below may have gone blind.",
        ),
        timeseries(
            "Incidents: published (serving) vs would-be (shadow)",
            [target(sum_increase(INCIDENTS, B, BY_ROLE), "{{brand}} {{role}}")],
            "short",
            bars=True,
            description="Incidents opened per interval. The shadow's are counted, never "
            "published: its false-incident rate is what promotion is judged on.",
        ),
        timeseries(
            "Shadow agreement per brand",
            [target(f"min by (brand) (canwatch_shadow_agreement_ratio{{{B}}})", "{{brand}}")],
            "percentunit",
            description="Share of windows, since the shadow was installed, where serving and "
            "shadow agree (both anomalous or both not); min over the instances.",
        ),
        table(
            "Serving vs shadow over the time range",
            [
                table_target(sum_increase(WINDOWS, B, BY_ROLE, "$__range")),
                table_target(ratio(ANOMALOUS, WINDOWS, B, BY_ROLE, "$__range"), "B"),
                table_target(sum_increase(INCIDENTS, B, BY_ROLE, "$__range"), "C"),
            ],
            rename={
                "brand": "Brand",
                "role": "Role",
                "Value #A": "Windows",
                "Value #B": "Anomalous windows",
                "Value #C": "Incidents",
            },
            units={"Anomalous windows": "percentunit", "Windows": "short"},
            sort_by="Brand",
            desc=False,
        ),
    ]


def versions() -> list[dict[str, Any]]:
    return [
        row("Versions"),
        timeseries(
            "Model version per brand and role (timeline)",
            [target(f"max by (brand, role) (canwatch_model_version{{{B}}})", "{{brand}} {{role}}")],
            "none",
            description="Version serving and in shadow: a step is a deploy, promote or "
            "rollback (no shadow line while none is installed).",
            w=8,
        ),
        timeseries(
            "Model reloads and failures",
            [
                target(sum_increase("canwatch_model_reloads_total", B, "brand"), "{{brand}}"),
                target(
                    f"sum by (reason) (increase(canwatch_model_reload_failures_total[{RI}]))",
                    "failed: {{reason}}",
                    ref="B",
                ),
            ],
            "short",
            bars=True,
            description="A version that fails to load is refused and the previous one keeps "
            "serving (CanwatchModelReloadFailing); failures are not per brand.",
            w=8,
        ),
        table(
            "Versions now",
            [table_target(f"max by (brand, role) (canwatch_model_version{{{B}}})")],
            rename={"brand": "Brand", "role": "Role", "Value": "Version"},
            sort_by="Brand",
            desc=False,
            w=8,
        ),
    ]


def drift() -> list[dict[str, Any]]:
    return [
        row("Drift"),
        timeseries(
            "Drift ratio per brand, against its alert limit",
            [
                target(
                    f"sum by (brand) (canwatch_model_drift_outside_windows{{{B}}})\n/\n"
                    f"sum by (brand) (canwatch_model_drift_windows{{{B}}})",
                    "{{brand}}",
                ),
                target("max(canwatch_model_drift_limit)", "limit", ref="B"),
            ],
            "percentunit",
            description="Share of the brand's windows over the last models.drift_period_s "
            "with a feature outside what the serving model learned, over every instance's "
            "windows. CanwatchModelDrift fires "
            "when a brand stays above the limit for 30 min: retrain from the topic, shadow, "
            "promote.",
        ),
        timeseries(
            "Rate drift per brand",
            [target(f"max by (brand) (canwatch_model_rate_drift{{{B}}})", "{{brand}}")],
            "short",
            axis_label="|log2| observed / learned",
            description="Median over the serving model's learned ids of |log2(observed / "
            "learned frames per window)|: 0 = as learned, 1 = halved or doubled.",
        ),
    ]


def model_owner() -> dict[str, Any]:
    groups = (serving_vs_shadow, versions, drift)
    return dashboard(
        "canwatch-model-owner",
        "canwatch / model owner",
        "Serving vs shadow models per brand (anomalous-window rate, incidents, agreement), "
        "the version timeline and drift from what the serving model learned.",
        [datasource_variable(), label_variable("brand", "Brand", "canwatch_model_info")],
        [panel for group in groups for panel in group()],
    )
