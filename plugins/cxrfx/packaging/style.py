"""The Model Zoo's code style, applied to the vendored ``scripts/`` of an archive.

The zoo's CI (``runtests.sh --codeformat``, settings in its ``setup.cfg`` / ``pyproject.toml``) checks every file
under ``models/`` with isort (``profile = black``, ``line_length = 120``, ``known_first_party = models``) and black
(``line-length = 120``, ``target-version = py37 py38 py39``, run with ``--skip-magic-trailing-comma``), then
flake8. The packager formats the vendored copy with exactly those settings (isort first, then black, as the zoo's
``--autofix``) so that a submission passes the first two unchanged; the ``cxrfx`` source itself keeps its own
layout (reformatting it is a separate, formatting-only change).

Run from the zoo's root, isort finds no ``cxrfx`` folder in its source paths, so ``cxrfx`` imports count as
third-party there: :func:`isort_config` reproduces that (no source paths), or the copy would be sorted
differently from what the zoo checks. black runs in its safe mode (the reformatted module's AST is checked
equal to the original), so formatting never changes what the code does.

black and isort are optional (test extras, pinned in ``constraints.txt``): without them
:func:`format_python_tree` reports that it formatted nothing, and the archive's code is the source as it is.
"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import os
import re
import tokenize
from dataclasses import dataclass, field

__all__ = ["ZOO_LINE_LENGTH", "ZOO_BLACK_TARGETS", "ZOO_FLAKE8", "StyleReport", "style_tools", "isort_config",
           "black_mode", "join_adjacent_strings", "format_python_source", "format_python_tree", "default_cache"]

ZOO_LINE_LENGTH = 120
ZOO_BLACK_TARGETS = ("py37", "py38", "py39")
#: the zoo's setup.cfg [flake8] section (model-zoo @ dfae206), for ``flake8 --config``
ZOO_FLAKE8 = """[flake8]
select = B,C,E,F,N,P,T4,W,B9
max_line_length = 120
ignore =
    E203
    E501
    E741
    W503
    W504
    C408
    N812
    B023
    B905
    B028
    B907
    C419
per_file_ignores = __init__.py: F401, __main__.py: F401
exclude = *.pyi,.git,.eggs,monai/_version.py,versioneer.py,venv,.venv,_version.py
"""


@dataclass
class StyleReport:
    """What :func:`format_python_tree` did: ``tools`` the versions used (empty: nothing installed)."""

    tools: dict[str, str] = field(default_factory=dict)
    changed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)

    @property
    def applied(self) -> bool:
        return bool(self.tools)


def style_tools() -> dict[str, str]:
    """``{"black": version, "isort": version}`` when both import, else ``{}``."""
    try:
        import black
        import isort
    except ImportError:
        return {}
    return {"black": black.__version__, "isort": isort.__version__}


def isort_config():
    """isort's settings as the zoo's ``setup.cfg`` gives them, seen from the zoo's root (no ``cxrfx`` source
    path, so it is a third-party import there)."""
    import isort

    return isort.Config(profile="black", line_length=ZOO_LINE_LENGTH, known_first_party=frozenset({"models"}),
                        src_paths=(), settings_path=None)


def black_mode():
    """black's settings: the zoo's ``pyproject.toml`` plus the ``--skip-magic-trailing-comma`` its CI passes."""
    import black

    targets = {black.TargetVersion[v.upper()] for v in ZOO_BLACK_TARGETS}
    return black.Mode(target_versions=targets, line_length=ZOO_LINE_LENGTH, magic_trailing_comma=False)


def _string_atoms(source: str) -> list[tuple[tuple[int, int], tuple[int, int], bool]]:
    """(start, end, followed_by_string) of every string literal token (an f-string is one atom on any Python:
    3.12+ tokenizes it as FSTRING_START ... FSTRING_END); ``followed_by_string``: the next token is a string."""
    fstring_start = getattr(tokenize, "FSTRING_START", None)
    fstring_end = getattr(tokenize, "FSTRING_END", None)
    atoms, depth, start = [], 0, None
    kinds = []  # token kind per atom boundary, to see which atoms are adjacent in the token stream
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if fstring_start is not None and tok.type == fstring_start:
            depth += 1
            if depth == 1:
                start = tok.start
            continue
        if depth:
            if tok.type == fstring_end:
                depth -= 1
                if depth == 0:
                    atoms.append([start, tok.end])
                    kinds.append("str")
            continue
        if tok.type == tokenize.STRING:
            atoms.append([tok.start, tok.end])
            kinds.append("str")
        elif tok.type not in (tokenize.INDENT, tokenize.DEDENT):
            kinds.append("other")
            atoms.append(None)
    result = []
    for i, atom in enumerate(atoms):
        if atom is not None:
            adjacent = i + 1 < len(atoms) and atoms[i + 1] is not None
            result.append((tuple(atom[0]), tuple(atom[1]), adjacent))
    return result


_PREFIX = re.compile(r"^([A-Za-z]*)('|\")")


def _merge_pair(first: str, second: str) -> str | None:
    """``"a" "b"`` -> ``"ab"`` (and with f-strings), or None when the two cannot simply be joined."""
    parts = []
    for text in (first, second):
        m = _PREFIX.match(text)
        if m is None or m.group(1).lower() not in ("", "f") or text[m.end():m.end() + 2] == m.group(2) * 2:
            return None  # bytes, raw, unicode-prefixed or triple-quoted: leave them
        parts.append((m.group(1).lower(), m.group(2), text[m.end():-1]))
    if parts[0][1] != parts[1][1]:
        return None
    prefix = "f" if any(p == "f" for p, _, _ in parts) else ""
    bodies = []
    for p, _, body in parts:
        if prefix == "f" and p == "":
            if "\\N{" in body:
                return None
            body = body.replace("{", "{{").replace("}", "}}")
        bodies.append(body)
    return f"{prefix}{parts[0][1]}{bodies[0]}{bodies[1]}{parts[0][1]}"


def join_adjacent_strings(source: str) -> str:
    """Join implicitly concatenated string literals that stand on one line (``"a " "b"`` -> ``"a b"``).

    black puts the pieces of a concatenation that fits in a line on one line, which flake8-bugbear's B914 (the
    zoo selects B9) then reports; Python joins such pieces when it parses, so the module's AST is unchanged."""
    while True:
        lines = source.splitlines(keepends=True)
        offsets = [0]
        for line in lines:
            offsets.append(offsets[-1] + len(line))

        def at(pos):
            return offsets[pos[0] - 1] + pos[1]

        atoms = _string_atoms(source)
        edits = []
        i = 0
        while i < len(atoms) - 1:
            (s1, e1, adjacent), (s2, e2, _) = atoms[i], atoms[i + 1]
            if adjacent and s1[0] == e1[0] == s2[0] == e2[0]:
                merged = _merge_pair(source[at(s1):at(e1)], source[at(s2):at(e2)])
                if merged is not None:
                    edits.append((at(s1), at(e2), merged))
                    i += 2
                    continue
            i += 1
        if not edits:
            return source
        for start, end, text in reversed(edits):
            source = source[:start] + text + source[end:]


