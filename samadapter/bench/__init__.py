"""The measurements behind ``jobs/benchmark.py``, one module per mode:

- ``common``: the machine's description, timing, peak memory, the child-process runner;
- ``model``: ``model`` and ``train-step``; ``reference``: ``vs-reference``;
  ``cold_start``: ``cold-start``;
- ``pipeline``: the segment job against a bare loop; ``stages``: its CPU stages by photo
  size; ``plan``: planning a night (and a year of ledger files);
- ``train_epoch``: a training epoch split into training and validation.

Nothing is imported here: each mode imports only what it measures.
"""
