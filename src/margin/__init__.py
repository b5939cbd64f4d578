"""margin: an OpenAI-compatible inference gateway with unit economics built in."""

__version__ = "0.1.0"
