"""A transparent metrics proxy in front of Ollama."""

__version__ = "0.1.0"
