"""precision "auto": bf16 only where this device's bf16 matmuls are at least as fast as fp32."""

import pytest
import torch

from negalign.modeling import precision
from negalign.modeling.inference import autocast


@pytest.fixture
def speedup(monkeypatch):
    """Pretend the CPU's measured bf16/fp32 speed ratio is `value`."""
    def set_to(value: float):
        monkeypatch.setattr(precision, "bf16_speedup", lambda: value)
    return set_to


def test_auto_follows_the_measured_speed(speedup, capsys):
    speedup(0.02)  # an AVX2-only CPU: emulated bf16
    assert precision.resolve("auto") == "fp32" and precision.torch_dtype("auto") == torch.float32
    assert precision.describe("auto") == "auto -> fp32 (bf16 0.02x fp32 on this CPU)"
    assert not torch.is_autocast_cpu_enabled()
    with autocast(torch.device("cpu"), "auto"):
        assert not torch.is_autocast_cpu_enabled()
    speedup(2.1)  # native bf16 (AVX512-BF16, AMX)
    assert precision.resolve("auto") == "bf16" and precision.torch_dtype("auto", "cpu") == torch.bfloat16
    with autocast(torch.device("cpu"), "auto"):
        assert torch.is_autocast_cpu_enabled()
    # explicit choices stay what they say; bf16 where it is slow warns, once
    speedup(0.02)
    assert precision.resolve("fp32") == "fp32"
    precision._warn_slow_bf16.cache_clear()
    assert precision.resolve("bf16") == precision.resolve("bf16") == "bf16"
    assert capsys.readouterr().err.count("bf16 matmuls run at 0.02x the fp32 speed") == 1
    with pytest.raises(ValueError, match="precision must be one of auto, bf16, fp32"):
        precision.resolve("fp16")


def test_the_probe_measures_this_machine():
    ratio = precision.bf16_speedup()
    assert ratio > 0 and precision.bf16_speedup() == ratio  # measured once, then cached
    assert precision.resolve("auto") == ("bf16" if ratio >= 1.0 else "fp32")


def test_config_takes_auto_and_names_a_bad_value(tmp_path):
    from negalign.base.errors import UserError
    from negalign.config import load_config

    assert load_config(None).train.precision == "auto" and load_config(None).reference.precision == "auto"
    bad = tmp_path / "c.yaml"
    bad.write_text("train:\n  precision: fp16\n")
    with pytest.raises(UserError, match=r"c.yaml.*train.precision"):
        load_config(str(bad))
