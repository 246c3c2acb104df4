"""Pre-flight checks of a bundle before it becomes a Model Zoo archive (REFERENCE §7).

Metadata checks run here, in the packaging process: the schema (offline, MONAI's ``verify_metadata`` against
a local copy), the version/changelog rule, the ``image`` -> ``pred`` data format, the zoo name, and the
package pins. The checks that build the network run in a separate Python process rooted at the staged bundle
(:mod:`cxrfx.packaging.checks_runner`): there the configs import the vendored ``scripts/cxrfx`` exactly as a
user's run would, which an in-process check (with our ``cxrfx`` already imported) could not show.

Pins are "real and installable" in the sense the zoo's CI needs: exact versions (``==``-style, PEP 440) that
are the versions installed in the environment running these checks, so the checks vouch for exactly what
the metadata promises; the fresh-environment test then installs them from the package index.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from cxrfx.errors import CXRFXError

__all__ = ["BundleCheckError", "DEFAULT_SCHEMA", "ZOO_NAMES", "MAX_FILE_BYTES", "REQUIRED_FILES", "zoo_name",
           "check_schema", "check_version", "check_data_format", "check_pins", "check_required_files",
           "run_workflow_checks"]

DEFAULT_SCHEMA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data",
                              "meta_schema_20240725.json")
# Zoo folder names say modality and task; a bundle's metadata may set its own with "zoo_name".
ZOO_NAMES = {"foundation_x": "cxr_foundation_x_pretraining", "finetune_seg": "cxr_organ_segmentation",
             "finetune_det": "cxr_lesion_detection"}
MAX_FILE_BYTES = 25 * 1024 * 1024  # the zoo refuses larger files in a pull request: they go to large_files.yml
_ZOO_NAME = re.compile(r"^[a-z0-9]+(?:_[a-z0-9]+)+$")
_SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)$")
_BASE_PACKAGES = {"monai": "monai_version", "torch": "pytorch_version", "numpy": "numpy_version"}
REQUIRED_FILES = ("LICENSE", "configs/metadata.json", "configs/inference.json", "docs/README.md",
                  "docs/data_license.txt")


class BundleCheckError(CXRFXError, ValueError):
    """A bundle failed the pre-flight checks; ``problems`` holds one message per failed check."""

    def __init__(self, bundle: str | os.PathLike, problems: Sequence[str]):
        self.bundle = os.fspath(bundle)
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{self.bundle}: not packaged, {len(self.problems)} check(s) failed:\n{lines}")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def zoo_name(bundle_dir: str, metadata: Mapping[str, Any]) -> str:
    """The archive's name: metadata ``zoo_name``, else :data:`ZOO_NAMES` by folder name; snake_case, 2+ words."""
    folder = os.path.basename(os.path.normpath(bundle_dir))
    name = metadata.get("zoo_name") or ZOO_NAMES.get(folder)
    if not name:
        raise BundleCheckError(bundle_dir, [f"no zoo name: add \"zoo_name\" (e.g. \"cxr_<task>\") to "
                                            f"configs/metadata.json; known folders: {sorted(ZOO_NAMES)}"])
    if not isinstance(name, str) or not _ZOO_NAME.match(name):
        raise BundleCheckError(bundle_dir, [f"zoo_name {name!r} must be snake_case words saying modality and task, "
                                            "e.g. cxr_organ_segmentation"])
    return name


def check_schema(meta_file: str, schema: str) -> list[str]:
    """MONAI's ``verify_metadata`` against the local schema file (no download when the file exists)."""
    if not os.path.isfile(schema):
        return [f"{schema}: metadata schema not found (pass --schema PATH to a copy of meta_schema_20240725.json)"]
    import jsonschema
    from monai.bundle import verify_metadata

    try:
        with warnings.catch_warnings():  # "no hash value provided": the schema is our own shipped copy
            warnings.simplefilter("ignore", UserWarning)
            verify_metadata(meta_file=meta_file, filepath=schema)
    except (jsonschema.ValidationError, ValueError) as exc:
        cause = exc if isinstance(exc, jsonschema.ValidationError) else exc.__cause__
        if not isinstance(cause, jsonschema.ValidationError):
            return [f"{meta_file}: {exc}"]
        where = "/".join(str(p) for p in cause.absolute_path) or "(top level)"
        return [f"{meta_file}: schema {os.path.basename(schema)}: at {where}: {cause.message}"]
    return []


def check_version(metadata: Mapping[str, Any]) -> list[str]:
    """``version`` is x.y.z and the newest (first) key of ``changelog``: every change bumps it."""
    version, changelog = metadata.get("version"), metadata.get("changelog")
    if not isinstance(version, str) or not _SEMVER.match(version):
        return [f"version {version!r} is not semantic x.y.z"]
    if not isinstance(changelog, Mapping) or not changelog:
        return [f"changelog is missing: add {{\"{version}\": \"<one line>\"}} (newest first)"]
    if version not in changelog:
        return [f"version {version} is not a key of changelog (keys: {list(changelog)}): every release bumps "
                "version and describes it in changelog"]
    if next(iter(changelog)) != version:
        return [f"changelog must list the newest version first: {version} is not its first key "
                f"({next(iter(changelog))})"]
    problems = [f"changelog key {k!r} is not semantic x.y.z" for k in changelog if not _SEMVER.match(str(k))]
    return problems + [f"changelog[{k!r}] must be a one-line string" for k, v in changelog.items()
                       if not isinstance(v, str) or "\n" in v or not v.strip()]


