"""``package_bundle``: a bundle folder -> ``<zoo_name>_v<version>.zip``, a self-contained Model Zoo archive.

Order: cheap metadata checks (refuse early) -> stage ``<zoo_name>/`` in a scratch folder (configs, docs,
LICENSE, vendored ``scripts/cxrfx`` formatted with the Model Zoo's isort / black settings, weights) -> network checks in a separate process on the staged copy ->
the weights and files over 25 MB move beside the archive and into ``large_files.yml`` with their sha256 -> a reproducible zip
(sorted entries, fixed timestamps and modes) written atomically, and beside it the bundle's Model Zoo unit test
``<zoo_name>_v<version>_zoo_ci/test_<zoo_name>.py`` (``zoo_tests.py``). Nothing is written to ``--out`` unless every
check passed. The bundle's own ``models/``, ``data/`` and ``eval/`` (training runs) are never copied: weights
come only from ``--weights``.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import tempfile
import time
import warnings
import zipfile
from dataclasses import dataclass, field
from typing import Any

from cxrfx.packaging.checks import (
    DEFAULT_SCHEMA, MAX_FILE_BYTES, BundleCheckError, check_data_format, check_pins, check_required_files,
    check_schema, check_version, run_workflow_checks, zoo_name,
)
from cxrfx.packaging.style import format_python_tree
from cxrfx.packaging.zoo_tests import ZOO_TESTS, write_zoo_test
from cxrfx.packaging.vendor import add_bootstrap_import, format_json_file, plan_vendoring, write_vendored

__all__ = ["PackageResult", "package_bundle", "sha256_file", "LARGE_FILES_URL_PLACEHOLDER"]

LARGE_FILES_URL_PLACEHOLDER = "FILL-IN: upload this file and put its download URL here"
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed, so the same inputs give the same archive bytes


@dataclass
class PackageResult:
    archive: str
    name: str
    version: str
    size_bytes: int
    files: list[str] = field(default_factory=list)
    large_files: list[dict[str, Any]] = field(default_factory=list)
    large_files_dir: str | None = None
    vendored_modules: list[str] = field(default_factory=list)
    check_seconds: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    zoo_unit_test: str | None = None  # test_<name>.py for the Model Zoo's ci/unit_tests/ (beside the archive)


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_metadata(bundle_dir: str) -> tuple[str, dict]:
    meta_file = os.path.join(bundle_dir, "configs", "metadata.json")
    if not os.path.isfile(meta_file):
        raise BundleCheckError(bundle_dir, ["configs/metadata.json is missing"])
    try:
        with open(meta_file, encoding="utf-8") as f:
            return meta_file, json.load(f)
    except json.JSONDecodeError as exc:
        raise BundleCheckError(bundle_dir, [f"configs/metadata.json is not valid JSON: {exc}"]) from None


def _copy_tree(src: str, dst: str) -> None:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*"))


def _stage(bundle_dir: str, stage: str, weights: str | None, package: str) -> list[str]:
    """Copy what ships into ``stage``; returns the vendored modules."""
    os.makedirs(stage)
    shutil.copyfile(os.path.join(bundle_dir, "LICENSE"), os.path.join(stage, "LICENSE"))
    for folder in ("configs", "docs"):
        _copy_tree(os.path.join(bundle_dir, folder), os.path.join(stage, folder))
    configs = sorted(glob.glob(os.path.join(stage, "configs", "*.json")))
    plan = plan_vendoring(configs, package=package)
    write_vendored(plan, os.path.join(stage, "scripts"))
    style = format_python_tree(os.path.join(stage, "scripts"))  # the zoo's isort + black, when installed
    if not style.applied:
        warnings.warn("black / isort are not installed (pip install -c constraints.txt -e '.[test]'): the vendored "
                      "code keeps the source layout, which the Model Zoo's code-format check reports")
    for config in configs:
        add_bootstrap_import(config, package=package)
    for rel in _walk(stage):  # every JSON as the zoo's pretty-format-json hook wants it (vendored data files too)
        if rel.endswith(".json"):
            format_json_file(os.path.join(stage, rel))
    if weights:
        os.makedirs(os.path.join(stage, "models"))
        shutil.copyfile(weights, os.path.join(stage, "models", "model.pt"))
    return plan.modules


def _large_files(bundle_dir: str, stage: str, side_dir: str, max_bytes: int, prefix: str,
                 base_url: str | None, weights_in_archive: bool = False) -> list[dict[str, Any]]:
    """Move the weights (``models/``, unless ``weights_in_archive``) and files over ``max_bytes`` to ``side_dir`` as
    flat upload names ``<prefix>_<file name>`` and write ``large_files.yml`` (the bundle's own entries + the moved
    files, URL ``base_url/<upload name>``)."""
    import yaml

    entries = []
    existing = os.path.join(bundle_dir, "large_files.yml")
    if os.path.isfile(existing):
        with open(existing, encoding="utf-8") as f:
            entries = list((yaml.safe_load(f) or {}).get("large_files") or [])
    moved = []
    for rel in _walk(stage):
        path = os.path.join(stage, rel)
        if os.path.getsize(path) > max_bytes or (rel.startswith("models/") and not weights_in_archive):
            upload = f"{prefix}_{os.path.basename(rel)}"  # release assets are flat: name says bundle and version
            target = os.path.join(side_dir, upload)
            if os.path.exists(target):
                raise BundleCheckError(bundle_dir, [f"two large files would upload as {upload}: rename one"])
            os.makedirs(side_dir, exist_ok=True)
            shutil.move(path, target)
            known = {e.get("path"): e.get("url") for e in entries}.get(rel)  # a URL the releaser set in the bundle
            url = f"{base_url.rstrip('/')}/{upload}" if base_url else known or LARGE_FILES_URL_PLACEHOLDER
            moved.append({"path": rel, "url": url, "hash_val": sha256_file(target), "hash_type": "sha256"})
    entries = [e for e in entries if e.get("path") not in {m["path"] for m in moved}] + moved
    with open(os.path.join(stage, "large_files.yml"), "w", encoding="utf-8") as f:
        f.write("# Files over 25 MB are not in the archive: `python -m monai.bundle download_large_files "
                "--bundle_path .`\n# fetches them and checks their sha256 (docs/model_zoo.md of cxrfx).\n")
        yaml.safe_dump({"large_files": entries}, f, sort_keys=False)
    return moved


def _walk(root: str) -> list[str]:
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        found += [os.path.relpath(os.path.join(folder, n), root).replace(os.sep, "/") for n in sorted(files)
                  if not n.endswith(".pyc")]
    return sorted(found)


def _write_zip(stage: str, name: str, target: str) -> list[str]:
    members = _walk(stage)
    partial = target + ".partial"
    try:
        with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for rel in members:
                info = zipfile.ZipInfo(f"{name}/{rel}", date_time=_ZIP_DATE)
                info.external_attr = 0o100644 << 16  # regular file, rw-r--r--
                info.compress_type = zipfile.ZIP_DEFLATED
                with open(os.path.join(stage, rel), "rb") as f:
                    zf.writestr(info, f.read())
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return members


def package_bundle(bundle_dir: str, out_dir: str, weights: str | None = None, schema: str | None = None,
                   overwrite: bool = False, max_file_bytes: int = MAX_FILE_BYTES, package: str = "cxrfx",
                   large_files_url: str | None = None, checks: bool = True,
                   weights_in_archive: bool = False) -> PackageResult:
    """Check ``bundle_dir`` and write ``out_dir/<zoo_name>_v<version>.zip`` (see module docstring).

    Args:
        weights: the trained ``model.pt`` (a state dict of ``network_def``); without it the archive has no
            weights and the checks use the network's initial state.
        schema: the metadata schema file (default: the copy shipped in ``cxrfx/data``).
        overwrite: replace an existing archive of the same name and version (never for a released version:
            a change needs a version bump and a changelog line).
        max_file_bytes: larger files go to ``large_files.yml`` (the zoo's limit is 25 MB) and, as
            ``<zoo_name>_v<version>_<file name>``, to ``<out>/<zoo_name>_v<version>_large_files/`` for upload.
        large_files_url: where those files will be uploaded (e.g. a GitHub release's download URL; default
            ``$CXRFX_LARGE_FILES_URL``); their entries get ``<large_files_url>/<upload name>``, else the bundle's
            own ``large_files.yml`` URL for that path, else a placeholder to replace before release.
        checks: False skips the network checks (for tests of the archive layout only).
        weights_in_archive: keep ``models/model.pt`` / ``model.ts`` inside the archive when they are at most
            ``max_file_bytes``. Default False, the Model Zoo's rule: weights are never committed (its pre-commit
            refuses files over 1 MB); ``large_files.yml`` lists them (path, url, hash_val, hash_type sha256) and
            ``monai.bundle download_large_files`` fetches and checks them.

    Raises:
        BundleCheckError: listing every failed check; nothing is written then.
    """
    started = time.time()
    bundle_dir = os.path.abspath(bundle_dir)
    if not os.path.isdir(bundle_dir):
        raise BundleCheckError(bundle_dir, ["not a folder"])
    meta_file, metadata = _read_metadata(bundle_dir)
    name, version = zoo_name(bundle_dir, metadata), metadata.get("version")
    problems = check_required_files(bundle_dir) + check_version(metadata) + check_data_format(metadata)
    problems += check_schema(meta_file, schema or DEFAULT_SCHEMA)
    if weights and not os.path.isfile(weights):
        problems.append(f"--weights {weights}: no such file")
    archive = os.path.join(os.path.abspath(out_dir), f"{name}_v{version}.zip")
    if os.path.exists(archive) and not overwrite:
        problems.append(f"{archive} exists: a released version is never rebuilt; bump version and add a changelog "
                        "line (or pass --overwrite for a build that was never released)")
    if not problems:
        plan = plan_vendoring(sorted(glob.glob(os.path.join(bundle_dir, "configs", "*.json"))), package=package)
        problems += check_pins(metadata, plan.external_imports, vendored=package)
    if problems:
        raise BundleCheckError(bundle_dir, problems)

    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"{name}-", dir=out_dir) as scratch:
        stage = os.path.join(scratch, name)
        modules = _stage(bundle_dir, stage, weights, package)
        report = {"problems": [], "seconds": {}}
        if checks:
            work = os.path.join(scratch, "work")
            os.makedirs(work)
            report = run_workflow_checks(stage, work, package=package, weights=bool(weights))
        if report["problems"]:
            raise BundleCheckError(bundle_dir, report["problems"])
        side = os.path.join(scratch, "large")
        base_url = large_files_url or os.environ.get("CXRFX_LARGE_FILES_URL") or None
        moved = _large_files(bundle_dir, stage, side, max_file_bytes, f"{name}_v{version}", base_url,
                             weights_in_archive)
        members = _write_zip(stage, name, archive)
        side_dir = None
        if moved:
            side_dir = os.path.join(os.path.abspath(out_dir), f"{name}_v{version}_large_files")
            shutil.rmtree(side_dir, ignore_errors=True)
            shutil.move(side, side_dir)
    zoo_test = None
    if os.path.basename(bundle_dir) in ZOO_TESTS:  # the submission's unit test, for the zoo's ci/unit_tests/
        zoo_test = write_zoo_test(bundle_dir, name, os.path.join(os.path.abspath(out_dir), f"{name}_v{version}_zoo_ci"))
    return PackageResult(archive=archive, name=name, version=version, size_bytes=os.path.getsize(archive),
                         files=members, large_files=moved, large_files_dir=side_dir, vendored_modules=modules,
                         check_seconds=report.get("seconds", {}), seconds=round(time.time() - started, 1),
                         zoo_unit_test=zoo_test)
