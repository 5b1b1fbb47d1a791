"""The base layer: user errors, crash-safe files, multi-process helpers, fingerprints, the run directory.

Everything above builds on it; it imports nothing else from negalign.
"""
