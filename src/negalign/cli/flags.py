"""Config keys as command-line flags, the same on every command: `--section.key VALUE`.

A flag's value reaches the config as the string the user typed; the config's own checks convert
and validate it, so a bad value is the same one-line error naming the field as in a YAML file.
Two spellings are read here, before those checks: `null` / `none` empties an optional key, and a
value starting with `{` or `[` is a YAML flow mapping or list (for mapping, list and free-form keys
such as `rdpo.scorer`). An unknown flag is a one-line error naming it and the nearest known flag.
Old spellings of a key (`--n-harmful`) still set it and warn once, naming the new flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import shlex
import sys
import types
import typing
from typing import Any

import yaml

from negalign.base.errors import UserError

NULL_WORDS = ("null", "none", "~")
KNOWN_FLAGS_DEST = "_known_flags"  # option strings of a command, for "did you mean" suggestions
DEPRECATED_DEST = "_deprecated_flags"  # warning lines of the deprecated flags given


def config_keys(cls, prefix: str = "") -> dict[str, Any]:
    """Every dotted key of a config dataclass with its annotation: {'train.lr': float, ...}."""
    out: dict[str, Any] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        tp = hints[f.name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            out.update(config_keys(tp, key))
        else:
            out[key] = tp
    return out


def add_config_flags(p: argparse.ArgumentParser, keys: dict[str, Any],
                     shortcuts: dict[str, str | tuple] | None = None, *,
                     config_help: str = "YAML config (any key below can also be given as a flag)",
                     key_help: dict[str, str] | None = None) -> None:
    """`-c/--config`, the short flags, and `--KEY VALUE` for every key; values stay strings.

    `shortcuts` maps a short flag name to its key, to (key, help), or to (key, help, value) for a
    flag without a value that sets the key to `value`: {"run-dir": "run_dir", "quick": ("eval.quick",
    "smoke sizes", "true")}. A short flag and the long one share their destination, so the last one
    given wins. `key_help` is the help text of some long flags.
    """
    shortcuts, key_help = shortcuts or {}, key_help or {}
    p.add_argument("-c", "--config", help=config_help)
    flags = ["-c", "--config"]
    short = p.add_argument_group("common settings")
    covered = set()
    for name, target in shortcuts.items():
        key, text, *value = target if isinstance(target, tuple) else (target, f"= --{target}")
        if key not in keys:
            raise AssertionError(f"shortcut --{name} names no config key {key!r}")
        how = {"action": "store_const", "const": value[0]} if value else {"metavar": "V"}
        short.add_argument(f"--{name}", dest=key, default=argparse.SUPPRESS, help=text, **how)
        flags.append(f"--{name}")
        covered.add(key)
    long = p.add_argument_group("every config key (null or none empties an optional key)")
    for key in keys:
        if key in covered and "." not in key:  # `--run-dir` is the only spelling of run_dir
            continue
        long.add_argument(f"--{key}", dest=key, default=argparse.SUPPRESS, metavar="V", help=key_help.get(key))
        flags.append(f"--{key}")
    p.set_defaults(**{KNOWN_FLAGS_DEST: flags})


class _DeprecatedFlag(argparse.Action):
    """An old spelling of a config key: sets the key's destination (so the last flag given wins,
    whichever spelling) and notes one warning line, printed by `deprecation_warnings`."""

    def __init__(self, option_strings, dest, *, instead: str, value: str | None = None, **kwargs):
        super().__init__(option_strings, dest, nargs=0 if value is not None else None, **kwargs)
        self.instead, self.value = instead, value

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, self.value if self.value is not None else values)
        line = f"negalign: warning: {option_string} is deprecated; write {self.instead}"
        noted = getattr(namespace, DEPRECATED_DEST, None) or []
        if line not in noted:  # a flag given twice warns once
            setattr(namespace, DEPRECATED_DEST, [*noted, line])


def add_deprecated_flags(p: argparse.ArgumentParser, aliases: dict[str, str | tuple[str, str]], title: str) -> None:
    """Old flags kept for old scripts: {"n-harmful": "eval.n_harmful"}, or (key, value) for one
    without a value: {"no-kl": ("eval.kl", "false")}. Each works as before and warns once."""
    group = p.add_argument_group(title)
    for name, target in aliases.items():
        key, value = target if isinstance(target, tuple) else (target, None)
        instead = f"--{key}" if value is None else f"--{key} {value}"
        group.add_argument(f"--{name}", dest=key, default=argparse.SUPPRESS, action=_DeprecatedFlag,
                           instead=instead, value=value, metavar=None if value is not None else "V",
                           help=f"= {instead}")


def deprecation_warnings(args: argparse.Namespace, *, warn=None) -> None:
    """One line on stderr per deprecated flag the command line used."""
    for line in getattr(args, DEPRECATED_DEST, None) or []:
        (warn or _stderr)(line)


def _optional(tp) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)


def _takes_collections(tp) -> bool:
    """Free-form (Any), mapping and list keys, possibly optional."""
    if _optional(tp):
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    return tp is Any or typing.get_origin(tp) in (dict, list)


def flag_value(key: str, value: Any, tp: Any) -> Any:
    """One flag's string as the config builder takes it (see the module docstring)."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if _optional(tp) and text.lower() in NULL_WORDS:
        return None
    if _takes_collections(tp) and text[:1] in ("{", "["):
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise UserError(f"invalid YAML value {value!r}: {getattr(e, 'problem', e)}", field=key) from None
    return value


def flag_overrides(args: argparse.Namespace, keys: dict[str, Any]) -> dict[str, Any]:
    """The config keys given on the command line, as dotted overrides ({'train.lr': '1e-5'})."""
    return {k: flag_value(k, v, keys[k]) for k, v in vars(args).items() if k in keys}


def set_overrides(items: list[str], *, warn=None) -> dict[str, Any]:
    """The deprecated `--set SECTION.KEY=VALUE` pairs (values read as YAML scalars: numbers, true, null).

    Warns once (one line on stderr) with the same settings written as flags.
    """
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"expected SECTION.KEY=VALUE, got {item!r}; better: --SECTION.KEY VALUE", field="--set")
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError as e:
            raise UserError(f"invalid YAML value {value!r}: {getattr(e, 'problem', e)}", field=key.strip()) from None
    if items:
        instead = " ".join(f"--{k.strip()} {shlex.quote(v) if v.strip() else 'null'}"
                           for k, _, v in (item.partition("=") for item in items))
        (warn or _stderr)(f"negalign: warning: --set is deprecated and goes in the next release; write {instead}")
    return out


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def unknown_arguments_error(extras: list[str], args: argparse.Namespace, command: str) -> UserError:
    """One line for arguments no option of `command` takes, naming the first and a near flag."""
    first = extras[0]
    see = f"see negalign {command} --help" if command else "see negalign --help"
    if not first.startswith("-") or first == "-":
        return UserError(f"unexpected argument {first!r}; {see}")
    flag = first.partition("=")[0]
    near = difflib.get_close_matches(flag, getattr(args, KNOWN_FLAGS_DEST, []), n=1, cutoff=0.6)
    hint = f" (did you mean {near[0]}?)" if near else ""
    return UserError(f"unknown flag {flag}{hint}; {see}")
