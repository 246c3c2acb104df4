"""Figure 5 — memory: peak resident memory (RSS) of ``python -m cxrfx predict`` (foundation_x bundle, Swin-B,
every head, overlays, masks, DICOM SEG) on one 3000×3000 16-bit DICOM. Goal ≤ 2 GB.

Random weights of the bundle's own network are saved first (memory does not depend on their values).

    .venv/bin/python bench/predict_memory.py [--side 3000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigParser

from common import emit, machine
from cxrfx.data.phantom.files import write_dicom

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "foundation_x"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--side", type=int, default=3000)
    a = p.parse_args()
    work = Path(tempfile.mkdtemp())
    yy, xx = np.mgrid[0:a.side, 0:a.side] / a.side
    image = np.clip(0.5 + 0.3 * np.sin(6 * xx) * np.cos(4 * yy) + np.random.default_rng(0).normal(0, 0.01, (a.side,) * 2),
                    0, 1)
    dicom = work / "big.dcm"
    write_dicom(str(dicom), image, uid_key="bench", monochrome1=False, pixel_mm=0.143, magnification=1.0,
                patient_id="P0", calibrated_spacing=False, bits_stored=16)
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.json"))
    torch.manual_seed(0)
    torch.save(parser.get_parsed_content("network_def").state_dict(), work / "model.pt")
    command = [sys.executable, "-m", "cxrfx", "predict", "--bundle", str(BUNDLE), "--input", str(dicom),
               "--output", str(work / "out"), "--ckpt_path", str(work / "model.pt"), "--device", "cpu",
               "--progress", "False"]
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _, status, usage = os.wait4(proc.pid, 0)  # rusage of exactly this child
    seconds = time.perf_counter() - start
    log = proc.stdout.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"predict failed:\n{log[-3000:]}")
    outputs = sorted(p.name for p in (work / "out").rglob("*") if p.is_file())
    emit({"machine": machine(), "side": a.side, "input_mb": round(dicom.stat().st_size / 2**20, 1),
          "peak_rss_gb": round(usage.ru_maxrss / 2**20, 3), "seconds": round(seconds, 1), "outputs": len(outputs),
          "dicom_seg": any(n.endswith("_seg.dcm") or "seg" in n and n.endswith(".dcm") for n in outputs)})


if __name__ == "__main__":
    main()
