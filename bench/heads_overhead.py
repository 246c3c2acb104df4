"""CPU forward time of the Foundation X network: backbone only vs every head, at 224 and 512.

Reports medians over repeats and the ratio (all heads / backbone) measured in the same run. Heads follow
the paper's inventory (REFERENCE §1.3): 11 classification, 3 segmentation and 6 localization heads.

    .venv/bin/python bench/network_forward.py [--sizes 224 512] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from cxrfx.networks import FoundationX, parameter_counts

CLS = {"tbx11k": 1, "node21": 1, "candid_ptx": 1, "rsna_pneumonia": 3, "chestx_det": 13, "siim_acr": 1,
       "chexpert": 14, "nih14": 14, "vindr_cxr": 6, "shenzhen": 1, "mimic": 14}
SEG = {"candid_ptx": 1, "chestx_det": 13, "siim_acr": 1}
DET = {"tbx11k": 2, "node21": 1, "candid_ptx": 1, "rsna_pneumonia": 1, "chestx_det": 13, "siim_acr": 1}


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 512])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backbone", default="base")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = FoundationX(args.backbone, cls_heads=CLS, seg_heads=SEG, det_heads=DET).eval()
    result = {"threads": args.threads, "torch": torch.__version__,
              "parameters_millions": {k: round(v / 1e6, 3) for k, v in parameter_counts(model).items()}}
    for size in args.sizes:
        x = torch.rand(1, 1, size, size)
        with torch.no_grad():
            backbone = median_seconds(lambda: model.forward_features(x), args.repeats)
            everything = median_seconds(lambda: model.forward_all(x), args.repeats)
            cls_only = median_seconds(lambda: model(x, task="cls", head="nih14"), args.repeats)
        result[str(size)] = {"backbone_s": round(backbone, 3), "all_heads_s": round(everything, 3),
                             "one_cls_head_s": round(cls_only, 3), "all_heads_over_backbone": round(everything / backbone, 2)}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
