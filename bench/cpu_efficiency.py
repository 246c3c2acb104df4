"""Figure 1 — CPU inference efficiency: achieved GFLOP/s of the Swin-B classification forward (224, batch 8)
divided by the GFLOP/s of torch's own matmul on the same cores, in the same run (fp32; bf16 too where the CPU
has bf16 instructions). MONAI's own ``SwinTransformer`` at Swin-B size is measured alongside for reference.

    .venv/bin/python bench/cpu_efficiency.py [--batch 8] [--size 224] [--repeats 3]
"""

from __future__ import annotations

import argparse

import torch
from monai.networks.nets.swin_unetr import SwinTransformer

from common import count_flops, cpu_flags, emit, interleaved_medians, machine
from cxrfx.networks import FoundationX


def _matmul(n: int, dtype: torch.dtype):
    a, b = torch.rand(n, n, dtype=dtype), torch.rand(n, n, dtype=dtype)
    return lambda: torch.mm(a, b), 2 * n**3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    torch.manual_seed(0)
    ours = FoundationX("base", cls_heads={"nih14": 14}).eval()
    monai_swin = SwinTransformer(in_chans=1, embed_dim=128, window_size=(7, 7), patch_size=(4, 4),
                                 depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), spatial_dims=2).eval()
    x = torch.rand(a.batch, 1, a.size, a.size)
    result = {"machine": machine(), "batch": a.batch, "size": a.size}
    dtypes = [("fp32", torch.float32)] + ([("bf16", torch.bfloat16)] if {"avx512_bf16", "amx_bf16"} & cpu_flags() else [])
    for tag, dtype in dtypes:
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)

        def run(model):
            def f():
                with torch.inference_mode(), autocast:
                    model(x) if model is monai_swin else model(x, task="cls", head="nih14")
            return f

        mm, mm_flops = _matmul(2048, dtype)
        fns = {"ours": run(ours), "monai_swin": run(monai_swin), "matmul": mm}
        flops = {"ours": count_flops(fns["ours"]), "monai_swin": count_flops(fns["monai_swin"]), "matmul": mm_flops}
        t = interleaved_medians(fns, a.repeats)
        gflops = {k: flops[k] / t[k] / 1e9 for k in fns}
        result[tag] = {"forward_gflop": round(flops["ours"] / 1e9, 2), "ours_gflops_per_s": round(gflops["ours"], 1),
                       "monai_swin_gflops_per_s": round(gflops["monai_swin"], 1),
                       "matmul_gflops_per_s": round(gflops["matmul"], 1),
                       "efficiency": round(gflops["ours"] / gflops["matmul"], 3),
                       "monai_swin_efficiency": round(gflops["monai_swin"] / gflops["matmul"], 3),
                       "forward_s": round(t["ours"], 3)}
    emit(result)


if __name__ == "__main__":
    main()
