"""Dataset records, sources, decoding/transforms and storage."""
