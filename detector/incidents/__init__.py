"""Scored rows to incidents an analyst can act on: the ``tracker`` that opens and
closes incidents per vehicle, the ``evidence`` that names id, feature, observed and
learned value, ``privacy`` (pseudonymous vehicle ids), and ``campaigns`` (incident
records of many vehicles to fleet campaigns, in event-time order).

Imports ``detector.core``, ``detector.features`` and ``detector.model``; never Kafka.
"""
