"""Authentication on: a real label server (127.0.0.1, label venv) started with ``--auth-realm`` against a
stand-in Keycloak realm (:mod:`keycloak_realm`), tokens signed with pyjwt. Auth off is checked in
``test_server.py`` (tokens ignored, ``/auth/`` says disabled).

A refused request (no / bad / expired / forged token: 401; token without the endpoint's role: 403) is refused
before any of cxrfx's validation reads it and leaves the datastore and the served weights exactly as before; with
the right role, bad requests get the same 4xx with a reason as without auth. One server for the module (its own
copy of the studies, a 2 MB upload limit so the size case stays cheap); the case -> status table is printed.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import urllib.parse

import numpy as np
import pytest
from keycloak_realm import REALM, Realm, mint
from label_server import (copy_images, file_hashes, free_port, http, multipart, print_table, read_json,
                          start_label_server)
from PIL import Image

SEG, DET = "cxr_segmentation", "cxr_detection"
SEG_IMAGE = "phantom_seg_0000"
CLIENT = "cxrfx-test"
ANNOTATOR_ROLE = "radiographer"  # renamed with --auth-role: the server must use the realm's name
USER, REVIEWER, ADMIN = "monailabel-user", "monailabel-reviewer", "monailabel-admin"
TOKENS = {  # Keycloak puts a user's (composite-expanded) realm roles in realm_access.roles
    "user": {"roles": [USER]},
    "annotator": {"roles": [USER, ANNOTATOR_ROLE]},
    "reviewer": {"roles": [USER, REVIEWER]},
    "admin": {"roles": [USER, ANNOTATOR_ROLE, REVIEWER, ADMIN]},
    "no_roles": {"roles": None},
    "expired": {"roles": [USER, ANNOTATOR_ROLE], "exp_in": -60},
    "wrong_signature": {"roles": [USER, ANNOTATOR_ROLE, ADMIN], "key": "other"},
    "hs256_forged": {"roles": [USER, ANNOTATOR_ROLE, ADMIN], "alg": "HS256-public"},
    "alg_none": {"roles": [USER, ANNOTATOR_ROLE, ADMIN], "alg": "none"},
    "login": {"roles": [USER, ANNOTATOR_ROLE]},
    "roles_not_a_list": {"roles": ADMIN},  # MONAI Label's own code answered this with a 500
}
TABLE: list[tuple[str, int, str]] = []


@pytest.fixture(scope="module")
def realm(label_python):
    r = Realm(CLIENT, {})
    minted = mint(label_python, r.uri, TOKENS)
    r.public_key, r.tokens = minted["public_key"], minted["tokens"]
    r.users["anna"] = ("s3cret", r.tokens["login"])
    r.start()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory, label_python, label_env, studies, bundles, realm):
    tmp = tmp_path_factory.mktemp("auth")
    own = copy_images(studies, tmp / "studies")
    env = dict(label_env, CXRFX_LABEL_MAX_UPLOAD_MB="2")
    extra = ["--auth-realm", realm.uri, "--auth-client-id", CLIENT, "--auth-role", "annotator", ANNOTATOR_ROLE]
    srv, url = start_label_server(tmp, label_python, env, own, bundles, extra=extra, ready="/auth/")
    srv.url, srv.studies, srv.app = url, own, str(tmp / "app")
    yield srv
    srv.stop()
    print_table("auth cases", TABLE)


def snapshot(server) -> dict:
    """Every datastore file (images, labels, MONAI Label's index) and every served weights file: content hashes."""
    return {**file_hashes(server.studies, server.app), **file_hashes(os.path.join(server.app, "model"), server.app)}


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def good_label(server) -> bytes:
    w, h = Image.open(os.path.join(server.studies, SEG_IMAGE + ".png")).size
    index = np.zeros((h, w), np.uint8)
    index[h // 4: h // 2, w // 4: w // 2] = 1
    return png(index)


def call(server, token: str | None, method: str, path: str, fields: dict | None = None, payload=None,
         scheme: str = "Bearer"):
    headers = {"Authorization": f"{scheme} {token}"} if token else {}
    data = None
    if fields is not None:
        data, headers["Content-Type"] = multipart(fields)
    elif payload is not None:
        data, headers["Content-Type"] = json.dumps(payload).encode(), "application/json"
    return http(method, server.url + path, data, headers)


def detail(body: bytes) -> str:
    try:
        return str(read_json(body).get("detail"))
    except (ValueError, AttributeError):
        return body.decode(errors="replace")


def run_cases(server, cases) -> None:
    """Each case's status and reason words; the table keeps what was seen (asserted after all ran)."""
    failures = []
    for case, thunk, status, words in cases:
        got, body = thunk()
        reason = detail(body)
        TABLE.append((case, got, reason))
        if got != status or not all(w.lower() in reason.lower() for w in words):
            failures.append(f"{case}: expected {status} with {words}, got {got}: {reason[:200]}")
    assert not failures, "\n".join(failures)


def test_auth_endpoint_reports_realm_and_client(server, realm):
    status, body = http("GET", server.url + "/auth/")
    assert status == 200
    assert read_json(body) == {"enabled": True, "client_id": CLIENT, "realm": realm.uri}
    assert f"GET /realms/{REALM}" in realm.requests  # the key was fetched at start-up


def test_refused_requests_store_nothing(server, realm):
    t = realm.tokens
    label = {"label": ("l.png", good_label(server), "image/png")}
    garbage = {"label": ("l.png", os.urandom(300), "image/png")}
    image = {"file": ("new_0000.png", png(np.full((64, 64), 7, np.uint8)), "image/png")}
    big = {"file": ("big.png", b"\0" * (3 * 1024 * 1024), "image/png")}
    weights = {"file": ("w.pt", b"not a checkpoint", "application/octet-stream")}
    put_label = f"/datastore/label?image={SEG_IMAGE}&tag=final"
    delete_image = f"/datastore/image?id={SEG_IMAGE}"
    unauthenticated = ["Not authenticated"]
    invalid = ["Could not validate credentials"]
    cases = [
        ("no token: GET /info", lambda: call(server, None, "GET", "/info/"), 401, unauthenticated),
        ("no token: datastore listing", lambda: call(server, None, "GET", "/datastore/?output=all"), 401,
         unauthenticated),
        ("no token: infer", lambda: call(server, None, "POST", f"/infer/{SEG}?image={SEG_IMAGE}&output=json",
                                         {"params": ("", b"{}", "text/plain")}), 401, unauthenticated),
        ("no token: infer unknown model (401, not 404)", lambda: call(server, None, "POST", "/infer/nope?image=x"),
         401, unauthenticated),
        ("no token: save a valid label", lambda: call(server, None, "PUT", put_label, label), 401, unauthenticated),
        ("no token: save garbage label (401, not 422)", lambda: call(server, None, "PUT", put_label, garbage), 401,
         unauthenticated),
        ("no token: upload an image", lambda: call(server, None, "PUT", "/datastore/image", image), 401,
         unauthenticated),
        ("no token: upload over the size limit (401, not 413)",
         lambda: call(server, None, "PUT", "/datastore/image", big), 401, unauthenticated),
        ("no token: delete an image", lambda: call(server, None, "DELETE", delete_image), 401,
         unauthenticated),
        ("no token: train", lambda: call(server, None, "POST", f"/train/{SEG}", payload={"max_epochs": 1}), 401,
         unauthenticated),
        ("no token: download weights", lambda: call(server, None, "GET", f"/model/{SEG}"), 401, unauthenticated),
        ("Basic scheme instead of Bearer", lambda: call(server, "YW5uYTpzM2NyZXQ=", "PUT", put_label, label,
                                                        scheme="Basic"), 401, unauthenticated),
        ("garbage token", lambda: call(server, "not.a.jwt", "PUT", put_label, label), 401, invalid),
        ("expired token", lambda: call(server, t["expired"], "PUT", put_label, label), 401,
         invalid + ["expired"]),
        ("token signed by another key", lambda: call(server, t["wrong_signature"], "PUT", put_label, label), 401,
         invalid + ["Signature verification failed"]),
        ("HS256 token keyed with the realm's public key",
         lambda: call(server, t["hs256_forged"], "POST", f"/train/{SEG}", payload={}), 401, invalid),
        ("unsigned token (alg none)", lambda: call(server, t["alg_none"], "DELETE", delete_image), 401, invalid),
        ("roles claim not a list", lambda: call(server, t["roles_not_a_list"], "GET", "/info/"), 401,
         invalid + ["not a list of role names"]),
        ("token without roles: GET /info", lambda: call(server, t["no_roles"], "GET", "/info/"), 403,
         [f'Role "{USER}" is required']),
        ("user: save a label", lambda: call(server, t["user"], "PUT", put_label, label), 403,
         [f'Role "{ANNOTATOR_ROLE}" is required']),
        ("reviewer: upload an image", lambda: call(server, t["reviewer"], "PUT", "/datastore/image", image), 403,
         [f'Role "{ANNOTATOR_ROLE}" is required']),
        ("annotator: train", lambda: call(server, t["annotator"], "POST", f"/train/{SEG}", payload={}), 403,
         [f'Role "{ADMIN}" is required']),
        ("annotator: train unknown model (403, not 404)",
         lambda: call(server, t["annotator"], "POST", "/train/nope", payload={}), 403, [ADMIN]),
        ("annotator: delete an image", lambda: call(server, t["annotator"], "DELETE", delete_image), 403, [ADMIN]),
        ("annotator: replace served weights", lambda: call(server, t["annotator"], "PUT", f"/model/{SEG}", weights),
         403, [ADMIN]),
        ("annotator: delete served weights", lambda: call(server, t["annotator"], "DELETE", f"/model/{SEG}"), 403,
         [ADMIN]),
        ("annotator: download weights", lambda: call(server, t["annotator"], "GET", f"/model/{SEG}"), 403, [ADMIN]),
    ]
    before = snapshot(server)
    run_cases(server, cases)
    assert snapshot(server) == before


def test_right_role_gets_validation_reasons(server, realm):
    t = realm.tokens
    small = {"label": ("l.png", png(np.ones((10, 10), np.uint8)), "image/png")}
    big = {"file": ("big.png", b"\0" * (3 * 1024 * 1024), "image/png")}
    cases = [
        ("user: infer unknown model", lambda: call(server, t["user"], "POST", f"/infer/nope?image={SEG_IMAGE}"),
         404, ["model", "nope", "unknown"]),
        ("user: infer unknown image", lambda: call(server, t["user"], "POST", f"/infer/{SEG}?image=ghost"), 404,
         ["image", "ghost"]),
        ("annotator: label of the wrong size",
         lambda: call(server, t["annotator"], "PUT", f"/datastore/label?image={SEG_IMAGE}", small), 422,
         ["10x10", "size"]),
        ("annotator: label for unknown image",
         lambda: call(server, t["annotator"], "PUT", "/datastore/label?image=ghost", small), 404, ["ghost"]),
        ("annotator: upload over the size limit",
         lambda: call(server, t["annotator"], "PUT", "/datastore/image", big), 413, ["bytes"]),
        ("user: unknown active-learning strategy",
         lambda: call(server, t["user"], "POST", "/activelearning/clairvoyant", payload={}), 404, ["clairvoyant"]),
        ("admin: train without labels", lambda: call(server, t["admin"], "POST", f"/train/{SEG}", payload={}), 409,
         ["0 final", "at least 2"]),
        ("admin: train unknown model", lambda: call(server, t["admin"], "POST", "/train/nope", payload={}), 404,
         ["nope", "not trainable"]),
        ("admin: delete unknown image", lambda: call(server, t["admin"], "DELETE", "/datastore/image?id=ghost"), 404,
         ["ghost"]),
        ("admin: garbage weights", lambda: call(server, t["admin"], "PUT", f"/model/{SEG}",
                                                {"file": ("w.pt", os.urandom(300), "application/octet-stream")}),
         422, ["w.pt", "not a PyTorch checkpoint"]),
    ]
    before = snapshot(server)
    run_cases(server, cases)
    assert snapshot(server) == before


def test_right_role_is_served(server, realm):
    t = realm.tokens
    status, body = call(server, t["user"], "GET", "/info/")
    assert status == 200 and SEG in read_json(body)["models"]
    status, body = call(server, t["reviewer"], "POST", f"/infer/{SEG}?image={SEG_IMAGE}&output=json",
                        {"params": ("", b"{}", "text/plain")})
    assert status == 200, detail(body)
    before = snapshot(server)
    status, body = call(server, t["annotator"], "PUT", f"/datastore/label?image={SEG_IMAGE}&tag=final",
                        {"label": ("l.png", good_label(server), "image/png")})
    assert status == 200, detail(body)
    added = set(snapshot(server)) - set(before)
    assert len(added) == 1 and SEG_IMAGE in added.pop()
    status, body = call(server, t["admin"], "DELETE", f"/datastore/label?id={SEG_IMAGE}&tag=final")
    assert status == 200, detail(body)
    index = "../studies/datastore_v2.json"  # MONAI Label's index keeps timestamps of the change: files compared
    assert {k: v for k, v in snapshot(server).items() if k != index} == {k: v for k, v in before.items() if k != index}
    listing = read_json(call(server, t["user"], "GET", "/datastore/?output=all")[1])
    assert not listing["objects"][SEG_IMAGE].get("labels")
    TABLE.extend([("user: GET /info", 200, ""), ("reviewer: infer", 200, ""), ("annotator: save label", 200, ""),
                  ("admin: delete label", 200, "")])


def test_login_through_the_server_uses_the_client_id(server, realm):
    form = urllib.parse.urlencode({"username": "anna", "password": "s3cret"}).encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    status, body = http("POST", server.url + "/auth/token", form, headers)
    assert status == 200, body
    token = read_json(body)["access_token"]
    assert token == realm.tokens["login"]
    assert call(server, token, "GET", "/info/")[0] == 200
    status, body = call(server, token, "GET", "/auth/token/valid")
    assert status == 200 and read_json(body)["username"] == "login"
    assert ANNOTATOR_ROLE in read_json(body)["roles"]
    wrong = urllib.parse.urlencode({"username": "anna", "password": "guess"}).encode()
    status, body = http("POST", server.url + "/auth/token", wrong, headers)
    assert status == 401 and "login refused by the realm (401 invalid_grant)" in detail(body), body
    TABLE.extend([("login through /auth/token", 200, ""), ("login with a wrong password", status, detail(body))])


@pytest.mark.parametrize("case, realm_uri, words", [
    ("malformed URI", "keycloak:8080/realms/monailabel", ["not an http(s) URL"]),
    ("nothing listening", "http://127.0.0.1:{closed}/realms/monailabel", ["realm not reachable", "Connection refused"]),
    ("JSON without public_key", "{base}/not-a-realm", ["not a Keycloak realm", "public_key"]),
    ("unknown realm (404)", "{base}/realms/nope", ["answered", "404"]),
])
def test_start_refuses_an_unusable_realm(tmp_path, label_python, label_env, realm, bundles, case, realm_uri, words):
    uri = realm_uri.format(closed=free_port(), base=realm.base)
    cmd = [label_python, "-m", "cxrfx.label", "serve", "--auth-realm", uri, "--studies", str(tmp_path / "studies"),
           "--app-dir", str(tmp_path / "app"), "--bundles", bundles, "--port", str(free_port())]
    proc = subprocess.run(cmd, env=label_env, capture_output=True, text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: MONAI_LABEL_AUTH_REALM_URI=") and all(w in lines[0] for w in words), lines
    assert not os.path.exists(tmp_path / "studies") and not os.path.exists(tmp_path / "app")  # nothing built
    TABLE.append((f"start, realm {case} (exit code)", proc.returncode, lines[0]))
