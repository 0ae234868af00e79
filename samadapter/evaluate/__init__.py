"""Evaluation: a checkpoint or a segmentation output scored against a split's ground truth.

``predict.py``: a model's probability maps over a split at the original sizes (uint8 inputs
normalised on the device, as in training and the segment job). ``evaluation.py``: the
scores (the four COD metrics), per-image results, examples and the report files.
"""
