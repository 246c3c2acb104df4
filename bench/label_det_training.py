"""Detection trained through MONAI Label's API: held-out AP50 before and after, on a real server.

What an annotator does, end to end: a server (``cxrfx.label serve``, its own venv, the bundles' configs with the
demo override and no local weights, so it starts from the seeded initial weights) on phantom studies; box labels
saved through ``PUT /datastore/label`` in the documented ``cxrfx-boxes-v1`` JSON for the ``phantom_det`` training
images; ``POST /train/cxr_detection`` (``run_sync``, ``iterations``); held-out images (the phantom's validation
and test splits, never labelled) scored before and after through ``POST /infer/cxr_detection`` (JSON, score
threshold 0) against their ground truth: AP50 and COCO mAP over nodule + mass (``cxrfx.metrics``).

    python bench/label_det_training.py                  # ~15 minutes on 2 idle cores (venv cached)
    python bench/label_det_training.py --report-only

HTTP helpers and the server process come from ``tests/label/label_server.py`` (one implementation for the tests
and this benchmark). Writes ``bench/results/label_det_training.json`` and a section of ``docs/results.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "plugins"))
sys.path.insert(0, str(ROOT / "tests" / "label"))

from common import write_section  # noqa: E402
from label_server import PLUGINS, http, multipart, read_json, start_label_server  # noqa: E402

RESULTS = HERE / "results" / "label_det_training.json"
MODEL = "cxr_detection"
CLASSES = ["nodule", "mass"]


def _items(studies: str, splits) -> list[dict]:
    data = json.loads((Path(studies.rstrip("/") + "_phantom") / "phantom_det" / "datalist.json").read_text())
    return [it for s in splits for it in data[s]]


def _image_id(item: dict) -> str:
    return Path(item["image"]).stem


def held_out_scores(url: str, items: list[dict]) -> dict:
    from cxrfx.metrics.detection import ap50, coco_map

    preds, gts = [], []
    for item in items:
        body, ctype = multipart({"params": ("", json.dumps({"score_threshold": 0}).encode(), "text/plain")})
        status, out = http("POST", f"{url}/infer/{MODEL}?image={_image_id(item)}&output=json", body,
                           {"Content-Type": ctype})
        if status != 200:
            raise RuntimeError(f"/infer {_image_id(item)}: {status} {out[:300]!r}")
        boxes = read_json(out)["boxes"]
        preds.append({"boxes": np.array([b["box_xyxy"] for b in boxes], float).reshape(-1, 4),
                      "scores": np.array([b["score"] for b in boxes], float),
                      "labels": np.array([CLASSES.index(b["class"]) for b in boxes], int)})
        gts.append({"boxes": np.array(item.get("boxes", []), float).reshape(-1, 4),
                    "labels": np.array(item.get("box_labels", []), int)})
    return {"ap50": ap50(preds, gts), "coco_map": coco_map(preds, gts), "images": len(items),
            "lesions": int(sum(len(g["labels"]) for g in gts))}


def measure(a) -> dict:
    from cxrfx.label import env

    label_python = env.ensure(quiet=False)
    label_env = dict(os.environ, PYTHONPATH=PLUGINS, OMP_NUM_THREADS=str(a.threads))
    label_env.pop("VIRTUAL_ENV", None)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        studies = str(tmp / "studies")
        subprocess.run([label_python, "-m", "cxrfx.label", "studies", "--out", studies, "--count", str(a.count),
                        "--size", str(a.size)], env=label_env, check=True, capture_output=True)
        bundles = tmp / "bundles"
        for name in ("finetune_seg", "finetune_det", "foundation_x"):
            shutil.copytree(ROOT / "bundles" / name / "configs", bundles / name / "configs")
        server, url = start_label_server(tmp, label_python, label_env, studies, str(bundles))
        try:
            train, held = _items(studies, ["training"]), _items(studies, ["validation", "test"])
            before = held_out_scores(url, held)
            print(f"before: {before}", flush=True)
            for item in train:
                label = {"format": "cxrfx-boxes-v1",
                         "boxes": [{"box_xyxy": b, "class": CLASSES[k]}
                                   for b, k in zip(item.get("boxes", []), item.get("box_labels", []))]}
                body, ctype = multipart({"label": (f"{_image_id(item)}.json", json.dumps(label).encode(),
                                                   "application/json")})
                status, out = http("PUT", f"{url}/datastore/label?image={_image_id(item)}&tag=final", body,
                                   {"Content-Type": ctype})
                if status != 200:
                    raise RuntimeError(f"saving {_image_id(item)}: {status} {out[:300]!r}")
            start = time.time()
            status, out = http("POST", f"{url}/train/{MODEL}?run_sync=true",
                               json.dumps({"iterations": a.iterations}).encode(),
                               {"Content-Type": "application/json"}, timeout=7200)
            if status != 200:
                raise RuntimeError(f"/train: {status} {out[-1000:]!r}")
            stats = read_json(out)
            train_s = time.time() - start
            after = held_out_scores(url, held)
            print(f"after: {after}", flush=True)
        finally:
            server.stop()
    return {"labels": len(train), "iterations": a.iterations, "batch_size": stats.get("batch_size"),
            "train_wall_s": round(train_s, 1), "before": before, "after": after}


def report(r: dict) -> str:
    m = r["meta"]
    return (f"Phantom studies ({m['count']} per dataset, {m['size']} px, phantom seed 0; served at the demo "
            f"override's 128 px); "
            f"{r['labels']} `phantom_det` training images labelled through `PUT /datastore/label` "
            f"(`cxrfx-boxes-v1`), one `POST /train/cxr_detection` of {r['iterations']} iterations (batch "
            f"{r['batch_size']}, {r['train_wall_s'] / 60:.1f} min wall), the served `finetune_det` demo network from "
            f"its seeded initial weights; scored through `/infer` on the {r['after']['images']} held-out images "
            f"({r['after']['lesions']} lesions), one run:\n\n"
            "| served weights | AP50 | COCO mAP |\n|---|---|---|\n"
            f"| before `/train` | {r['before']['ap50']:.3f} | {r['before']['coco_map']:.3f} |\n"
            f"| after `/train` | {r['after']['ap50']:.3f} | {r['after']['coco_map']:.3f} |\n\n"
            "Reproduce: `python bench/label_det_training.py`.\n")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=96)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--iterations", type=int, default=600)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--doc", default=str(ROOT / "docs" / "results.md"))
    a = ap.parse_args(argv)
    if a.report_only:
        result = json.loads(RESULTS.read_text())
    else:
        result = measure(a)
        result["meta"] = {"count": a.count, "size": a.size}
        RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    text = report(result)
    write_section(a.doc, "label_det_training.py", text,
                  "# Detection trained through MONAI Label (`bench/label_det_training.py`)")
    print(text)


if __name__ == "__main__":
    main()
