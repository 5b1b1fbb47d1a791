"""The 1.5B offline model: GGUF chunks shipped in 22 wheels, joined in order and materialised once."""

from __future__ import annotations

import types

import pytest

from negalign.base.errors import UserError
from negalign.modeling import loading


def _fake_packages(tmp_path, monkeypatch, chunks: dict[str, list[bytes]]):
    """Packages whose data/ folders hold the given chunks, found by importlib as installed ones."""
    locations = {}
    for name, blobs in chunks.items():
        data = tmp_path / "site" / name / "data"
        data.mkdir(parents=True)
        for i, blob in enumerate(blobs):
            (data / f"part{i:02d}.bin").write_bytes(blob)
        locations[name] = str(data.parent)
    real = loading.importlib.util.find_spec
    monkeypatch.setattr(loading.importlib.util, "find_spec",
                        lambda n: types.SimpleNamespace(submodule_search_locations=[locations[n]])
                        if n in locations else real(n))


def test_chunks_are_joined_in_package_order_once(tmp_path, monkeypatch):
    _fake_packages(tmp_path, monkeypatch, {"pkg_a": [b"GGUF", b"-one"], "pkg_b": [b"-two"]})
    target = tmp_path / "out" / "model.gguf"
    assert loading.join_chunks(("pkg_a", "pkg_b"), target) == target
    assert target.read_bytes() == b"GGUF-one-two"
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".")]  # no temporary left
    mtime = target.stat().st_mtime_ns
    loading.join_chunks(("pkg_a", "pkg_b"), target)
    assert target.stat().st_mtime_ns == mtime  # joined once


def test_chunks_out_of_order_or_missing_are_refused(tmp_path, monkeypatch):
    _fake_packages(tmp_path, monkeypatch, {"pkg_a": [b"-one"], "pkg_b": [b"GGUF"], "pkg_c": []})
    with pytest.raises(UserError, match="not a GGUF file"):
        loading.join_chunks(("pkg_a", "pkg_b"), tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()
    with pytest.raises(UserError, match="pkg_c"):
        loading.join_chunks(("pkg_c",), tmp_path / "y.gguf")
    with pytest.raises(UserError, match="not installed"):
        loading.join_chunks(("no_such_package_here",), tmp_path / "z.gguf")


@pytest.mark.slow
def test_the_qwen_model_materialises_and_answers(monkeypatch):
    """The real 22 chunks (installed by make setup) make a Qwen2 chat model that loads by name."""
    import torch

    model, tok = loading.load_model(loading.QWEN_MODEL, dtype=torch.bfloat16)
    assert type(model).__name__ == "Qwen2ForCausalLM" and tok.chat_template
    assert sum(p.numel() for p in model.parameters()) > 1.5e9
    ids = tok.apply_chat_template([{"role": "user", "content": "What is 2 + 3? Answer with a digit."}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    with torch.inference_mode():
        nxt = model(input_ids=ids).logits[0, -1].float().argmax().item()
    assert tok.decode([nxt]).strip() == "5"
