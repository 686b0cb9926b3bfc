"""Precision by CPU: bf16 only where the CPU has it natively; float32 serving gives the same answers."""
import pytest

from cifar import config, cpu, data, model as net, predict
from cifar.registry import Registry

EPYC_AVX2 = """processor\t: 0
model name\t: AMD EPYC 7B12
flags\t\t: fpu sse2 avx avx2 fma bmi2
processor\t: 1
model name\t: AMD EPYC 7B12
flags\t\t: fpu sse2 avx avx2 fma bmi2
"""
XEON_AMX = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8488C
flags\t\t: fpu avx avx2 fma avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8
"""


def test_an_avx2_only_cpu_gets_float32_and_an_amx_one_bf16(monkeypatch):
    monkeypatch.delenv("CIFAR_PRECISION", raising=False)
    epyc, xeon = cpu.parse_cpuinfo(EPYC_AVX2), cpu.parse_cpuinfo(XEON_AMX)
    assert epyc == {"model": "AMD EPYC 7B12", "flags": ["avx2", "fma"]}
    assert xeon["model"] == "Intel(R) Xeon(R) Platinum 8488C" and "amx_bf16" in xeon["flags"]
    assert cpu.precision(epyc) == "float32"
    assert cpu.precision(xeon) == "mixed_bfloat16"
    assert cpu.precision({"model": "x", "flags": ["avx512f", "avx512_bf16"]}) == "mixed_bfloat16"


def test_an_avx2_only_cpu_serves_flip_only_and_an_avx512_one_six_views(monkeypatch):
    epyc, xeon = cpu.parse_cpuinfo(EPYC_AVX2), cpu.parse_cpuinfo(XEON_AMX)
    assert cpu.default_tta_level(epyc) == 1 and cpu.default_tta_level(xeon) == 2
    assert cpu.default_tta_level({"model": "x", "flags": ["avx2", "fma", "avx512f"]}) == 2
    monkeypatch.setattr(cpu, "info", lambda: epyc)  # the app on an AVX2-only CPU...
    monkeypatch.setenv("CIFAR_TTA", "")
    assert cpu.tta_level() == 1
    monkeypatch.setenv("CIFAR_TTA", "0")  # ...unless the environment overrides
    assert cpu.tta_level() == 0
    monkeypatch.setattr(cpu, "info", lambda: xeon)
    monkeypatch.delenv("CIFAR_TTA")
    assert cpu.tta_level() == 2


def test_the_environment_overrides_and_a_typo_is_named(monkeypatch):
    monkeypatch.setenv("CIFAR_PRECISION", "float32")
    assert cpu.precision(cpu.parse_cpuinfo(XEON_AMX)) == "float32"
    monkeypatch.setenv("CIFAR_PRECISION", "bf16")
    with pytest.raises(ValueError, match="CIFAR_PRECISION='bf16'.*float32, mixed_bfloat16"):
        cpu.precision()


def test_this_machine_is_described_with_its_flags():
    line = cpu.describe()
    assert cpu.info()["model"] in line and line.endswith(cpu.precision())


def test_float32_serving_of_the_bf16_shipped_model_gives_the_same_answers(monkeypatch):
    shipped = Registry(config.shipped_models_dir()).current()
    x, _ = data.holdout()
    x = x[::4]  # 500 images
    monkeypatch.setenv("CIFAR_PRECISION", "mixed_bfloat16")
    as_saved = predict.Predictor(net.load(shipped.model_path), tta_level=0)
    monkeypatch.setenv("CIFAR_PRECISION", "float32")
    as_float32 = predict.Predictor(net.load(shipped.model_path), tta_level=0)
    assert as_saved.model.get_layer("whiten").compute_dtype == "bfloat16"
    assert {layer.compute_dtype for layer in as_float32.model.layers} == {"float32"}
    a, b = as_saved.logits(x), as_float32.logits(x)
    assert (a.argmax(1) == b.argmax(1)).mean() >= 0.99
    assert net.to_float32(as_float32.model) is as_float32.model   # nothing left to convert


def test_a_onednn_cap_is_read_as_an_older_cpu(monkeypatch):
    """ONEDNN_MAX_CPU_ISA=AVX2 on the AMX Xeon: the app must choose as on an AVX2-only CPU (float32,
    flip only), since TensorFlow's bf16 convolutions fail under that cap; OpenVINO is left off
    (its CPU plugin crashes under a cap) and the reason is what the runtime reports."""
    from cifar import runtime

    xeon = cpu.parse_cpuinfo(XEON_AMX)
    assert cpu.capped(xeon, "AVX2")["flags"] == ["avx2", "fma"]
    assert cpu.capped(xeon, "AVX512_CORE")["flags"] == ["avx2", "fma", "avx512f"]
    assert cpu.capped(xeon, "") == xeon and cpu.capped(xeon, "AVX512_CORE_AMX") == xeon
    monkeypatch.setattr(cpu, "_uncapped", lambda: xeon)
    monkeypatch.delenv("CIFAR_PRECISION", raising=False)
    monkeypatch.delenv("CIFAR_TTA", raising=False)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")  # oneDNN reads it in any case
    assert cpu.isa_capped() and cpu.precision() == "float32" and cpu.tta_level() == 1
    assert runtime.available() is None and "ONEDNN_MAX_CPU_ISA" in runtime.unavailable()["why"]
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    assert not cpu.isa_capped() and cpu.precision() == "mixed_bfloat16" and cpu.tta_level() == 2
