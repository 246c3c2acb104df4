"""``make bench``: run every benchmark in its own process and write ``docs/benchmarks.md``.

Each benchmark prints one JSON line; this collects them, compares each figure with its goal and writes the
table with the machine and versions. Figures are ratios measured inside one run (the machines are shared).

    .venv/bin/python bench/run_all.py [--out docs/benchmarks.md] [--quick]
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

RUNS = {  # name -> arguments (quick variants in brackets are used with --quick)
    "cpu_efficiency": (["--repeats", "3"], ["--repeats", "1", "--batch", "2"]),
    "heads_overhead": (["--repeats", "3"], ["--repeats", "1", "--sizes", "224"]),
    "train_step_tiny": (["--backbone", "tiny", "--size", "96", "--batch", "4", "--repeats", "7"], ["--repeats", "2"]),
    "train_step_base": (["--backbone", "base", "--size", "224", "--batch", "2", "--repeats", "3"], None),
    "data_pipeline": (["--images", "16", "--workers", "2"], ["--images", "8"]),
    "predict_memory": ([], ["--side", "1500"]),
    "gpu_step": ([], []),
    "gpu_compile_check_cpu": (["--device", "cpu", "--compile"], None),
}
SCRIPT = {"train_step_tiny": "train_step", "train_step_base": "train_step", "gpu_compile_check_cpu": "gpu_step"}


def run(name: str, args: list[str]) -> dict:
    script = HERE / f"{SCRIPT.get(name, name)}.py"
    proc = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, cwd=str(HERE))
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout)[-1500:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def verdict(value, goal: float, higher: bool) -> str:
    if value is None:
        return "—"
    return "met" if (value >= goal if higher else value <= goal) else "not met"


def rows(r: dict) -> list[tuple[str, str, str, str, str]]:
    """(figure, measured, goal, verdict, note) per line of the table."""
    out = []
    e = r.get("cpu_efficiency", {})
    for tag in ("fp32", "bf16"):
        if tag in e:
            f = e[tag]
            out.append((f"1. CPU efficiency, Swin-B cls forward 224 ×{e['batch']}, {tag}", f"{f['efficiency']:.2f}",
                        "≥ 0.80", verdict(f["efficiency"], 0.8, True),
                        f"{f['ours_gflops_per_s']} ÷ {f['matmul_gflops_per_s']} GFLOP/s (matmul 2048²); MONAI "
                        f"SwinTransformer same run: {f['monai_swin_efficiency']:.2f}"))
    h = r.get("heads_overhead", {})
    for inventory in ("paper", "phantom"):
        for size in ("224", "512"):
            if size in h.get(inventory, {}):
                f = h[inventory][size]
                out.append((f"2. Heads overhead, {inventory} heads, {size} px", f"{f['time_ratio']:.2f}", "≤ 1.25",
                            verdict(f["time_ratio"], 1.25, False),
                            f"FLOP ratio {f['flop_ratio']:.2f} (GFLOP: {f['gflop']})"))
    for key, label in (("train_step_tiny", "tiny 96 px ×4"), ("train_step_base", "Swin-B 224 px ×2")):
        f = r.get(key, {})
        if "release_ratio" in f:
            out.append((f"3. Training overhead, {label}, paper cycle", f"{f['paper_cycle_ratio']:.2f}", "≤ 1.10",
                        verdict(f["paper_cycle_ratio"], 1.10, False),
                        f"release step {f['release_ratio']:.2f}, lock step {f['lock_ratio']:.2f} (lock share "
                        f"{f['paper_cycle_lock_share']:.2f}); EMA every iteration: {f['release_ratio_ema_every_iteration']:.2f}"))
    f = r.get("data_pipeline", {})
    if "ratio_uncached" in f:
        for tag, key in (("no cache", "ratio_uncached"), ("cache_dir", "ratio_cached")):
            out.append((f"4. Data pipeline ÷ train step (demo config), {tag}", f"{f[key]:.2f}", "≥ 1.0",
                        verdict(f[key], 1.0, True),
                        f"pipeline {f['pipeline_images_per_s' if key == 'ratio_uncached' else 'cached_pipeline_images_per_s']}"
                        f" img/s ({f['workers']} workers, 16-bit DICOM/PNG up to 3000 px) vs train "
                        f"{f['train_images_per_s']} img/s"))
    f = r.get("predict_memory", {})
    if "peak_rss_gb" in f:
        out.append((f"5. Peak RSS of `cxrfx predict`, {f['side']}² 16-bit DICOM", f"{f['peak_rss_gb']:.2f} GB", "≤ 2 GB",
                    verdict(f["peak_rss_gb"], 2.0, False), f"{f['outputs']} output files incl. DICOM SEG, {f['seconds']} s"))
    f = r.get("gpu_step", {})
    if "mfu" in f:
        out.append(("6. GPU MFU, Swin-B 224 bf16", f"{f['mfu']:.2f}", "≥ 0.35", verdict(f["mfu"], 0.35, True),
                    f"{f['gpu']}: {f['images_per_s']} img/s, {f['achieved_tflops']} TFLOP/s"))
    elif "skipped" in f:
        out.append(("6. GPU MFU, Swin-B 224 bf16", "skipped", "≥ 0.35", "—", f["skipped"]))
    f = r.get("gpu_compile_check_cpu", {}).get("cpu_check")
    if f:
        out.append(("6b. torch.compile path on CPU (tiny network)", f"max abs diff {f['compiled_vs_eager_max_abs_diff']:.1e}",
                    "same outputs", "met" if f["within_tolerance"] else "not met", "compiled vs eager forward"))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    p.add_argument("--json", default=str(ROOT / "runs" / "bench.json"))
    p.add_argument("--quick", action="store_true", help="small sizes: checks that every benchmark runs")
    p.add_argument("--only", nargs="*", default=None)
    p.add_argument("--from_json", action="store_true", help="rewrite the page from --json without measuring")
    a = p.parse_args()
    results = json.loads(Path(a.json).read_text()) if a.from_json else {}
    for name, (full, quick) in RUNS.items():
        if a.from_json or a.only and name not in a.only or (a.quick and quick is None):
            continue
        print(f"[bench] {name} ...", flush=True)
        results[name] = run(name, quick if a.quick else full)
        print(f"[bench] {name}: {json.dumps(results[name])[:300]}", flush=True)
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(results, indent=1))
    machine = next((v["machine"] for v in results.values() if "machine" in v), {})
    lines = ["# Benchmarks", "", f"Written by `make bench` (`bench/run_all.py`) on {datetime.date.today()}.",
             "Every figure is a ratio of two things measured in the same run (medians of interleaved repeats); "
             "absolute times only as context.", "",
             f"Machine: {machine.get('cpu', '?')}, {machine.get('cores_usable', '?')} usable cores, bf16 instructions: "
             f"{machine.get('bf16_cpu', '?')}, load average at start {machine.get('load_average', '?')}; "
             f"Python {machine.get('python', '?')}, torch {machine.get('torch', '?')}, MONAI {machine.get('monai', '?')}, "
             f"numpy {machine.get('numpy', '?')}.", "",
             "| Figure | Measured | Goal | Verdict | Notes |", "|---|---|---|---|---|"]
    lines += [f"| {' | '.join(row)} |" for row in rows(results)]
    errors = {k: v["error"] for k, v in results.items() if "error" in v}
    if errors:
        lines += ["", "Benchmarks that failed:", ""] + [f"- `{k}`: {v.splitlines()[-1] if v else ''}" for k, v in errors.items()]
    notes = Path(HERE / "notes.md")
    if notes.exists():
        lines += ["", notes.read_text().strip()]
    Path(a.out).write_text("\n".join(lines) + "\n")
    print(f"[bench] wrote {a.out}")


if __name__ == "__main__":
    main()
