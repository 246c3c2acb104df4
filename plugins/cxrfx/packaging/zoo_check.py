"""``make zoo-check``: the Model Zoo's own CI checks, run offline on our packaged bundles.

Given a local copy of the zoo's CI files (``--zoo PATH``: a checkout of Project-MONAI/model-zoo, or any folder with
its ``ci/``, ``setup.cfg``, ``pyproject.toml`` and ``.pre-commit-config.yaml``; nothing is fetched), for each
bundle this packages the archive (weights: ``--weights``, else the network's initial state as stand-in weights,
said so in the report), lays out a zoo-shaped folder as a pull request would (``models/<zoo_name>/`` unpacked,
``ci/unit_tests/test_<zoo_name>.py``; the weights only through ``large_files.yml``, from ``file://`` URLs) and runs:

- ``pre-commit: <hook>``: every hook of the zoo's ``.pre-commit-config.yaml`` from ``pre-commit-hooks`` (its
  console scripts, installed by our test extras, on the files the pull request adds, as pre-commit passes them);
- ``isort``, ``black``, ``flake8``, ``pytype``: the zoo's ``runtests.sh --codeformat`` steps with its settings, on
  the bundle and its unit test (pytype on the zoo folder, as the zoo runs it; ``--pytype EXE`` for one installed
  elsewhere; not run, and reported so, without one);
- ``verify_bundle (min)`` and ``verify_bundle (full)``: the zoo's ``ci/verify_bundle.py`` (the schema, which its
  ``prepare_schema.py`` would download, comes from the copy we ship; full mode includes ``check_properties``,
  ``verify_net_in_out`` and the TorchScript export by scripting);
- ``unit test``: the zoo's ``ci/unit_tests/runner.py -b <zoo_name>`` on our ``test_<zoo_name>.py``.

Writes ``<out>/zoo_check.md`` (the table, check -> pass / fail per bundle) and ``zoo_check.json`` (with each
failure's output tail), and prints the table. Exit status 1 when any check failed.

    python -m cxrfx.packaging.zoo_check --zoo PATH [--bundles foundation_x ...] [--out runs/zoo-check]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

from cxrfx.packaging.checks import DEFAULT_SCHEMA

__all__ = ["ZOO_FILES", "prepare_zoo", "run_checks", "main"]

ROOT = Path(__file__).resolve().parents[3]
BUNDLES = ("foundation_x", "finetune_seg", "finetune_det")
#: what is copied from the zoo copy: its CI scripts and style settings (models/model_info.json when present)
ZOO_FILES = ("ci", "setup.cfg", "pyproject.toml", ".pre-commit-config.yaml", "models/model_info.json")
#: pre-commit-hooks ids -> (console script, which files pre-commit passes it: a ``types`` stand-in)
HOOKS = {
    "end-of-file-fixer": ("end-of-file-fixer", "text"),
    "trailing-whitespace": ("trailing-whitespace-fixer", "text"),
    "check-yaml": ("check-yaml", "yaml"),
    "check-docstring-first": ("check-docstring-first", "python"),
    "check-executables-have-shebangs": ("check-executables-have-shebangs", "executable"),
    "check-toml": ("check-toml", "toml"),
    "check-case-conflict": ("check-case-conflict", "all"),
    "check-added-large-files": ("check-added-large-files", "all"),
    "detect-private-key": ("detect-private-key", "text"),
    "forbid-new-submodules": ("forbid-new-submodules", "none"),
    "pretty-format-json": ("pretty-format-json", "json"),
    "mixed-line-ending": ("mixed-line-ending", "text"),
}
_TEXT_SUFFIXES = {".py", ".json", ".md", ".yml", ".yaml", ".conf", ".txt", ".toml", ".cfg", ""}


def _tool(name: str) -> str:
    """A console script of this environment (``.venv/bin/<name>``), else whatever is on PATH."""
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else (shutil.which(name) or name)


def _run(cmd: list[str], cwd: Path, timeout: int = 3600, env: dict | None = None) -> tuple[bool, str, float]:
    start = time.time()
    try:
        proc = subprocess.run(cmd, cwd=str(cwd), capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    except subprocess.TimeoutExpired:
        return False, f"timed out after {timeout} s", time.time() - start
    except FileNotFoundError as exc:
        return False, f"not installed: {exc}", time.time() - start
    return proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:], time.time() - start


def prepare_zoo(zoo_copy: Path, target: Path) -> None:
    """A fresh zoo-shaped folder at ``target`` with the CI files of ``zoo_copy`` committed in a git repository
    (the git-based hooks compare against it)."""
    if not (zoo_copy / "ci" / "verify_bundle.py").is_file():
        raise SystemExit(f"{zoo_copy}: no ci/verify_bundle.py; give --zoo a local copy of the Model Zoo's files")
    shutil.rmtree(target, ignore_errors=True)
    (target / "models").mkdir(parents=True)
    for rel in ZOO_FILES:
        src = zoo_copy / rel
        if src.is_dir():
            shutil.copytree(src, target / rel, ignore=shutil.ignore_patterns("__pycache__", "test_*.py"))
        elif src.is_file():
            shutil.copyfile(src, target / rel)
    if not (target / "models" / "model_info.json").exists():
        (target / "models" / "model_info.json").write_text("{}\n")
    for unit in ("runner.py", "utils.py"):  # the unit-test runner and helpers only, not the zoo's other tests
        src = zoo_copy / "ci" / "unit_tests" / unit
        if src.is_file():
            shutil.copyfile(src, target / "ci" / "unit_tests" / unit)
    git = ["git", "-c", "user.name=zoo-check", "-c", "user.email=zoo-check@localhost"]
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "zoo CI files"]):
        subprocess.run(git + cmd, cwd=str(target), check=True, capture_output=True)


def _kind(path: Path) -> set[str]:
    kinds = {"all"}
    if path.suffix in _TEXT_SUFFIXES:
        kinds.add("text")
    kinds |= {k for k, suffixes in (("yaml", {".yml", ".yaml"}), ("json", {".json"}), ("toml", {".toml"}),
                                    ("python", {".py"})) if path.suffix in suffixes}
    if os.access(path, os.X_OK) and "text" in kinds:
        kinds.add("executable")
    return kinds


def _hooks(zoo: Path) -> list[tuple[str, list[str], str]]:
    """(id, args, exclude regex) of the pre-commit-hooks entries of the zoo's ``.pre-commit-config.yaml``."""
    import yaml

    config = yaml.safe_load((zoo / ".pre-commit-config.yaml").read_text())
    top_exclude = config.get("exclude", "^$")
    found = []
    for repo in config.get("repos", []):
        if not str(repo.get("repo", "")).endswith("pre-commit/pre-commit-hooks"):
            continue
        for hook in repo.get("hooks", []):
            exclude = hook.get("exclude", "^$")
            found.append((hook["id"], list(hook.get("args", [])), f"(?:{top_exclude})|(?:{exclude})"))
    return found


