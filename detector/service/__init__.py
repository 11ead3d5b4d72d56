"""The streaming job, in parts that each have one job.

``detector`` is the loop (poll, decode, score, incidents, acknowledge, commit) and
calls: ``polling`` (take and gather polls), ``intake`` (records to batches or dead
letters), ``dead_letters``, ``incident_feed`` (scored windows to incident events),
``outbox`` (the producer and a poll's unacknowledged sends), ``audit_log``
(``--windows-out``), ``offset_ledger`` (how far a commit may go) and ``commits``
(when it goes), ``rebalance``, ``model_reload``, ``activity``, ``vehicle_state``,
``broker_contact``. ``metrics/`` holds the Prometheus families by what they
measure; ``watchdog`` judges the loop from its own thread. ``campaign_service`` is
another service, ``canwatch campaigns``: incident records in, campaign records out.

May import every stage below it; never the CLI.
"""
