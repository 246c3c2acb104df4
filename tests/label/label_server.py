"""Helpers of the MONAI Label tests: HTTP without extra packages, servers in their own process group.

The label venv is built on first use (``cxrfx.label.env.ensure``: ~3 min, then cached under
``~/.cache/cxrfx/label-venv``). Servers run in their own process group and are stopped in teardown, with any
training child they started.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLUGINS = os.path.join(REPO, "plugins")


def apt_install(packages: list[str], what: str) -> None:
    """Install Debian packages a test needs (root, apt-get; ``apt-get update`` once if the first try fails), or
    skip the test with the reason when that is impossible here."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip(f"{what} is not installed and cannot be: not root or no apt-get "
                    f"(apt-get install -y {' '.join(packages)})")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-q", *packages]
    proc = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600)
        proc = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode:
        pytest.skip(f"{what} cannot be installed here: apt-get exit {proc.returncode}: {proc.stderr.strip()[-300:]}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, data: bytes | None = None, headers: dict | None = None, timeout: float = 300):
    """(status, body bytes) of one request; HTTP errors are returned, not raised."""
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def multipart(fields: dict[str, tuple[str, bytes, str]]) -> tuple[bytes, str]:
    """A multipart/form-data body: ``{name: (filename, content, content type)}``."""
    boundary = "cxrfx-test-boundary-7f3a"
    parts = []
    for name, (filename, content, ctype) in fields.items():
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"'
        head += f'; filename="{filename}"' if filename else ""
        parts.append(f"{head}\r\nContent-Type: {ctype}\r\n\r\n".encode() + content + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


class Server:
    """A process started in its own session; ``stop`` ends the whole group (training children included)."""

    def __init__(self, cmd: list[str], log: str, env: dict | None = None, cwd: str | None = None):
        self.log_path = log
        self._log = open(log, "w")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                     start_new_session=True)

    def wait_http(self, url: str, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    if r.status < 500:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(1)
        raise RuntimeError(f"{url} not up after {timeout} s:\n{self.tail()}")

    def tail(self, n: int = 40) -> str:
        with open(self.log_path, errors="replace") as f:
            return "".join(f.readlines()[-n:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        try:  # children that outlived the leader (a training run) are in the same group
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._log.close()


def start_label_server(tmp, label_python, label_env, studies: str, bundles: str, extra=(),
                       ready: str = "/info/") -> tuple[Server, str]:
    """Serve on a free port; up when ``ready`` answers (``/auth/`` with auth on: ``/info/`` then needs a token)."""
    port = free_port()
    cmd = [label_python, "-m", "cxrfx.label", "serve", "--studies", studies, "--app-dir", str(tmp / "app"),
           "--bundles", bundles, "--port", str(port), "--configs", "demo.json", *extra]
    server = Server(cmd, str(tmp / "server.log"), env=label_env)
    url = f"http://127.0.0.1:{port}"
    try:
        server.wait_http(url + ready, 240)
    except Exception:
        server.stop()
        raise
    return server, url


def read_json(body: bytes):
    return json.loads(body.decode())


def copy_images(studies: str, dest) -> str:
    """A module's own studies folder: the images only, so labels other modules saved stay out."""
    os.makedirs(dest)
    for f in sorted(os.listdir(studies)):
        if os.path.isfile(os.path.join(studies, f)) and f.endswith((".png", ".dcm")):
            shutil.copy2(os.path.join(studies, f), os.path.join(dest, f))
    return str(dest)


def file_hashes(top: str, relative_to: str) -> dict[str, str]:
    """sha256 of every file below ``top`` (lock files and MONAI Label's per-file metadata left out)."""
    out = {}
    for root, _, files in os.walk(top):
        for f in files:
            if f.endswith((".lock", ".datastore.json")):
                continue
            p = os.path.join(root, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, relative_to)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def print_table(title: str, rows: list[tuple[str, int, str]], width: int = 110) -> None:
    """The case -> status table a module collected (shown with ``pytest -s``)."""
    if rows:
        print(f"\n{title} (case -> status):")
        for case, status, detail in rows:
            print(f"  {status}  {case}: {detail[:width]}")
