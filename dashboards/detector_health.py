"""The detector-health board: throughput, latency, lag, errors, group, drift, process."""

from __future__ import annotations

from typing import Any

from grafana_panels import (
    PROC,
    RI,
    I,
    dashboard,
    datasource_variable,
    label_variable,
    rate_timeseries,
    row,
    stat,
    sum_increase,
    sum_rate,
    table,
    table_target,
    target,
    timeseries,
)


def status() -> list[dict[str, Any]]:
    return [
        row("Status"),
        stat("Scrape targets up", f'sum(up{{job="canwatch", {I}}})', "short"),
        stat("Main loops up", f"sum(canwatch_up{{{I}}})", "short"),
        stat("Instances ready", f"sum(canwatch_ready{{{I}}})", "short"),
        stat("Partitions assigned", f"sum(canwatch_partitions_assigned{{{I}}})", "short"),
        stat("Records/s", sum_rate("canwatch_records_consumed_total", I, ""), "short"),
        stat("Dead letters/s", sum_rate("canwatch_dead_letters_total", I, ""), "short", red_at=0.1),
    ]


def throughput() -> list[dict[str, Any]]:
    return [
        row("Throughput"),
        rate_timeseries(
            "Records consumed per second",
            "canwatch_records_consumed_total",
            I,
            "instance",
            axis_label="records/s",
            w=8,
        ),
        rate_timeseries(
            "Frames consumed per second",
            "canwatch_frames_consumed_total",
            I,
            "instance",
            axis_label="frames/s",
            w=8,
        ),
        rate_timeseries(
            "Bytes consumed per second", "canwatch_bytes_consumed_total", I, "instance", "Bps", w=8
        ),
    ]


def latency() -> list[dict[str, Any]]:
    stage_q = "canwatch_stage_duration_seconds_bucket"
    quantiles = [
        target(
            f"histogram_quantile({q}, sum by (stage, le) (rate({stage_q}{{{I}}}[{RI}])))",
            f"{{{{stage}}}} p{round(q * 100)}",
            ref=ref,
        )
        for q, ref in ((0.5, "A"), (0.95, "B"), (0.99, "C"))
    ]
    return [
        row("Latency"),
        timeseries("Stage latency percentiles", quantiles, "s"),
        timeseries(
            "Busy time per stage",
            [
                target(
                    f"sum by (stage) (rate(canwatch_stage_duration_seconds_sum{{{I}}}[{RI}]))",
                    "{{stage}}",
                )
            ],
            "percentunit",
            stack=True,
            description="Seconds spent per second of wall clock, per stage (1 = one core busy).",
        ),
    ]


def lag() -> list[dict[str, Any]]:
    return [
        row("Lag"),
        timeseries(
            "Event-time lag",
            [
                target(
                    f"max by (instance, partition) (canwatch_event_time_lag_seconds{{{I}}})",
                    "{{instance}} p{{partition}}",
                )
            ],
            "s",
            description="Wall clock minus the newest event time processed, per partition "
            "(kept current by the watchdog: it grows while nothing is processed).",
            w=8,
        ),
        timeseries(
            "Consumer lag",
            [
                target(
                    f"sum by (instance, partition) (canwatch_consumer_lag_records{{{I}}})",
                    "{{instance}} p{{partition}}",
                )
            ],
            "short",
            axis_label="records",
            description="Log end offset (verified by a fetch) minus the fetch position, "
            "computed by the watchdog outside the poll loop; no value while the broker "
            "does not answer.",
            w=8,
        ),
        timeseries(
            "Poll loop stalled",
            [
                target(
                    f"max by (instance) (canwatch_poll_stalled_seconds{{{I}}})",
                    "{{instance}}",
                )
            ],
            "s",
            threshold=1,
            description="Seconds without progress while records wait (or since the poll loop "
            "last came round), from watchdog.stall_s on; 0 = progressing. The instance is not "
            "ready meanwhile and exits after watchdog.exit_s; its log names the partitions.",
            w=8,
        ),
    ]


