"""negalign: align language models with human-annotated negatives (D2O, rDPO, baselines).

The Python API (negalign.api) is importable from here: `negalign.load_config`, `negalign.run`,
`negalign.evaluate`, ... It loads on first use, so `import negalign` stays light.
"""

from negalign.base.version import __version__

_API = ("Config", "load_config", "config_from_dict", "sample", "reference", "train", "run", "evaluate",
        "Evaluation", "Metric", "demo", "load_model")


def __getattr__(name: str):
    if name in _API:
        from negalign import api

        return getattr(api, name)
    raise AttributeError(f"module 'negalign' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_API])