def format_python_source(source: str, path: str = "<string>") -> str:
    """``source`` after isort then black with the zoo's settings (black's safe mode: same AST, stable), then
    :func:`join_adjacent_strings` and black again where that joined anything (the AST checked unchanged)."""
    import black
    import isort

    def run_black(text: str) -> str:
        try:
            return black.format_file_contents(text, fast=False, mode=black_mode())
        except black.NothingChanged:
            return text
        except Exception as exc:  # black.InvalidInput, or the safety check: name the file
            raise ValueError(f"black cannot format {path}: {exc}") from exc

    formatted = run_black(isort.code(source, config=isort_config(), file_path=None))
    joined = join_adjacent_strings(formatted)
    if joined == formatted:
        return formatted
    if ast.dump(ast.parse(joined)) != ast.dump(ast.parse(formatted)):
        raise ValueError(f"joining string literals would change {path}")  # never expected: a guard
    return run_black(joined)


_STYLE_VERSION = "1"  # bump when the formatting steps change: the cache keys include it


def _cached_format(source: str, rel: str, tools: dict[str, str], cache: str | None) -> str:
    """:func:`format_python_source`, remembered by content in ``cache`` (black's safe mode costs ~1 s a file)."""
    if cache is None:
        return format_python_source(source, rel)
    key = hashlib.sha256(json.dumps([_STYLE_VERSION, tools, source]).encode()).hexdigest()
    path = os.path.join(cache, key[:2], key + ".py")
    if os.path.isfile(path):
        with open(path, encoding="utf-8", newline="") as f:
            return f.read()
    formatted = format_python_source(source, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    partial = f"{path}.{os.getpid()}.partial"
    with open(partial, "w", encoding="utf-8", newline="\n") as f:
        f.write(formatted)
    os.replace(partial, path)  # atomic: parallel packagers never read half a file
    return formatted


def default_cache() -> str:
    """``$CXRFX_CACHE/zoo-style`` (default ``~/.cache/cxrfx/zoo-style``)."""
    from cxrfx.data.phantom.source import cache_dir

    return os.path.join(cache_dir(), "zoo-style")


def format_python_tree(root: str, cache: str | None = "default") -> StyleReport:
    """Format every ``.py`` file under ``root`` in place (see the module docstring); a no-op without the tools.

    ``cache``: a folder remembering formatted sources by content (``"default"``: :func:`default_cache`; None:
    none)."""
    report = StyleReport(tools=style_tools())
    if not report.applied:
        return report
    cache = default_cache() if cache == "default" else cache
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            with open(path, encoding="utf-8", newline="") as f:
                source = f.read()
            formatted = _cached_format(source, rel, report.tools, cache)
            if formatted == source:
                report.unchanged.append(rel)
                continue
            with open(path, "w", encoding="utf-8", newline="\n") as f:
                f.write(formatted)
            report.changed.append(rel)
    return report