def errors() -> list[dict[str, Any]]:
    return [
        row("Errors"),
        rate_timeseries(
            "Dead letters by reason",
            "canwatch_dead_letters_total",
            I,
            "reason",
            stack=True,
            axis_label="records/s",
            w=8,
        ),
        rate_timeseries(
            "Unreadable Kafka records by reason",
            "canwatch_unreadable_records_total",
            I,
            "reason",
            stack=True,
            axis_label="records/s",
            description="Records the Kafka record format itself could not describe (bad CRC, "
            "codec, lengths, a header name that is not UTF-8, ...), counted by offset; each "
            "record or span is in the DLQ with its partition, offsets and reason.",
            w=8,
        ),
        rate_timeseries(
            "Late frames by brand",
            "canwatch_late_frames_total",
            I,
            "brand",
            axis_label="frames/s",
            description="Frames older than an already closed window; dropped.",
            w=8,
        ),
        rate_timeseries(
            "Telemetry gaps by brand",
            "canwatch_telemetry_gaps_total",
            I,
            "brand",
            axis_label="gaps/s",
            description="Vehicles that sent nothing at all for more than 2 windows (an uplink "
            "or logger that stopped, not their bus): the windows each gap touched were not "
            "scored. A brand-wide rise is a data-quality problem, not an attack.",
            w=8,
        ),
        rate_timeseries(
            "Vehicle clocks set back by brand",
            "canwatch_clock_resets_total",
            I,
            "brand",
            axis_label="resets/s",
            description="Vehicles whose frames were all older than windows they had closed, "
            "for 30 s of their own time and 10 polls (an RTC reset, a GNSS time fix): their "
            "windows started afresh at the new time, their open incident closed. Without it "
            "they were blind until their clock caught up.",
            w=8,
        ),
    ]


def campaign_correlator() -> list[dict[str, Any]]:
    """``canwatch campaigns``: the incident records it reads, late and skipped."""
    return [
        row("Campaign correlator"),
        timeseries(
            "Incident records read by canwatch campaigns",
            [
                target(sum_rate("canwatch_campaign_records_consumed_total", I, ""), "read"),
                target(sum_rate("canwatch_campaign_records_late_total", I, ""), "late", ref="B"),
                target(
                    sum_rate("canwatch_campaign_records_skipped_total", I, "reason"),
                    "skipped: {{reason}}",
                    ref="C",
                ),
            ],
            "short",
            description="Late: used, but arrived after the watermark had passed them "
            "(raise campaigns.lateness_s if this is not 0). Skipped: not JSON (bad_json), not "
            "an incident (bad_shape), or older than campaigns.window_s (stale).",
            w=24,
        ),
    ]


def state_and_limits() -> list[dict[str, Any]]:
    return [
        row("State and limits"),
        timeseries(
            "State held, share of its limit",
            [
                target(
                    f"max by (instance) (canwatch_state_vehicles{{{I}}} "
                    f"/ canwatch_state_vehicles_max{{{I}}})",
                    "{{instance}} vehicles",
                ),
                target(
                    f"max by (instance) (canwatch_state_streams{{{I}}} "
                    f"/ canwatch_state_streams_max{{{I}}})",
                    "{{instance}} streams",
                    ref="B",
                ),
            ],
            "percentunit",
            threshold=0.9,
            description="Vehicles and (vehicle, CAN id) streams held per instance, over "
            "limits.max_vehicles and limits.max_streams. Past them new vehicles are refused "
            "or never-scored ones retired (CanwatchStateLimit); scored vehicles stay.",
            w=12,
        ),
        timeseries(
            "Shed by reason",
            [
                target(sum_rate("canwatch_frames_shed_total", I, "reason"), "frames {{reason}}"),
                target(
                    sum_rate("canwatch_vehicles_evicted_total", I, "reason"),
                    "vehicles retired: {{reason}}",
                    ref="B",
                ),
            ],
            "short",
            axis_label="per second",
            description="Frames refused with their vehicle (vehicle_limit) or pooled into "
            "their vehicle window's row of further unseen ids (stream_limit, "
            "novel_id_limit: a fuzzer), and vehicles retired early to make room.",
            w=12,
        ),
    ]


