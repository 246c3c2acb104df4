"""The Model Zoo's JSON style (issue 18): its pre-commit runs ``end-of-file-fixer`` and ``pretty-format-json
--autofix --no-sort-keys --indent=4`` over every file of a submission, so each JSON file of our bundles, and each
one the packager writes into an archive, must be byte-equal to that hook's output (which ends with a newline).

Fast: reads the bundles and packages one without the network checks (``checks=False``).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from cxrfx.packaging import package_bundle
from cxrfx.packaging.vendor import format_json_file, zoo_json

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = ROOT / "bundles"
SHIPPED = ("LICENSE", "large_files.yml", "configs", "docs")  # what the packager copies from a bundle folder


def hook_format(contents: str) -> str:
    """pre-commit-hooks' ``pretty_format_json._get_pretty_format`` with the zoo's arguments (no sorting, no
    top keys, indent 4, ensure_ascii): what its ``--autofix`` writes."""
    return json.dumps(json.loads(contents, object_pairs_hook=dict), indent=4, ensure_ascii=True,
                      separators=(",", ": ")) + "\n"


def _shipped_files() -> list[Path]:
    """The files of each bundle that go into its archive (not models/, data/, eval/ or other run outputs)."""
    return sorted(p for top in BUNDLES.glob("*/*") for p in ([top] if top.is_file() else top.rglob("*"))
                  if p.is_file() and p.relative_to(BUNDLES).parts[1] in SHIPPED)


def _bundle_json_files() -> list[Path]:
    return [p for p in _shipped_files() if p.suffix == ".json"]


def test_there_are_bundle_json_files_to_check():
    files = {str(p.relative_to(BUNDLES)) for p in _bundle_json_files()}
    assert {"foundation_x/configs/metadata.json", "finetune_seg/configs/train.json",
            "finetune_det/configs/inference.json"} <= files


@pytest.mark.parametrize("path", _bundle_json_files(), ids=lambda p: str(p.relative_to(BUNDLES)))
def test_every_bundle_json_file_is_zoo_pretty_with_a_final_newline(path):
    raw = path.read_bytes()
    assert raw.endswith(b"\n") and not raw.endswith(b"\n\n"), f"{path}: end-of-file-fixer would change it"
    assert b"\r" not in raw, f"{path}: CR line endings"
    assert raw.decode("utf-8") == hook_format(raw.decode("utf-8")), (
        f"{path} is not as the zoo's pretty-format-json hook writes it: run "
        f"`python -c 'from cxrfx.packaging.vendor import format_json_file as f; f(\"{path}\")'`")


def test_zoo_json_is_the_hooks_format():
    obj = {"z": 1, "a": [1, {"b": None}], "empty": {}, "none": [], "text": "µm – ü", "f": 0.5, "t": True}
    expected = ('{\n    "z": 1,\n    "a": [\n        1,\n        {\n            "b": null\n        }\n    ],\n'
                '    "empty": {},\n    "none": [],\n    "text": "\\u00b5m \\u2013 \\u00fc",\n    "f": 0.5,\n'
                '    "t": true\n}\n')
    assert zoo_json(obj) == expected  # keys unsorted, 4 spaces, ASCII escapes, one final newline
    assert hook_format(json.dumps(obj)) == expected


def test_format_json_file_autofixes_as_the_hook(tmp_path):
    path = tmp_path / "x.json"
    path.write_bytes(b'{"b": 1,\r\n "a": ["\xc3\xa9"]}\n\n\n')
    assert format_json_file(str(path))
    assert path.read_text(encoding="utf-8") == '{\n    "b": 1,\n    "a": [\n        "\\u00e9"\n    ]\n}\n'
    assert not format_json_file(str(path))  # idempotent: already pretty, bytes untouched


def test_every_json_file_the_packager_writes_is_zoo_pretty(tmp_path):
    # foundation_x: its configs get the "$import scripts" bootstrap rewritten by the packager, and the vendored
    # code carries data files (datalist.schema.json) that are copied from the package
    result = package_bundle(str(BUNDLES / "foundation_x"), str(tmp_path), checks=False)
    with zipfile.ZipFile(result.archive) as zf:
        members = {n: zf.read(n).decode("utf-8") for n in zf.namelist() if n.endswith(".json")}
    assert f"{result.name}/configs/inference.json" in members
    assert f"{result.name}/scripts/cxrfx/data/datalist.schema.json" in members
    assert json.loads(members[f"{result.name}/configs/inference.json"])["imports"][0] == "$import scripts"
    not_pretty = [n for n, text in members.items() if text != hook_format(text)]
    assert not_pretty == []


def _bundle_text_files() -> list[Path]:
    return [p for p in _shipped_files() if p.suffix in {".json", ".md", ".yml", ".yaml", ".conf", ".txt", ""}]


def test_every_bundle_text_file_passes_end_of_file_fixer_and_trailing_whitespace():
    # the zoo's other whitespace hooks, over every shipped text file of the bundles (configs, docs, LICENSE, ...)
    files = _bundle_text_files()
    assert any(p.name == "LICENSE" for p in files) and any(p.suffix == ".md" for p in files)
    bad = [f"{p.relative_to(BUNDLES)}: {why}" for p in files for raw in [p.read_bytes()]
           for why, failed in [("no single final newline", raw and (not raw.endswith(b"\n") or raw.endswith(b"\n\n"))),
                               ("trailing whitespace", any(line != line.rstrip() for line in raw.splitlines()))]
           if failed]
    assert bad == []
