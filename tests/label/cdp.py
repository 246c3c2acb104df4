"""Headless Chromium driven over the DevTools protocol, without a websocket package.

``--remote-debugging-pipe`` speaks CDP over file descriptors 3 (commands in) and 4 (replies and events out), one
JSON message per NUL-terminated chunk: the standard library is enough, and no debugging port is opened. Every
wait has a timeout; the browser runs in its own process group and ``close`` kills the group.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import signal
import subprocess
import threading
import time


class CDPError(RuntimeError):
    pass


class Chromium:
    """One headless browser; ``page`` opens a tab and returns its session."""

    def __init__(self, binary: str, profile: str, log: str, size: tuple[int, int] = (1280, 800)):
        to_browser, self._write = os.pipe()
        self._read, from_browser = os.pipe()

        def pipes():  # in the child: the two ends on the descriptors Chromium expects, kept open across exec
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser, from_browser)]  # a pipe may be 3 or 4
            for fd, target in zip(high, (3, 4)):
                os.dup2(fd, target, inheritable=True)

        # SwiftShader: WebGL (cornerstone3D renders with it) without a GPU; the flag is required since Chromium 137
        cmd = [binary, "--headless=new", "--remote-debugging-pipe", f"--user-data-dir={profile}", "--no-sandbox",
               "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--mute-audio",
               "--use-angle=swiftshader", "--enable-unsafe-swiftshader", f"--window-size={size[0]},{size[1]}",
               "about:blank"]
        self._log = open(log, "w")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                     preexec_fn=pipes, start_new_session=True, close_fds=False)
        os.close(to_browser)
        os.close(from_browser)
        self._next = 0
        self._lock = threading.Lock()
        self._replies: dict[int, dict] = {}
        self._arrived = threading.Condition()
        self.events: list[dict] = []
        threading.Thread(target=self._reader, daemon=True).start()

    def _reader(self) -> None:
        buf = b""
        while True:
            try:
                chunk = os.read(self._read, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                with self._arrived:
                    self._replies[-1] = {"error": {"message": "the browser closed its pipe"}}
                    self._arrived.notify_all()
                return
            buf += chunk
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                msg = json.loads(raw)
                with self._arrived:
                    if "id" in msg:
                        self._replies[msg["id"]] = msg
                    else:
                        self.events.append(msg)
                    self._arrived.notify_all()

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30) -> dict:
        with self._lock:
            self._next += 1
            ident = self._next
            msg = {"id": ident, "method": method, "params": params or {}}
            if session:
                msg["sessionId"] = session
            os.write(self._write, json.dumps(msg).encode() + b"\0")
        deadline = time.time() + timeout
        with self._arrived:
            while ident not in self._replies:
                if -1 in self._replies:
                    raise CDPError(f"{method}: the browser closed its pipe (exit {self.proc.poll()})")
                left = deadline - time.time()
                if left <= 0:
                    raise CDPError(f"{method}: no reply in {timeout} s")
                self._arrived.wait(left)
            reply = self._replies.pop(ident)
        if "error" in reply:
            raise CDPError(f"{method}: {reply['error'].get('message')}")
        return reply.get("result", {})

    def page(self) -> Page:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Network", "Log"):
            self.send(f"{domain}.enable", session=session)
        return Page(self, session)

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self.send("Browser.close", timeout=5)
                self.proc.wait(10)
        except (CDPError, OSError, subprocess.TimeoutExpired):
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        for fd in (self._read, self._write):
            try:
                os.close(fd)
            except OSError:
                pass
        self._log.close()


class Page:
    """A tab: navigate, evaluate JavaScript (promises awaited), screenshots, and its console / network events."""

    def __init__(self, browser: Chromium, session: str):
        self.browser, self.session = browser, session

    def send(self, method: str, params: dict | None = None, timeout: float = 30) -> dict:
        return self.browser.send(method, params, self.session, timeout)

    def navigate(self, url: str) -> None:
        reply = self.send("Page.navigate", {"url": url})
        if reply.get("errorText"):
            raise CDPError(f"navigate {url}: {reply['errorText']}")

    def eval(self, expression: str, timeout: float = 60):
        reply = self.send("Runtime.evaluate", {"expression": expression, "awaitPromise": True, "returnByValue": True,
                                               "timeout": int(timeout * 1000)}, timeout=timeout + 5)
        if "exceptionDetails" in reply:
            details = reply["exceptionDetails"]
            raise CDPError(f"JavaScript: {details.get('exception', {}).get('description') or details.get('text')}")
        return reply["result"].get("value")

    def wait_for(self, expression: str, timeout: float, what: str, poll: float = 0.5):
        """The first truthy value of ``expression``; CDPError naming ``what`` after ``timeout`` seconds."""
        deadline = time.time() + timeout
        while True:
            value = self.eval(expression, timeout=min(30.0, timeout))
            if value:
                return value
            if time.time() > deadline:
                raise CDPError(f"{what}: not seen in {timeout} s")
            time.sleep(poll)

    def screenshot(self, path: str) -> str:
        data = self.send("Page.captureScreenshot", {"format": "png"}, timeout=60)["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))
        return path

    def _events(self, method: str) -> list[dict]:
        return [e["params"] for e in list(self.browser.events)
                if e.get("method") == method and e.get("sessionId") == self.session]

    def responses(self) -> list[tuple[str, int]]:
        """(url, status) of every HTTP response the page received so far."""
        return [(p["response"]["url"], p["response"]["status"]) for p in self._events("Network.responseReceived")]

    def console(self) -> list[str]:
        out = [f"{p['type']}: " + " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
               for p in self._events("Runtime.consoleAPICalled")]
        out += [f"exception: {p['exceptionDetails'].get('exception', {}).get('description', '')}"
                for p in self._events("Runtime.exceptionThrown")]
        return out


def chromium_binary() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")
