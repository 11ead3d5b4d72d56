"""Foundations every stage shares: the frame schema (``schema``), errors, configuration
(``config``) and the fleet of brands (``brands``).

Owns: FRAME_DTYPE and its word layout, the error types the CLI and service report,
canwatch.toml/brands.toml parsing. Imports nothing else of canwatch.
"""
