"""Figure 2 — heads overhead: the full multi-task forward (every head) ÷ the backbone-only forward, at 224 and
512, in time and in counted FLOPs (the FLOP ratio is the floor any implementation can reach on any hardware).

Two head inventories: the paper's (REFERENCE §1.3: 11 classification, 3 segmentation, 6 localization heads)
and the phantom bundle's (3 / 1 / 1).

    .venv/bin/python bench/heads_overhead.py [--sizes 224 512] [--repeats 3]
"""

from __future__ import annotations

import argparse

import torch

from common import count_flops, emit, interleaved_medians, machine
from cxrfx.networks import FoundationX, parameter_counts

PAPER = {"cls_heads": {"tbx11k": 1, "node21": 1, "candid_ptx": 1, "rsna_pneumonia": 3, "chestx_det": 13,
                       "siim_acr": 1, "chexpert": 14, "nih14": 14, "vindr_cxr": 6, "shenzhen": 1, "mimic_cxr_jpg": 14},
         "seg_heads": {"candid_ptx": 1, "chestx_det": 13, "siim_acr": 1},
         "det_heads": {"tbx11k": 2, "node21": 1, "candid_ptx": 1, "rsna_pneumonia": 1, "chestx_det": 13,
                       "siim_acr": 1}}
PHANTOM = {"cls_heads": {"phantom_cls": 5, "phantom_det": 5, "phantom_seg": 5}, "seg_heads": {"phantom_seg": 8},
           "det_heads": {"phantom_det": 2}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[224, 512])
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    result = {"machine": machine()}
    for name, heads in (("paper", PAPER), ("phantom", PHANTOM)):
        torch.manual_seed(0)
        model = FoundationX("base", **heads).eval()
        entry = {"parameters_millions": {k: round(v / 1e6, 2) for k, v in parameter_counts(model).items()}}
        for size in a.sizes:
            x = torch.rand(1, 1, size, size)
            fns = {"backbone": lambda: model.forward_features(x), "all_heads": lambda: model.forward_all(x)}
            with torch.inference_mode():
                flops = {k: count_flops(f) for k, f in fns.items()}
                feats = model.forward_features(x)
                parts = {"seg_decoder": count_flops(lambda: model.seg_features(feats)),
                         "det_neck": count_flops(lambda: model.det_features(feats))}
                levels = model.det_features(feats)
                parts["det_heads"] = sum(count_flops(lambda h=h: h(levels)) for h in model.det_heads.values())
                t = interleaved_medians(fns, a.repeats)
            entry[str(size)] = {"backbone_s": round(t["backbone"], 3), "all_heads_s": round(t["all_heads"], 3),
                                "time_ratio": round(t["all_heads"] / t["backbone"], 3),
                                "flop_ratio": round(flops["all_heads"] / flops["backbone"], 3),
                                "gflop": {"backbone": round(flops["backbone"] / 1e9, 1),
                                          **{k: round(v / 1e9, 1) for k, v in parts.items()}}}
        result[name] = entry
    emit(result)


if __name__ == "__main__":
    main()
