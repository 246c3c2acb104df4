#!/bin/bash
# Why the demo's detection AP50 stays near zero (issue 22 / 15): single-task detection at the demo's size.
# bench/quality_det.py's cxrfx arm (finetune_det's network with the demo backbone; window 4 at 128 px) at 128 px,
# 5 CPU-minutes of detection alone (about 1 240 iterations of batch 8; the demo gives detection about 260
# iterations of batch 4, a tenth of the images seen), trained on the 184 training
# images of a 264-image phantom (what a 264-per-dataset demo would have) or on those plus 600 images of other
# patients; scored on the 80 validation + test images. Results and generated tables under
# bench/results/demo_det_probe/ (one file per training-set size: quality_det keeps one setting per file).
# About 25 CPU-minutes on one core; resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
out=bench/results/demo_det_probe
mkdir -p "$out"
for extra in 0 600; do
  OMP_NUM_THREADS=1 PYTHONPATH=plugins nice "${PYTHON:-.venv/bin/python}" bench/quality_det.py --threads 1 --size 128 \
    --count 264 --extra-train "$extra" --budgets time --budget-minutes 5 --arms cxrfx --seeds 0 1 \
    --data "$HOME/.cache/cxrfx/bench/det128" --models "$HOME/.cache/cxrfx/bench/det128_models" \
    --results "$out/extra$extra.json" --doc "$out/extra$extra.md" --readme "$out/readme_table$extra.md"
done
