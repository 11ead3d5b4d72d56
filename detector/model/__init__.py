"""Feature rows to calibrated evidence: one isolation forest per platform plus
per-column envelopes (``platform``, ``forest_kernel``), the per-vehicle reference
(``reference``), the scoring path shared by training and the service (``pipeline``),
``training`` with its held-out-drive calibration, and models on disk (``store``,
``registry``).

Imports ``detector.core`` and ``detector.features``; never Kafka.
"""
