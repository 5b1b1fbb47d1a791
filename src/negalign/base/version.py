"""The package version, in the bottom layer so any module can name it (model cards, --version)."""

__version__ = "0.1.0"
