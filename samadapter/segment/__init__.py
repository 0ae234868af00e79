"""Batch segmentation with Ray Data (Ray is imported inside the functions that need it)."""
