"""Training: typed config (``config``), losses, the run layout (``runs``), the per-worker
loop (``loop``), validation as a split dataset (``validation``) and the Ray Train driver
(``driver``).

Nothing is imported here: ``samadapter.train.runs`` (the layout of a run, read by the
segment job and evaluation) stays free of torch and segment_anything.
"""
