"""Figure 6 — GPU pretraining step: images/s and model-FLOPs utilisation (MFU = achieved FLOP/s ÷ the GPU's
bf16 dense peak) of one Lock-Release release iteration (student forward/backward, teacher forward, consistency,
AdamW) of Swin-B Foundation X at 224 with bf16 autocast, channels-last input, optionally ``torch.compile``.

Without a CUDA GPU it reports "skipped" — unless ``--device cpu``, which runs the same code path (tiny network)
and checks that the compiled network gives the same outputs as the eager one, within tolerance.

    .venv/bin/python bench/gpu_step.py [--compile] [--batch 32] [--steps 20]
    .venv/bin/python bench/gpu_step.py --device cpu --compile     # correctness of the compiled path on CPU
"""

from __future__ import annotations

import argparse
import time

import torch

from common import count_flops, emit, machine
from cxrfx.engines import LockReleaseHandler, MultiTaskTrainer, TeacherHandler, build_optimizer
from cxrfx.networks import FoundationX

# bf16 dense tensor-core peaks (TFLOP/s, no sparsity) from the vendors' data sheets
PEAK_BF16 = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0}
TINY = {"embed_dim": 24, "depths": (2, 2, 2, 2), "num_heads": (1, 2, 3, 6), "window_size": 4}


def peak_tflops(name: str) -> float | None:
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def build(device: torch.device, tiny: bool, compile_: bool, batch: int, size: int):
    torch.manual_seed(0)
    kwargs = dict(backbone="tiny", backbone_kwargs=TINY, seg_channels=16, psp_channels=32) if tiny else dict(backbone="base")
    net = FoundationX(**kwargs, seg_heads={"ds": 4}).to(device).to(memory_format=torch.channels_last)
    teacher = TeacherHandler(net, momentum=0.8)
    images = torch.rand(batch, 1, size, size, device=device).to(memory_format=torch.channels_last)
    batchdata = {"image": images, "mask": (torch.rand(batch, 4, size, size, device=device) > 0.5).float(), "skipped": 0}
    loader = {"seg/ds": [batchdata]}
    lock_release = LockReleaseHandler([{"dataset": "ds", "task": "seg", "iterations": 1000}], loader, net)
    model = torch.compile(net) if compile_ else net
    trainer = MultiTaskTrainer(device, 1, model, build_optimizer(net), lock_release, teacher=teacher.teacher,
                               amp=device.type == "cuda")
    trainer.model = net  # detectors / heads are looked up on the plain module
    trainer.state.device, trainer.state.cxrfx_step = device, lock_release.steps[0]
    return net, model, trainer, batchdata


def check_compiled_on_cpu() -> dict:
    eager, compiled, _, batch = build(torch.device("cpu"), tiny=True, compile_=True, batch=2, size=64)
    eager.eval()
    with torch.no_grad():
        a = eager(batch["image"], task="seg", head="ds")
        b = compiled(batch["image"], task="seg", head="ds")
    diff = float((a - b).abs().max())
    return {"compiled_vs_eager_max_abs_diff": diff, "within_tolerance": diff < 1e-4}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--steps", type=int, default=20)
    a = p.parse_args()
    if a.device == "cpu":
        emit({"machine": machine(), "cpu_check": check_compiled_on_cpu()})
        return
    if not torch.cuda.is_available():
        emit({"machine": machine(), "skipped": "no CUDA GPU on this machine"})
        return
    device = torch.device("cuda")
    net, model, trainer, batch = build(device, tiny=False, compile_=a.compile, batch=a.batch, size=a.size)
    step = lambda: trainer._iteration(trainer, batch)  # noqa: E731
    flops = count_flops(step)  # forward + backward + teacher forward, as the counter sees them
    for _ in range(3):  # warm-up (and compilation)
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(a.steps):
        step()
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / a.steps
    name = torch.cuda.get_device_name(0)
    peak = peak_tflops(name)
    emit({"machine": machine(), "gpu": name, "batch": a.batch, "size": a.size, "compile": a.compile,
          "step_s": round(seconds, 4), "images_per_s": round(a.batch / seconds, 1),
          "achieved_tflops": round(flops / seconds / 1e12, 1), "peak_bf16_tflops": peak,
          "mfu": round(flops / seconds / 1e12 / peak, 3) if peak else None,
          "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2)})


if __name__ == "__main__":
    main()
