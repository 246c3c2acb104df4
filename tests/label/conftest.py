"""Fixtures for the MONAI Label tests: the label venv, phantom studies, the bundles' configs.

The label venv is built on first use (``cxrfx.label.env.ensure``: ~3 min, then cached under
``~/.cache/cxrfx/label-venv``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest
from label_server import PLUGINS, REPO

BUNDLES = ("finetune_seg", "finetune_det", "foundation_x")


@pytest.fixture(scope="session")
def label_python() -> str:
    from cxrfx.label import env

    start = time.time()
    python = env.ensure(quiet=False)
    print(f"label venv: {python} ({time.time() - start:.1f} s)")
    return python


@pytest.fixture(scope="session")
def label_env(label_python) -> dict:
    e = dict(os.environ, PYTHONPATH=PLUGINS, OMP_NUM_THREADS="2", MONAI_LABEL_DICOMWEB_CACHE_EXPIRY="1")
    e.pop("VIRTUAL_ENV", None)
    return e


@pytest.fixture(scope="session")
def studies(tmp_path_factory, label_python, label_env) -> str:
    out = str(tmp_path_factory.mktemp("label") / "studies")
    subprocess.run([label_python, "-m", "cxrfx.label", "studies", "--out", out, "--count", "4", "--size", "128"],
                   env=label_env, check=True, capture_output=True)
    return out


@pytest.fixture(scope="session")
def bundles(tmp_path_factory) -> str:
    """The checkout's bundle configs without any local weights: every run serves the same seeded weights."""
    root = tmp_path_factory.mktemp("bundles")
    for name in BUNDLES:
        shutil.copytree(os.path.join(REPO, "bundles", name, "configs"), root / name / "configs")
    return str(root)


