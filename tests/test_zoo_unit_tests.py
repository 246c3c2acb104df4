"""The Model Zoo side of a submission (issue 18): each bundle's ``test_<zoo_name>.py`` (``cxrfx.packaging.zoo_tests``)
is written beside the archive, is formatted and flake8-clean with the zoo's settings, and passes when run as the
zoo's ``ci/unit_tests/runner.py`` runs it — from a zoo-shaped folder holding only the unpacked archive (the
vendored cxrfx, not ours) — on its tiny phantom settings; ``make zoo-check``'s machinery (``zoo_check``) lays out
such a folder and runs the zoo's hooks and style checks in it.

Set ``CXRFX_ZOO`` to a local copy of the Model Zoo to run the unit tests with its own ``runner.py`` / ``utils.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from cxrfx.packaging import package_bundle
from cxrfx.packaging.style import ZOO_FLAKE8, format_python_source, style_tools
from cxrfx.packaging.zoo_check import prepare_zoo, run_checks
from cxrfx.packaging.zoo_tests import CHECK_WORKFLOW_UTILS, ZOO_TESTS, render_zoo_test

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = ROOT / "bundles"
ZOO = os.environ.get("CXRFX_ZOO")


def _zoo_layout(bundle: str, tmp: Path) -> tuple[Path, str, list[str]]:
    """``tmp/zoo``: the archive unpacked into ``models/``, the unit test in ``ci/unit_tests/`` (+ utils.py)."""
    result = package_bundle(str(BUNDLES / bundle), str(tmp / "dist"), checks=False)
    assert result.zoo_unit_test and Path(result.zoo_unit_test).parent.name.endswith("_zoo_ci")
    zoo = tmp / "zoo"
    unit = zoo / "ci" / "unit_tests"
    unit.mkdir(parents=True)
    with zipfile.ZipFile(result.archive) as zf:
        zf.extractall(zoo / "models")
        added = [f"models/{n}" for n in zf.namelist() if not n.endswith("/")]
    (unit / Path(result.zoo_unit_test).name).write_text(Path(result.zoo_unit_test).read_text())
    (unit / "utils.py").write_text(CHECK_WORKFLOW_UTILS)
    return zoo, result.name, added + [f"ci/unit_tests/test_{result.name}.py"]


@pytest.mark.parametrize("bundle", sorted(ZOO_TESTS))
def test_the_zoo_unit_test_passes_from_a_zoo_layout(bundle, tmp_path):
    zoo, name, _ = _zoo_layout(bundle, tmp_path)
    if ZOO:  # the zoo's own runner and utils
        for f in ("runner.py", "utils.py"):
            (zoo / "ci" / "unit_tests" / f).write_text((Path(ZOO) / "ci" / "unit_tests" / f).read_text())
        cmd = [sys.executable, "ci/unit_tests/runner.py", "-b", name]
    else:
        cmd = [sys.executable, f"ci/unit_tests/test_{name}.py"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(cmd, cwd=str(zoo), capture_output=True, text=True, timeout=1800,
                          env={**env, "OMP_NUM_THREADS": "1"})
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Ran 2 tests" in log and "OK" in log, log[-4000:]
    assert "before this bundle's scripts" not in log  # scripts/__init__.py saw no other cxrfx: the vendored one ran
    assert not (zoo / "models" / name / "models").exists()  # outputs went to a scratch folder


@pytest.mark.parametrize("bundle", sorted(ZOO_TESTS))
def test_the_zoo_unit_test_is_in_the_zoos_style(bundle, tmp_path):
    name = json.loads((BUNDLES / bundle / "configs" / "metadata.json").read_text()).get("zoo_name", bundle)
    text = render_zoo_test(str(BUNDLES / bundle), name)
    assert '"handlers#0#_disabled_": True' in text  # inference runs without weights: the loader is handler 0
    if style_tools():
        assert format_python_source(text) == text
    path = tmp_path / f"test_{name}.py"
    path.write_text(text)
    (tmp_path / "setup.cfg").write_text(ZOO_FLAKE8)
    proc = subprocess.run([sys.executable, "-m", "flake8", "--config", str(tmp_path / "setup.cfg"), str(path)],
                          capture_output=True, text=True)
    if "No module named flake8" in proc.stderr:
        pytest.skip("flake8 not installed")
    assert proc.returncode == 0, proc.stdout


def test_zoo_check_runs_the_zoos_hooks_and_style_checks_offline(tmp_path):
    """A stand-in zoo copy (its style settings and hooks, a verify_bundle.py that only reports): the tool lays out
    the pull request and runs each hook and isort / black on it; the archive passes them."""
    copy = tmp_path / "zoo_copy"
    (copy / "ci" / "unit_tests").mkdir(parents=True)
    (copy / "ci" / "verify_bundle.py").write_text("import sys\nprint('verify', sys.argv[1:])\n")
    (copy / "setup.cfg").write_text(ZOO_FLAKE8 + "\n[isort]\nknown_first_party = models\nprofile = black\n"
                                    "line_length = 120\n")
    (copy / "pyproject.toml").write_text("[tool.black]\nline-length = 120\ntarget-version = ['py37', 'py38', 'py39']\n")
    (copy / ".pre-commit-config.yaml").write_text(
        "exclude: '.*\\.ipynb$'\nrepos:\n  - repo: https://github.com/pre-commit/pre-commit-hooks\n    rev: v4.6.0\n"
        "    hooks:\n      - id: end-of-file-fixer\n      - id: trailing-whitespace\n"
        "      - id: check-added-large-files\n        args: ['--maxkb=1024']\n"
        "      - id: pretty-format-json\n        args: ['--autofix', '--no-sort-keys', '--indent=4']\n")
    layout, name, added = _zoo_layout("finetune_seg", tmp_path / "pr")
    zoo = tmp_path / "zoo"
    prepare_zoo(copy, zoo)
    for top in ("models", "ci"):
        subprocess.run(["cp", "-r", str(layout / top), str(zoo)], check=True)
    subprocess.run(["git", "add", *added], cwd=str(zoo), check=True, capture_output=True)
    # a stand-in pytype that fails, saying how it was called (as runtests.sh: -j, this Python's version, the zoo)
    pytype = tmp_path / "pytype"
    pytype.write_text('#!/bin/sh\necho "pytype $* in $(pwd)"\nexit 1\n')
    pytype.chmod(0o755)
    results = run_checks(zoo, name, added, skip_unit_test=True, pytype=str(pytype))
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert results["pytype"]["ok"] is False
    assert results["pytype"]["log"].strip() == f"pytype -j {min(os.cpu_count() or 1, 2)} --python-version={version} . in {zoo}"
    for check in ("pre-commit: end-of-file-fixer", "pre-commit: trailing-whitespace",
                  "pre-commit: check-added-large-files", "pre-commit: pretty-format-json", "isort", "black",
                  "verify_bundle (min)", "verify_bundle (full)"):
        if check in ("isort", "black") and not style_tools():
            continue
        assert results[check]["ok"], (check, results[check]["log"])
    assert "flake8" in results and results["unit test"]["ok"] is None
