"""Kafka in and out: the wire format (``wire``), frame checks, the Kafka clients and
their speed-ups (``kafka_io``, ``kafka_recv``, ``kafka_records``, ``kafka_salvage``,
``heap``) and the embedded Tansu broker (``broker``).

Owns: bytes <-> frame arrays, and getting records to and from the broker without
losing one. Imports only ``detector.core``: it knows nothing of features or models.
"""
