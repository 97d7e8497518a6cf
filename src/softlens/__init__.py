"""softlens: train soft prompts against target behaviours, then read them."""

__version__ = "0.1.0"
