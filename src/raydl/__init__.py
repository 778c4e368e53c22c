"""raydl: distributed deep-learning training on Ray."""

__version__ = "0.1.0"
