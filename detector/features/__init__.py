"""Frames to feature rows: the learned per-id ``baseline``, the compiled ``kernels``
that fold each frame into its stream's sums, per-stream state (``streams``,
``windowing``) and the feature columns (``columns``).

Owns: everything computed from frames before a model looks at them. Imports only
``detector.core``; no I/O.
"""
