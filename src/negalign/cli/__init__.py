"""The `negalign` command line (the top layer): parsers, flags, and the dispatch to recipes and tools."""

from negalign.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
