"""What this CPU computes fast, read once, and the precision that follows from it.

bfloat16 pays only where the CPU has it in hardware (AVX512-BF16 or AMX): there `mixed_bfloat16`
trains ~2x faster than float32. Where it is emulated (AVX2-only CPUs, many hosted Spaces) it is
several times slower (3.6 against 46.8 training images/s, measured on an AVX2-only AMD EPYC), so there
the app trains and serves in float32. `CIFAR_PRECISION` (float32 or mixed_bfloat16) overrides.
"""
import functools
import os
import platform

from . import config

NATIVE_BF16 = ("avx512_bf16", "amx_bf16")
RELEVANT = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
PRECISIONS = ("float32", "mixed_bfloat16")


def parse_cpuinfo(text: str) -> dict:
    """Model name and the relevant feature flags from /proc/cpuinfo's text (its first CPU)."""
    model, flags = platform.processor() or "unknown CPU", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model == (platform.processor() or "unknown CPU"):
            model = value.strip()
        elif key.strip() in ("flags", "Features") and not flags:
            flags = set(value.split())
    return {"model": model, "flags": [f for f in RELEVANT if f in flags]}


# oneDNN's ISA cap (ONEDNN_MAX_CPU_ISA) -> the flags it leaves usable. Used to try the app as an
# older CPU would run it: with AVX2 bf16 convolutions fail in TensorFlow, so the precision must follow.
ISA_CAPS = {"SSE41": (), "AVX": (), "AVX2": ("avx2", "fma"), "AVX2_VNNI": ("avx2", "fma"),
            "AVX512_CORE": ("avx2", "fma", "avx512f"),
            "AVX512_CORE_VNNI": ("avx2", "fma", "avx512f", "avx512_vnni"),
            "AVX512_CORE_BF16": ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16")}


def capped(cpu: dict, cap: str) -> dict:
    """`cpu` (a `parse_cpuinfo` result) as oneDNN sees it under ONEDNN_MAX_CPU_ISA=`cap`; an
    unknown or empty cap (or one above the CPU, e.g. AVX512_CORE_AMX) leaves it as it is."""
    allowed = ISA_CAPS.get(cap)
    return cpu if allowed is None else {**cpu, "flags": [f for f in cpu["flags"] if f in allowed]}


def isa_capped() -> bool:
    """Whether ONEDNN_MAX_CPU_ISA hides some of this CPU's flags."""
    return info()["flags"] != _uncapped()["flags"]


@functools.cache
def _uncapped() -> dict:
    try:
        with open("/proc/cpuinfo") as handle:
            return parse_cpuinfo(handle.read())
    except OSError:  # not Linux: assume nothing
        return {"model": platform.processor() or platform.machine(), "flags": []}


def info() -> dict:
    """This CPU's model and relevant flags, less what ONEDNN_MAX_CPU_ISA hides."""
    return capped(_uncapped(), config.onednn_isa_cap())


def precision(cpu: dict | None = None) -> str:
    """`mixed_bfloat16` where bf16 is native, else `float32`; CIFAR_PRECISION overrides."""
    forced = config.precision_override()
    if forced:
        if forced not in PRECISIONS:
            raise ValueError(f"CIFAR_PRECISION={forced!r}: use one of {', '.join(PRECISIONS)}")
        return forced
    flags = (cpu or info())["flags"]
    return "mixed_bfloat16" if any(f in flags for f in NATIVE_BF16) else "float32"


def default_tta_level(cpu: dict | None = None) -> int:
    """Test-time views to serve with on this CPU (or on `cpu`, a `parse_cpuinfo` result): 6 (level 2)
    where it has AVX-512, flip only (level 1) on an AVX2-only CPU. There every pass over images
    costs ~3x more (an AVX2-only AMD EPYC; a retrain's judging, checks and estimates are such
    passes), and 6 views made a retrain take 253 s at that speed (one core of an AMX Xeon with
    oneDNN capped at AVX-512, 2026-11-27, `bench-retrain-time`), flip only 173 s; flip only is
    0.22 point less accurate (91.49% vs 91.71% int8 on the 10,000 test images)."""
    flags = (cpu or info())["flags"]
    return 2 if any(f.startswith("avx512") or f.startswith("amx") for f in flags) else 1


def tta_level() -> int:
    """The test-time level the app serves with: CIFAR_TTA if set, else `default_tta_level()`."""
    forced = config.tta_override()
    return default_tta_level() if forced is None else forced


def describe() -> str:
    """One line for logs, benchmarks and metadata: model, relevant flags, chosen precision."""
    cpu = info()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()  # taskset counts
    return f"{cpu['model']} ({' '.join(cpu['flags']) or 'no AVX2'}), {cores} core{'s' * (cores != 1)}: {precision()}"


# A retrain and serving share the cores; the scheduler should favour serving. Niceness 10 gives a
# process about a tenth of the CPU weight of a normal one (Linux CFS) when both want the cores, and
# all of it when serving is idle. The app's retrain runs in a process of its own at this niceness
# (cifar.retrain_process). As a thread of the serving process it kept serving at 54-57% of its
# predictions/s at niceness 0, 57-60% at 10, 56% at 19 (loadtest/retrain_under_load.py, RESULTS.md).
TRAINING_NICENESS = 10