def check_data_format(metadata: Mapping[str, Any]) -> list[str]:
    """The network's first input is ``image`` and first output ``pred`` (verify_net_in_out and MONAI Label)."""
    fmt = metadata.get("network_data_format") or {}
    inputs, outputs = fmt.get("inputs") or {}, fmt.get("outputs") or {}
    problems = []
    if next(iter(inputs), None) != "image":
        problems.append(f"network_data_format.inputs must start with \"image\" (found {list(inputs)})")
    if next(iter(outputs), None) != "pred":
        problems.append(f"network_data_format.outputs must start with \"pred\" (found {list(outputs)})")
    return problems


def _installed(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_pins(metadata: Mapping[str, Any], imports: Mapping[str, Sequence[str]], vendored: str = "cxrfx") -> list[str]:
    """Pins are exact, tested here, and cover every third-party package the vendored code imports.

    Args:
        imports: top-level module name -> vendored files importing it (not counting optional imports).
        vendored: the package shipped in ``scripts/`` (must not be pinned: it is not on the package index).
    """
    from packaging.version import InvalidVersion, Version

    problems = []
    pins = metadata.get("required_packages_version")
    if not isinstance(pins, Mapping):
        return ["required_packages_version must be an object {package: exact version}"]
    tested = dict(pins)
    for dist, key in _BASE_PACKAGES.items():
        tested[dist] = metadata.get(key)
    for name, pin in tested.items():
        label = f"required_packages_version[{name!r}]" if name in pins else _BASE_PACKAGES.get(name, name)
        if _canonical(name) == _canonical(vendored):
            problems.append(f"{label}: {vendored} is vendored into scripts/ and is not on the package index; remove it")
            continue
        try:
            if not isinstance(pin, str) or str(Version(pin)) != pin or Version(pin).local:
                raise InvalidVersion(pin)
        except InvalidVersion:
            problems.append(f"{label}: {pin!r} is not an exact public version such as \"1.2.3\" (no ranges, no +local)")
            continue
        have = _installed(name)
        if have is None:
            problems.append(f"{label}: {name} is not installed here, so the checks cannot vouch for {name}=={pin}")
        elif Version(Version(have).public) != Version(pin):
            problems.append(f"{label}: pins {name}=={pin} but the checks run with {name} {have}: "
                            "pin the tested version")
    by_module = importlib.metadata.packages_distributions()
    pinned = {_canonical(n) for n in tested}
    for module, files in imports.items():
        dists = by_module.get(module)
        if not dists:
            problems.append(f"vendored code imports {module!r} ({files[0]}), which no installed distribution provides")
        elif not pinned & {_canonical(d) for d in dists}:
            problems.append(f"vendored code imports {module!r} ({files[0]}) but required_packages_version pins none of "
                            f"{sorted(set(dists))}: add {dists[0]}=={_installed(dists[0])}")
    return problems


def check_required_files(stage_dir: str) -> list[str]:
    """Files every zoo bundle of ours carries (LICENSE, metadata, inference config, README, data licence)."""
    return [f"{rel} is missing" for rel in REQUIRED_FILES if not os.path.isfile(os.path.join(stage_dir, rel))]


def run_workflow_checks(stage_dir: str, work_dir: str, package: str = "cxrfx", weights: bool = False,
                        timeout: float = 1800) -> dict[str, Any]:
    """verify_net_in_out, check_properties of each workflow, ckpt_export: in a process rooted at the bundle.

    Returns the runner's report (``problems``, ``package_file``: where the configs' ``cxrfx`` came from,
    ``seconds`` per check). A problem is added when that file is not the vendored copy under ``scripts/``.
    """
    runner = os.path.join(os.path.dirname(os.path.abspath(__file__)), "checks_runner.py")
    request = {"bundle": os.path.abspath(stage_dir), "work_dir": os.path.abspath(work_dir), "package": package,
               "weights": weights}
    # nothing but the bundle decides imports; no __pycache__ folders in what becomes the archive
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run([sys.executable, runner, json.dumps(request)], capture_output=True, text=True,
                          timeout=timeout, cwd=stage_dir, env=env)
    marker = "CXRFX-CHECKS "
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(marker)]
    if proc.returncode != 0 or not lines:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
        return {"problems": [f"the check process failed (exit {proc.returncode}):\n      " + "\n      ".join(tail)],
                "log": proc.stdout + proc.stderr}
    report = json.loads(lines[-1][len(marker):])
    report["log"] = proc.stdout + proc.stderr
    scripts = os.path.join(os.path.abspath(stage_dir), "scripts", package) + os.sep
    found = report.get("package_file")
    if found and not os.path.abspath(found).startswith(scripts):
        report["problems"].append(f"the configs imported {package} from {found}, not from the archive's "
                                  f"scripts/{package}: the bootstrap import is missing or came too late")
    return report