def run_checks(zoo: Path, name: str, added: list[str], skip_unit_test: bool = False,
               pytype: str | None = None) -> dict[str, dict]:
    """Every check on bundle ``name`` already unpacked in ``zoo/models/<name>`` (``added``: the pull request's
    files, zoo-relative; ``pytype``: its executable, else this environment's if installed). Returns
    ``{check: {"ok": bool | None, "seconds": s, "log": tail}}``."""
    results: dict[str, dict] = {}

    def record(check: str, ok: bool | None, log: str, seconds: float = 0.0) -> None:
        results[check] = {"ok": ok, "seconds": round(seconds, 1), "log": log if not ok else ""}

    # 1. pre-commit hooks, on the pristine pull request (before verify downloads the weights)
    for hook_id, args, exclude in _hooks(zoo):
        if hook_id not in HOOKS:
            record(f"pre-commit: {hook_id}", None, "no console script known for this hook")
            continue
        script, kind = HOOKS[hook_id]
        files = [f for f in added if kind in _kind(zoo / f) and not re.search(exclude, f)]
        if kind != "none" and not files:
            record(f"pre-commit: {hook_id}", True, "no files of its type")
            continue
        ok, log, secs = _run([_tool(script), *args, *(files if kind != "none" else [])], zoo)
        record(f"pre-commit: {hook_id}", ok, log, secs)
        subprocess.run(["git", "checkout", "-q", "--", "."], cwd=str(zoo), capture_output=True)  # undo autofixes
    # 2. runtests.sh --codeformat (isort, black, flake8 with the zoo's setup.cfg / pyproject.toml)
    targets = [f"models/{name}"] + [f for f in added if f.startswith("ci/")]
    py = sys.executable
    for check, cmd in (("isort", [py, "-m", "isort", "--check", *targets]),
                       ("black", [py, "-m", "black", "--skip-magic-trailing-comma", "--check", *targets]),
                       ("flake8", [py, "-m", "flake8", *targets, "--count", "--statistics"])):
        ok, log, secs = _run(cmd, zoo)
        record(check, ok, log, secs)
    # runtests.sh --codeformat's last step, as it runs it: the whole zoo folder with the zoo's pyproject.toml
    # settings. pytype cannot share an environment with every torch build, so it may come from another one
    # (--pytype); it must run on this Python's minor version, the one passed to it.
    pytype = pytype or (_tool("pytype") if shutil.which(_tool("pytype")) else None)
    if pytype is None:
        record("pytype", None, "not run: pytype is not installed here (--pytype EXE; the zoo's codeformat job runs it)")
    else:
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        ok, log, secs = _run([pytype, "-j", str(min(os.cpu_count() or 1, 2)), f"--python-version={version}", "."],
                             zoo)
        record("pytype", ok, log, secs)
    # 3. verify_bundle.py, min then full (full: properties, net in/out, TorchScript by scripting)
    for mode in ("min", "full"):
        ok, log, secs = _run([py, "ci/verify_bundle.py", "-b", name, "-p", "models", "-m", mode], zoo)
        record(f"verify_bundle ({mode})", ok, log, secs)
    # 4. the unit test, through the zoo's runner
    if skip_unit_test:
        record("unit test", None, "skipped (--skip_unit_test)")
    elif not (zoo / "ci" / "unit_tests" / "runner.py").is_file():
        record("unit test", None, "the zoo copy has no ci/unit_tests/runner.py")
    else:
        ok, log, secs = _run([py, "ci/unit_tests/runner.py", "-b", name], zoo)
        record("unit test", ok and "Ran 0 tests" not in log, log, secs)
    return results


