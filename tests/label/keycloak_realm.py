"""A stand-in for a Keycloak realm in the auth tests: the endpoints MONAI Label calls, and tokens signed with pyjwt.

:class:`Realm` serves, on a free loopback port, what Keycloak serves for a realm: ``GET /realms/<name>`` (JSON
with the realm's RSA ``public_key``, base64 DER without PEM lines, as Keycloak gives it), its OpenID
configuration, and the password grant at ``.../protocol/openid-connect/token`` (the client id must be the one
the server was started with). The main test environment has no pyjwt, so keys and tokens are made by this file
run as a script with the label venv's python (:func:`mint`), which has pyjwt and cryptography (MONAI Label's).
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

REALM = "cxrfx"


def mint(label_python: str, realm_uri: str, specs: dict) -> dict:
    """``{"public_key": ..., "tokens": {name: token}}``; ``specs``: ``{name: {"roles": [...] or None,
    "exp_in": seconds (negative: expired), "key": "realm" | "other", "alg": "RS256" | "HS256-public" | "none"}}``."""
    proc = subprocess.run([label_python, __file__], input=json.dumps({"realm_uri": realm_uri, "specs": specs}),
                          capture_output=True, text=True, check=True, timeout=120)
    return json.loads(proc.stdout)


class Realm:
    """The realm server in a daemon thread of the test process; ``uri`` is what the label server is given."""

    def __init__(self, client_id: str, users: dict[str, tuple[str, str]]):
        """``users``: ``{username: (password, token)}`` for the password grant."""
        self.client_id, self.users, self.public_key = client_id, users, ""
        self.requests: list[str] = []
        realm = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest's output clean
                pass

            def _json(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):  # noqa: N802
                realm.requests.append(f"GET {self.path}")
                base = f"/realms/{REALM}"
                if self.path == base:
                    self._json(200, {"realm": REALM, "public_key": realm.public_key, "token-service":
                                     f"{realm.uri}/protocol/openid-connect", "tokens-not-before": 0})
                elif self.path == base + "/.well-known/openid-configuration":
                    self._json(200, {"issuer": realm.uri,
                                     "token_endpoint": f"{realm.uri}/protocol/openid-connect/token"})
                elif self.path == "/not-a-realm":
                    self._json(200, {"hello": "this JSON has no public_key"})
                else:
                    self._json(404, {"error": "Realm does not exist"})

            def do_POST(self):  # noqa: N802
                realm.requests.append(f"POST {self.path}")
                form = urllib.parse.parse_qs(self.rfile.read(int(self.headers.get("Content-Length", 0))).decode())
                one = {k: v[0] for k, v in form.items()}
                if self.path != f"/realms/{REALM}/protocol/openid-connect/token":
                    return self._json(404, {"error": "not found"})
                if one.get("client_id") != realm.client_id or one.get("grant_type") != "password":
                    return self._json(401, {"error": "unauthorized_client"})
                password, token = realm.users.get(one.get("username", ""), (None, None))
                if password is None or password != one.get("password"):
                    return self._json(401, {"error": "invalid_grant"})
                self._json(200, {"access_token": token, "token_type": "Bearer", "expires_in": 3600})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.uri = f"{self.base}/realms/{REALM}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self) -> Realm:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _main() -> None:
    """Label venv only: two RSA keys (the realm's, another), the tokens of the spec, JSON on stdout."""
    import hashlib
    import hmac

    import jwt
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    request = json.load(sys.stdin)
    keys = {name: rsa.generate_private_key(public_exponent=65537, key_size=2048) for name in ("realm", "other")}
    der = keys["realm"].public_key().public_bytes(serialization.Encoding.DER,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    pem = keys["realm"].public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    now = int(time.time())
    tokens = {}
    for name, spec in request["specs"].items():
        claims = {"iss": request["realm_uri"], "iat": now - 120, "exp": now + spec.get("exp_in", 3600),
                  "preferred_username": name, "email": f"{name}@hospital.test", "name": name.title(),
                  "azp": "cxrfx-test", "typ": "Bearer"}
        if spec.get("roles") is not None:
            claims["realm_access"] = {"roles": spec["roles"]}
        alg = spec.get("alg", "RS256")
        if alg == "HS256-public":  # the classic key-confusion forgery: HMAC keyed with the realm's public key
            head = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
            body = _b64url(json.dumps(claims).encode())
            sig = hmac.new(pem, f"{head}.{body}".encode(), hashlib.sha256).digest()
            tokens[name] = f"{head}.{body}.{_b64url(sig)}"
        elif alg == "none":
            tokens[name] = jwt.encode(claims, None, algorithm="none")
        else:
            tokens[name] = jwt.encode(claims, keys[spec.get("key", "realm")], algorithm=alg)
    json.dump({"public_key": base64.b64encode(der).decode(), "tokens": tokens}, sys.stdout)


if __name__ == "__main__":
    _main()
