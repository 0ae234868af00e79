"""Constants shared by the model and the (torch-free) data path."""

# SAM's pixel normalization (RGB, 0..255 input).
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)

# The encoder's attention paths (modeling/attention.py).
ATTENTION_IMPLS = ("original", "fast", "auto")

# The paper's task-knowledge sources (modeling/knowledge.py): the default of every architecture.
DEFAULT_KNOWLEDGE = (
    {"name": "fft_highpass", "weight": 1.0, "freq_ratio": 0.25},
    {"name": "patch_embedding", "weight": 1.0},
)
