"""The streaming job: the ``detector`` loop that reads Kafka, scores and publishes
incidents and dead letters, its ``metrics`` and the ``watchdog`` that keeps it
honest about stalls.

May import every stage below it; never the CLI.
"""
