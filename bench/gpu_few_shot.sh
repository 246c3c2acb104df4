#!/usr/bin/env bash
# The few-shot benchmark (bench/few_shot.py) on a lent GPU machine, as one prepared command.
#
# That machine has PyTorch (CUDA) but no MONAI / ignite, and no diffdrr to render the phantom; so, prepared here:
#   wheels of the missing packages in .whl/ (cp312, see the device tool's README) and the two phantom populations
#   rendered beforehand into runs/fsgpu/data (few_shot.py reuses a build with the same parameters), both carried.
# There:  bash bench/gpu_few_shot.sh OUT_DIR TOTAL_SECONDS [few_shot.py arguments ...]
# It installs the wheels, measures the Swin-B pretraining step (bench/gpu_step.py, alone on the GPU), runs a
# 4-iteration smoke test of every code path (stops there if it fails), then the benchmark proper with many runs at
# a time, starting none in its last RESERVE seconds (default 150: the longest run's time with the GPU shared) and
# ending within TOTAL_SECONDS; results go to OUT_DIR/few_shot.json after every run, so a cut run loses nothing stored.
set -uo pipefail
out=$1 total=$2 reserve=${RESERVE:-150} start=$SECONDS
shift 2
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 3
export PYTHONPATH=/tmp/site:$PWD/plugins:$PWD/bench PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
nvidia-smi -L
nproc
timeout 100 python3 bench/gpu_step.py --batch 32 >"$out/gpu_step.json" 2>"$out/gpu_step.err" || echo "gpu_step: status $?"
tail -1 "$out/gpu_step.json"
# smoke: the same code paths at 4 iterations, one pretraining cycle (its own folder; the data is shared)
mkdir -p runs/smoke && ln -sfn ../fsgpu/data runs/smoke/data
if ! timeout 150 python3 bench/few_shot.py --out runs/smoke --store "$out/smoke.json" --iterations 4 \
        --pretrain_cycles 1 --seeds 0 --shots 2 --arms scratch foundation_x monai_unet --jobs 3 >"$out/smoke.log" 2>&1; then
    tail -60 "$out/smoke.log"
    find runs/smoke -name '*.log' | tar czf "$out/smoke_logs.tgz" -T -
    exit 4
fi
tail -12 "$out/smoke.log"
left=$((total - (SECONDS - start) - 20))  # 20 s to pack the logs
timeout "$left" python3 bench/few_shot.py --out runs/fsgpu --store "$out/few_shot.json" --budget_s $((left - reserve)) "$@" \
    >"$out/few_shot.log" 2>&1
status=$?
tail -40 "$out/few_shot.log"
find runs/fsgpu -name '*.log' | tar czf "$out/run_logs.tgz" -T -
exit $status
