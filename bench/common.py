"""Shared by the benchmarks: medians of interleaved repeats, counted FLOPs, and what machine this is.

The machines are shared and noisy: every reported figure is a ratio of two things measured in the same run,
with the two timed in alternating rounds so that noise hits both alike.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping

import torch
from torch.utils.flop_counter import FlopCounterMode


# MONAI UNet baseline's learning rate (AdamW): chosen on the validation split of bench/quality_seg.py among
# 3e-4, 1e-3, 3e-3 and 1e-2 (its variants table: 1e-3 scored 0.51 Dice where 3e-3 scored 0.93 at 400 iterations)
MONAI_UNET_LR = 3e-3


def interleaved_medians(fns: Mapping[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds of each function, timed in ``repeats`` rounds that run every function once."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call as PyTorch's FlopCounterMode counts them (matmul / conv / SDPA: 2 per MAC)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict:
    """CPU, cores, versions: the context every figure is read in."""
    import monai
    import numpy

    info = {"cpu": cpu_model(), "cores_usable": len(os.sched_getaffinity(0)), "torch_threads": torch.get_num_threads(),
            "bf16_cpu": bool({"avx512_bf16", "amx_bf16"} & cpu_flags()), "python": platform.python_version(),
            "torch": torch.__version__, "monai": monai.__version__, "numpy": numpy.__version__,
            "load_average": [round(x, 2) for x in os.getloadavg()]}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def mean_std(values, digits: int = 3) -> str:
    """``mean ± std`` (sample std) of the values that are not NaN; one value as is, none as a dash."""
    values = [v for v in values if v == v]
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def emit(result: dict) -> None:
    """Print the benchmark's result as the last line of stdout (``run_all`` reads it)."""
    sys.stdout.write(json.dumps(result) + "\n")


def write_between(doc, text: str, begin: str, end: str, heading: str) -> None:
    """Replace the text between ``begin`` and ``end`` (markers included) of ``doc`` by ``text``, which carries the
    markers itself; append it under ``heading`` when the file has no such section."""
    from pathlib import Path

    doc = Path(doc)
    current = doc.read_text() if doc.exists() else ""
    if begin in current and end in current[current.index(begin):]:
        start = current.index(begin)
        stop = current.index(end, start) + len(end)
        current = current[:start] + text + current[stop:]
    else:
        current = current.rstrip("\n") + f"\n\n{heading}\n\n" + text + "\n"
    doc.write_text(current)


def write_section(doc, name: str, text: str, heading: str | None = None) -> None:
    """The generated section ``name`` of ``doc`` (between ``<!-- name: begin (generated) -->`` and
    ``<!-- name: end -->``) set to ``text`` (:func:`write_between`)."""
    begin, end = f"<!-- {name}: begin (generated) -->", f"<!-- {name}: end -->"
    write_between(doc, f"{begin}\n\n{text.strip()}\n\n{end}", begin, end, heading or f"## {name}")
