"""Training: typed config (``config``), losses, the per-worker loop (``loop``), validation
as a split dataset (``validation``), the Ray Train driver (``driver``) and sweeps
(``sweep``). The layout of a run lives in ``samadapter.checkpoints`` (read by the segment
job and evaluation, written here).
"""
