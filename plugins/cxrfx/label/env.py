"""The MONAI Label virtual environment: built once per ``constraints-label.txt`` content, cached, shared.

``python plugins/cxrfx/label/env.py`` (what ``make label-env`` runs) prints the venv's python after making sure it
exists. Standard library only: it runs with the system python before any environment exists.

The venv lives in ``~/.cache/cxrfx/label-venv/<first 16 hex of sha256(constraints-label.txt)>`` (``$CXRFX_CACHE``
replaces ``~/.cache/cxrfx``), so editing the lock file builds a new one and local reruns reuse it. It is built
in a temporary sibling folder and renamed into place when complete, under a lock file, so an interrupted or
concurrent build never leaves a half-made venv where the next run would use it. cxrfx itself is not installed
into it: the launcher puts ``plugins/`` of the checkout on ``PYTHONPATH``, so one cached venv serves every clone.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
LOCK_FILE = os.path.join(REPO, "constraints-label.txt")


def cache_root() -> str:
    """``$CXRFX_CACHE`` or ``~/.cache/cxrfx`` (the same cache the phantom's CT wheel uses)."""
    return os.environ.get("CXRFX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "cxrfx")


def venv_dir(lock_file: str = LOCK_FILE) -> str:
    """Where the venv for this lock file's content lives."""
    with open(lock_file, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:16]
    return os.path.join(cache_root(), "label-venv", digest)


def venv_python(lock_file: str = LOCK_FILE) -> str:
    return os.path.join(venv_dir(lock_file), "bin", "python")


def _run(cmd: list[str], log) -> None:
    log.write("+ " + " ".join(cmd) + "\n")
    log.flush()
    proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed with exit code {proc.returncode}; see {log.name}")


def _check_imports(python: str) -> None:
    """The server's import chain must load, and must not have imported torchvision (unusable here)."""
    code = ("import cxrfx.label.compat as c; c.install(); import monailabel.app, monailabel.tasks.train.basic_train, "
            "monailabel.datastore.dicom, sys; assert 'torchvision' not in sys.modules, 'torchvision was imported'")
    env = dict(os.environ, PYTHONPATH=os.path.join(REPO, "plugins"))
    proc = subprocess.run([python, "-c", code], env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"the label venv does not import MONAI Label: {proc.stderr.strip().splitlines()[-1:]}")


def ensure(lock_file: str = LOCK_FILE, quiet: bool = False) -> str:
    """Build the venv for ``lock_file`` unless it exists; return its python. Raises RuntimeError naming the log."""
    final = venv_dir(lock_file)
    python = os.path.join(final, "bin", "python")
    ready = os.path.join(final, ".cxrfx-ready")
    if os.path.exists(ready):
        return python
    os.makedirs(os.path.dirname(final), exist_ok=True)
    with open(final + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second builder waits, then finds the venv ready
        if os.path.exists(ready):
            return python
        tmp = f"{final}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        log_path = final + ".build.log"
        start = time.time()
        if not quiet:
            print(f"building the MONAI Label venv in {final} (log: {log_path}) ...", file=sys.stderr, flush=True)
        with open(log_path, "w") as log:
            _run([sys.executable, "-m", "venv", tmp], log)
            # --no-deps: the lock file is complete; monailabel's declared torchvision / sam2 / itk must not come in
            _run([os.path.join(tmp, "bin", "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                  "--no-deps", "-r", lock_file], log)
        shutil.rmtree(final, ignore_errors=True)
        os.rename(tmp, final)  # python -m works from the renamed venv: its prefix comes from pyvenv.cfg's place
        _check_imports(python)
        with open(ready, "w") as f:
            f.write(f"built in {time.time() - start:.0f} s from {lock_file}\n")
        if not quiet:
            print(f"MONAI Label venv ready in {time.time() - start:.0f} s", file=sys.stderr)
    return python


if __name__ == "__main__":
    print(ensure(*(sys.argv[1:2] or [LOCK_FILE])))