def group_and_models() -> list[dict[str, Any]]:
    return [
        row("Consumer group and models"),
        timeseries(
            "Rebalances",
            [target(sum_increase("canwatch_rebalances_total", I, "instance"), "{{instance}}")],
            "short",
            bars=True,
            w=8,
        ),
        timeseries(
            "Partitions assigned per instance",
            [target(f"sum by (instance) (canwatch_partitions_assigned{{{I}}})", "{{instance}}")],
            "short",
            w=8,
        ),
        timeseries(
            "Model reloads",
            [
                target(sum_increase("canwatch_model_reloads_total", I, "brand"), "{{brand}}"),
                target(
                    sum_increase("canwatch_model_reload_failures_total", I, "reason"),
                    "failed: {{reason}}",
                    ref="B",
                ),
            ],
            "short",
            bars=True,
            w=8,
        ),
    ]


def drift() -> list[dict[str, Any]]:
    """How far each brand's traffic moved from what its serving model learned."""
    return [
        row("Model drift"),
        timeseries(
            "Drift ratio per instance and brand, against its alert limit",
            [
                target(f"canwatch_model_drift_ratio{{{I}}}", "{{instance}} {{brand}}"),
                target(f"max(canwatch_model_drift_limit{{{I}}})", "limit", ref="B"),
            ],
            "percentunit",
            description="Share of the brand's vehicle windows over the last "
            "models.drift_period_s with a feature outside what the serving model learned "
            "(before each vehicle's own reference), per instance. CanwatchModelDrift takes "
            "the fleet's (windows summed over the instances, on the model-owner board) and "
            "fires when a brand stays above the limit (models.drift_alert_ratio) for 30 min. "
            "Starts afresh when a new version serves.",
            w=12,
        ),
        timeseries(
            "Rate drift per brand",
            [target(f"max by (brand) (canwatch_model_rate_drift{{{I}}})", "{{brand}}")],
            "short",
            axis_label="|log2| observed / learned",
            description="Median over the serving model's learned ids of |log2(observed / "
            "learned frames per window)|: 0 = rates as learned, 1 = the typical id sent at "
            "half or twice its learned rate, 6 = ids gone (or another platform's traffic).",
            w=12,
        ),
    ]


def process() -> list[dict[str, Any]]:
    return [
        row("Process"),
        timeseries(
            "CPU",
            [target(f"rate(process_cpu_seconds_total{{{PROC}}}[{RI}])", "{{instance}}")],
            "percentunit",
            w=8,
            description="CPU seconds per second (1 = one core).",
        ),
        timeseries(
            "Resident memory",
            [target(f"process_resident_memory_bytes{{{PROC}}}", "{{instance}}")],
            "bytes",
            w=8,
        ),
        table(
            "Instances",
            [
                table_target(f"max by (instance, version) (canwatch_build_info{{{I}}})"),
                table_target(
                    f"max by (instance) (time() - process_start_time_seconds{{{PROC}}})", "B"
                ),
                table_target(f"max by (instance) (process_open_fds{{{PROC}}})", "C"),
            ],
            rename={
                "instance": "Instance",
                "version": "Version",
                "Value #B": "Uptime",
                "Value #C": "Open fds",
            },
            hide=("Value #A",),
            keep_instance=True,
            units={"Uptime": "s"},
            sort_by="Instance",
            desc=False,
            w=8,
        ),
    ]


def detector_health() -> dict[str, Any]:
    groups = (
        status,
        throughput,
        latency,
        lag,
        errors,
        state_and_limits,
        group_and_models,
        drift,
        campaign_correlator,
        process,
    )
    return dashboard(
        "canwatch-detector-health",
        "canwatch / detector health",
        "Throughput, latency, lag, stalls, dead letters, rebalances, model reloads, model "
        "drift and process resources of the detector instances.",
        [datasource_variable(), label_variable("instance", "Instance", "canwatch_up")],
        [panel for group in groups for panel in group()],
    )
