"""The Model Zoo's JSON style (issue 18): its pre-commit runs ``end-of-file-fixer`` and ``pretty-format-json
--autofix --no-sort-keys --indent=4`` over every file of a submission, so each JSON file of our bundles, and each
one the packager writes into an archive, must be byte-equal to that hook's output (which ends with a newline).
Its code-format check runs isort and black (settings of its setup.cfg / pyproject.toml) over the submission: the
packager formats the vendored ``scripts/`` with them (``cxrfx.packaging.style``), checked here.

Fast: reads the bundles and packages one without the network checks (``checks=False``).
"""

from __future__ import annotations

import ast
import json
import zipfile
from pathlib import Path

import pytest

from cxrfx.packaging import package_bundle
from cxrfx.packaging.style import format_python_source, join_adjacent_strings, style_tools
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


@pytest.fixture(scope="module")
def foundation_x_archive(tmp_path_factory):
    """foundation_x packaged without the network checks: the most vendored code of the three bundles."""
    return package_bundle(str(BUNDLES / "foundation_x"), str(tmp_path_factory.mktemp("fx")), checks=False)


def test_the_package_json_data_files_are_zoo_pretty_in_source():
    path = ROOT / "plugins" / "cxrfx" / "data" / "datalist.schema.json"  # vendored into every archive
    raw = path.read_text(encoding="utf-8")
    assert raw == hook_format(raw)


def test_every_json_file_the_packager_writes_is_zoo_pretty(foundation_x_archive):
    # foundation_x: its configs get the "$import scripts" bootstrap rewritten by the packager, and the vendored
    # code carries data files (datalist.schema.json) that are copied from the package
    result = foundation_x_archive
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


# ---------------------------------------------------------------- Python: the zoo's isort + black on scripts/


def test_join_adjacent_strings_keeps_the_ast():
    source = ('x = f("a " f"{b} {{c}}" "d{e}", \'p\' "q")\n'
              'y = ("one "\n     "two")\n'
              'z = b"x" b"y"\n'
              'w = "a" "b" "c"\n'
              'v = r"\\d" "x"\n')
    joined = join_adjacent_strings(source)
    assert joined == ('x = f(f"a {b} {{c}}d{{e}}", \'p\' "q")\n'  # mixed quote styles are left alone
                      'y = ("one "\n     "two")\n'  # on separate lines: no B914, left alone
                      'z = b"x" b"y"\n'  # bytes are left alone
                      'w = "abc"\n'
                      'v = r"\\d" "x"\n')  # raw strings are left alone
    assert ast.dump(ast.parse(joined)) == ast.dump(ast.parse(source))


@pytest.mark.skipif(not style_tools(), reason="black / isort not installed")
def test_format_python_source_uses_the_zoos_settings():
    source = ("import torch\nimport os\nfrom cxrfx.io import load_cxr\nimport numpy as np\n\n"
              "def f(a,b,):\n    return {'k': [a,b,]}\n")
    formatted = format_python_source(source)
    # isort profile black, cxrfx third-party as seen from the zoo's root; black: magic trailing commas skipped
    assert formatted == ("import os\n\nimport numpy as np\nimport torch\nfrom cxrfx.io import load_cxr\n\n\n"
                         "def f(a, b):\n    return {\"k\": [a, b]}\n")
    assert format_python_source(formatted) == formatted


@pytest.mark.skipif(not style_tools(), reason="black / isort not installed")
def test_the_vendored_python_is_formatted_as_the_zoo_checks_it(foundation_x_archive):
    with zipfile.ZipFile(foundation_x_archive.archive) as zf:
        members = {n: zf.read(n).decode("utf-8") for n in zf.namelist() if n.endswith(".py")}
    assert len(members) > 50
    # black --check / isort --check with the zoo's settings would leave every file unchanged
    unformatted = [n for n, text in members.items() if format_python_source(text, n) != text]
    assert unformatted == []
