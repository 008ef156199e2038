"""loam: chat with local language models in the terminal."""

__version__ = "0.1.0"
