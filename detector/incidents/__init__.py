"""Scored rows to incidents an analyst can act on: the ``tracker`` that opens and
closes incidents per vehicle, the ``evidence`` that names id, feature, observed and
learned value, and ``privacy`` (pseudonymous vehicle ids).

Imports ``detector.core``, ``detector.features`` and ``detector.model``; never Kafka.
"""