def _stand_in_weights(bundle: Path, path: Path) -> None:
    """The network's initial state: verify_bundle needs models/model.pt, trained or not."""
    import torch
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser["bundle_root"] = str(path.parent)
    torch.save(parser.get_parsed_content("network_def").state_dict(), path)


def _table(all_results: dict[str, dict[str, dict]]) -> str:
    checks = list(dict.fromkeys(c for r in all_results.values() for c in r))
    names = list(all_results)
    mark = {True: "pass", False: "**FAIL**", None: "not run"}
    lines = ["| check | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for check in checks:
        cells = [mark[all_results[n][check]["ok"]] if check in all_results[n] else "" for n in names]
        lines.append(f"| {check} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--zoo", required=True, help="local copy of the Model Zoo's files (its ci/, setup.cfg, ...)")
    p.add_argument("--bundles", nargs="+", default=list(BUNDLES), help="bundle folders under bundles/")
    p.add_argument("--out", default=str(ROOT / "runs" / "zoo-check"))
    p.add_argument("--weights", nargs="*", default=[], metavar="BUNDLE=FILE",
                   help="trained weights per bundle (default: the network's initial state, as stand-in)")
    p.add_argument("--skip_unit_test", action="store_true")
    p.add_argument("--pytype", default=None, help="pytype executable (default: this environment's, if installed)")
    a = p.parse_args(argv)
    from cxrfx.packaging import package_bundle

    out = Path(a.out).resolve()
    weights = dict(w.split("=", 1) for w in a.weights)
    all_results: dict[str, dict[str, dict]] = {}
    notes = []
    for bundle_name in a.bundles:
        bundle = ROOT / "bundles" / bundle_name
        work = out / bundle_name
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        model = Path(weights[bundle_name]) if bundle_name in weights else work / "stand_in_model.pt"
        if bundle_name not in weights:
            _stand_in_weights(bundle, model)
            notes.append(f"{bundle_name}: stand-in weights (the network's initial state), not trained ones")
        release = work / "release"
        meta = json.loads((bundle / "configs" / "metadata.json").read_text())
        from cxrfx.packaging.checks import zoo_name

        name = zoo_name(str(bundle), meta)
        side = release / f"{name}_v{meta['version']}_large_files"
        result = package_bundle(str(bundle), str(release), weights=str(model), checks=False,
                                large_files_url=side.as_uri())
        zoo = work / "zoo"
        prepare_zoo(Path(a.zoo).resolve(), zoo)
        with zipfile.ZipFile(result.archive) as zf:
            zf.extractall(zoo / "models")
            added = [n for n in zf.namelist() if not n.endswith("/")]
        added = [f"models/{n}" for n in added]
        if result.zoo_unit_test:
            shutil.copyfile(result.zoo_unit_test, zoo / "ci" / "unit_tests" / Path(result.zoo_unit_test).name)
            added.append(f"ci/unit_tests/{Path(result.zoo_unit_test).name}")
        subprocess.run(["git", "add", *added], cwd=str(zoo), check=True, capture_output=True)
        # what ci/prepare_schema.py downloads from the metadata's "schema" URL: our copy of that same file
        (zoo / "models" / name / "eval").mkdir(exist_ok=True)
        shutil.copyfile(DEFAULT_SCHEMA, zoo / "models" / name / "eval" / "schema.json")
        print(f"== {bundle_name} ({name}): archive {result.size_bytes / 1e6:.2f} MB, "
              f"large files {[e['path'] for e in result.large_files]}", flush=True)
        all_results[name] = run_checks(zoo, name, sorted(set(added)), skip_unit_test=a.skip_unit_test,
                                       pytype=a.pytype)
        all_results[name]["archive MB"] = {"ok": None, "seconds": 0.0, "log": f"{result.size_bytes / 1e6:.2f}"}
        for check, r in all_results[name].items():
            print(f"  {check}: {r['ok']} ({r['seconds']} s)", flush=True)
    table = _table({n: {c: r for c, r in res.items() if c != "archive MB"} for n, res in all_results.items()})
    sizes = ", ".join(f"{n} {res['archive MB']['log']} MB" for n, res in all_results.items())
    report = (f"# Model Zoo CI, run offline ({time.strftime('%Y-%m-%d %H:%M')})\n\nzoo files: {a.zoo}\n\n" + table
              + f"\nArchive sizes (without the large files): {sizes}.\n"
              + "".join(f"\n- {n}" for n in notes) + "\n")
    (out / "zoo_check.md").write_text(report)
    (out / "zoo_check.json").write_text(json.dumps(all_results, indent=1))
    print("\n" + report)
    failed = any(r["ok"] is False for res in all_results.values() for r in res.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
