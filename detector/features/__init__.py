"""Frames to feature rows: the learned per-id ``baseline`` (``counters`` learns the
counters in it), the compiled fold that adds each frame to its stream's sums
(``fold_steps``: one step per feature family; ``fold_kernel``: the loop over them),
the window and stream passes around it (``kernels``), per-stream state
(``streams``, ``windowing``) and the feature columns (``columns``).

Owns: everything computed from frames before a model looks at them. Imports only
``detector.core``; no I/O.
"""
