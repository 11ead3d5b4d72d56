"""Offline quality: ``evaluate`` scores recordings through the service's own path
and accounts incidents honestly; ``cross_validation`` trains and evaluates leave one
drive (or vehicle) out; ``quality_scenario`` is the simulated fleet CI judges on.

Imports the scoring stages and ``replay`` (readers, simulator); never Kafka, never
the service.
"""
