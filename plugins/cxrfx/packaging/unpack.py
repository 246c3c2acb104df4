"""Safe unpacking of bundle archives: every entry is checked before anything is written.

Refused, with the archive and the entry named: absolute paths (``/x``, ``C:x``, ``\\\\server``), any ``..``
component, backslashes (a Windows separator that Python's zip reader keeps as a name character), entries
that resolve outside the target folder, symlinks and every other non-regular entry (the Unix mode in the zip
entry's external attributes), duplicate names, and more members or bytes than the limits (zip bombs). Only
regular files and folders are created, with default permissions. This is the one place our code unpacks an
archive; MONAI's own ``download`` has its own member check.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import stat
import zipfile

from cxrfx.errors import CXRFXError

__all__ = ["ArchiveError", "check_members", "unpack", "install_bundle"]

MAX_MEMBERS = 10_000
MAX_TOTAL_BYTES = 8 * 1024**3  # uncompressed; a bundle with weights over 25 MB keeps them out of the archive


class ArchiveError(CXRFXError, ValueError):
    """An archive is unsafe or malformed; names the archive, the entry and the problem."""

    def __init__(self, archive: str | os.PathLike, problem: str, entry: str | None = None):
        self.archive, self.entry, self.problem = os.fspath(archive), entry, problem
        where = f"{self.archive}: entry {entry!r}" if entry is not None else self.archive
        super().__init__(f"{where}: {problem}")


def _entry_problem(info: zipfile.ZipInfo) -> str | None:
    name = info.filename
    mode = info.external_attr >> 16
    kind = stat.S_IFMT(mode)
    if kind == stat.S_IFLNK:
        return "is a symbolic link; bundle archives hold only regular files"
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        return f"is not a regular file (mode {oct(mode)})"
    if not name or "\x00" in name:
        return "has an empty or NUL-containing name"
    if "\\" in name:
        return "contains a backslash; use / as separator"
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return "is an absolute path"
    if ".." in name.split("/"):
        return "contains '..' and would escape the target folder"
    return None


def check_members(archive: str | os.PathLike, dest: str | os.PathLike,
                  max_members: int = MAX_MEMBERS, max_total_bytes: int = MAX_TOTAL_BYTES) -> list[zipfile.ZipInfo]:
    """Every entry of ``archive`` checked against extraction into ``dest``; raises :class:`ArchiveError`."""
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ArchiveError(archive, f"not a readable zip archive ({exc})") from None
    with zf:
        members = zf.infolist()
    if len(members) > max_members:
        raise ArchiveError(archive, f"{len(members)} entries, more than the limit of {max_members}")
    root = os.path.realpath(dest)
    seen, total = set(), 0
    for info in members:
        problem = _entry_problem(info)
        if problem is None:
            target = os.path.realpath(os.path.join(root, *posixpath.normpath(info.filename).split("/")))
            if os.path.commonpath([root, target]) != root:
                problem = "resolves outside the target folder"
            elif info.filename.rstrip("/") in seen:
                problem = "appears twice"
        if problem:
            raise ArchiveError(archive, problem, entry=info.filename)
        seen.add(info.filename.rstrip("/"))
        total += info.file_size
    if total > max_total_bytes:
        raise ArchiveError(archive, f"{total} bytes uncompressed, more than the limit of {max_total_bytes}")
    return members


def unpack(archive: str | os.PathLike, dest: str | os.PathLike, **limits) -> list[str]:
    """Extract ``archive`` into ``dest`` after :func:`check_members`; returns the written paths (relative)."""
    members = check_members(archive, dest, **limits)
    os.makedirs(dest, exist_ok=True)
    root = os.path.realpath(dest)
    written = []
    with zipfile.ZipFile(archive) as zf:
        for info in members:
            target = os.path.join(root, *posixpath.normpath(info.filename).split("/"))
            if info.is_dir():
                os.makedirs(target, exist_ok=True)
                continue
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if os.path.islink(target) or os.path.islink(os.path.dirname(target)):
                raise ArchiveError(archive, f"target {target} is a symbolic link", entry=info.filename)
            with zf.open(info) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
            written.append(posixpath.normpath(info.filename))
    return written


def install_bundle(archive: str | os.PathLike, dest: str | os.PathLike, overwrite: bool = False) -> str:
    """Unpack a zoo archive (one top folder ``<zoo_name>/``) into ``dest``; returns ``dest/<zoo_name>``.

    Refuses archives with files outside a single top folder, and an existing non-empty target unless
    ``overwrite`` (then the old folder is removed first).
    """
    members = check_members(archive, dest)
    tops = {m.filename.split("/")[0] for m in members}
    if len(tops) != 1 or any("/" not in m.filename for m in members if not m.is_dir()):
        raise ArchiveError(archive, f"expected one top folder <zoo_name>/, found {sorted(tops)[:5]}")
    target = os.path.join(os.fspath(dest), tops.pop())
    if os.path.isdir(target) and os.listdir(target):
        if not overwrite:
            raise ArchiveError(archive, f"{target} exists and is not empty (pass overwrite to replace it)")
        shutil.rmtree(target)
    unpack(archive, dest)
    return target
