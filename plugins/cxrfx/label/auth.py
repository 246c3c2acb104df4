"""Optional authentication of the label server: MONAI Label's own (Keycloak realm, bearer tokens, four roles),
made to work on this stack, checked at start-up, and enforced before cxrfx's request validation.

MONAI Label 0.8.5 turns auth on with ``MONAI_LABEL_AUTH_ENABLE``; each endpoint then depends on ``RBAC(role)``,
which decodes the ``Authorization: Bearer`` token with the realm's RSA public key (fetched once from
``MONAI_LABEL_AUTH_REALM_URI``, the JSON Keycloak serves at ``/realms/<realm>``) and looks for the role in the
token's ``realm_access.roles`` (exact membership: no hierarchy). Three things are added here:

- :func:`from_token` replaces MONAI Label's: it calls ``jwt.decode`` without ``algorithms``, which PyJWT 2
  refuses for every token (``DecodeError``), so every request would be 401. Ours accepts the RSA algorithms only
  (Keycloak signs RS256; an HS256 token "signed" with the public key is refused) and treats a token without
  the roles claim as one without roles instead of failing with a 500.
- :func:`check_realm`, called by ``python -m cxrfx.label serve`` before anything else: a malformed realm URI,
  an unreachable realm or an answer without an RSA ``public_key`` stops the start with one line naming
  ``MONAI_LABEL_AUTH_REALM_URI``. It also fills MONAI Label's key cache, so requests never wait on the realm
  (a rotated realm key needs a restart).
- :class:`Authorizer`: :class:`cxrfx.label.validation.ValidationMiddleware` runs it first, so a request without
  a valid token is 401 (and one without the role 403) before its body is read, checked or stored. The role is
  the one the endpoint's own ``RBAC`` dependency names (found from FastAPI's routes, so it follows MONAI Label),
  except that replacing or deleting served weights (``PUT`` / ``DELETE /model/<name>``) needs admin: MONAI
  Label's API summary says admin, its code checks annotator. The endpoint's ``RBAC`` still runs afterwards.

And :func:`login_error`: a login through the server (``POST /auth/token``) that the realm refuses is a 401 with
the realm's reason, a realm that fails a 503, instead of MONAI Label's unhandled exception (a 500).
"""

from __future__ import annotations

import logging
import re
from urllib.parse import urlparse

from fastapi import HTTPException

__all__ = ["RSA_ALGORITHMS", "from_token", "check_realm", "install_token_check", "Authorizer", "AuthSetupError",
           "apply_options", "login_error", "ROLES"]

logger = logging.getLogger(__name__)

RSA_ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"]
ROLES = ("admin", "reviewer", "annotator", "user")  # MONAI_LABEL_AUTH_ROLE_<ROLE> names the realm role
REALM_SETTING = "MONAI_LABEL_AUTH_REALM_URI"


class AuthSetupError(Exception):
    """Auth enabled but unusable; the message is the one line ``serve`` prints."""


def apply_options(environ: dict, realm: str | None, client_id: str | None, roles: list | None) -> None:
    """``serve --auth-realm/--auth-client-id/--auth-role`` as the MONAI Label settings (environment, read when
    MONAI Label is first imported). A realm turns auth on; without one, the environment decides."""
    if realm is not None:
        environ["MONAI_LABEL_AUTH_ENABLE"] = "true"
        environ[REALM_SETTING] = realm
    if client_id is not None:
        environ["MONAI_LABEL_AUTH_CLIENT_ID"] = client_id
    for role, name in roles or []:
        if role not in ROLES:
            raise AuthSetupError(f"--auth-role {role}: not one of {', '.join(ROLES)}")
        environ[f"MONAI_LABEL_AUTH_ROLE_{role.upper()}"] = name


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    cause = re.search(r"\[Errno -?\d+\][^'\")]*", text)  # urllib3 nests the OS error deep in a long repr
    text = cause.group(0) if cause else (text.splitlines() or [""])[0][:200]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def check_realm() -> str | None:
    """Validate MONAI Label's auth settings and fetch the realm key (into MONAI Label's cache); return the realm
    URI when auth is on, None when off. Raises :class:`AuthSetupError` with one line naming the setting."""
    try:
        from monailabel.config import settings
    except Exception as e:  # noqa: BLE001  (pydantic refuses e.g. MONAI_LABEL_AUTH_ENABLE=maybe)
        errors = e.errors() if hasattr(e, "errors") else []
        if errors:
            name = ".".join(str(p) for p in errors[0].get("loc", ())) or "MONAI Label settings"
            raise AuthSetupError(f"{name}={errors[0].get('input')!r}: {errors[0].get('msg')}") from None
        raise AuthSetupError(f"MONAI Label settings: {_one_line(e)}") from None
    if not settings.MONAI_LABEL_AUTH_ENABLE:
        return None
    uri = settings.MONAI_LABEL_AUTH_REALM_URI
    where = f"{REALM_SETTING}={uri!r}"
    parsed = urlparse(uri)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise AuthSetupError(f"{where}: not an http(s) URL of a Keycloak realm "
                             f"(e.g. https://keycloak.example.org/realms/monailabel)")
    import requests
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key
    from monailabel.endpoints.user.auth import get_public_key

    try:
        pem = get_public_key(uri)
    except requests.HTTPError as e:
        raise AuthSetupError(f"{where}: the realm answered {_one_line(e)}") from None
    except requests.RequestException as e:
        raise AuthSetupError(f"{where}: realm not reachable ({_one_line(e)})") from None
    except (ValueError, KeyError, TypeError) as e:
        raise AuthSetupError(f"{where}: the answer is not a Keycloak realm's JSON with a 'public_key' "
                             f"({_one_line(e)})") from None
    try:
        key = load_pem_public_key(pem.encode())
    except ValueError as e:
        raise AuthSetupError(f"{where}: the realm's public_key is not a public key ({_one_line(e)})") from None
    if not isinstance(key, RSAPublicKey):
        raise AuthSetupError(f"{where}: the realm's public_key is {type(key).__name__}, not RSA")
    logger.info(f"auth enabled: realm {uri}, client {settings.MONAI_LABEL_AUTH_CLIENT_ID}")
    return uri


def from_token(token: str):
    """MONAI Label's ``from_token`` with the algorithms PyJWT 2 requires (see the module docstring)."""
    import jwt
    from monailabel.config import settings
    from monailabel.endpoints.user import auth

    if not settings.MONAI_LABEL_AUTH_ENABLE:
        return auth.DEFAULT_USER
    key = auth.get_public_key(settings.MONAI_LABEL_AUTH_REALM_URI)
    payload = jwt.decode(token, key, algorithms=RSA_ALGORITHMS,
                         options={"verify_signature": True, "verify_aud": False, "verify_exp": True})
    roles = payload
    for part in settings.MONAI_LABEL_AUTH_TOKEN_ROLES.split("#"):
        roles = roles.get(part) if isinstance(roles, dict) else None
    if roles is not None and not (isinstance(roles, list) and all(isinstance(r, str) for r in roles)):
        raise jwt.InvalidTokenError(f"claim {settings.MONAI_LABEL_AUTH_TOKEN_ROLES}: not a list of role names")
    return auth.User(username=str(payload.get(settings.MONAI_LABEL_AUTH_TOKEN_USERNAME) or ""),
                     email=payload.get(settings.MONAI_LABEL_AUTH_TOKEN_EMAIL),
                     name=payload.get(settings.MONAI_LABEL_AUTH_TOKEN_NAME), roles=roles or [])


def install_token_check() -> None:
    """Put :func:`from_token` in place of MONAI Label's (its ``get_current_user`` looks the name up per call)."""
    from monailabel.endpoints.user import auth

    auth.from_token = from_token


def login_error(path: str, exc: Exception) -> tuple[int, str] | None:
    """Status and reason for a failed ``POST /auth/token``, None for any other failure. MONAI Label forwards the
    login to the realm and lets the realm's refusal through as an exception: a wrong password would be a 500."""
    import requests

    if not path.rstrip("/").endswith("/auth/token") or not isinstance(exc, requests.RequestException):
        return None
    response = getattr(exc, "response", None)
    if response is not None and 400 <= response.status_code < 500:
        try:
            answer = response.json()
            error = answer.get("error_description") or answer.get("error") if isinstance(answer, dict) else None
        except ValueError:
            error = None
        return 401, f"login refused by the realm ({response.status_code} {error or response.reason})"
    return 503, f"{REALM_SETTING}: the realm's token endpoint failed ({_one_line(exc)})"


def _api_routes(routes):
    """FastAPI's endpoint routes, also inside included routers (FastAPI >= 0.13x keeps those as one entry
    holding ``original_router`` instead of copying their routes into the app)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _api_routes(inner.routes)
        elif getattr(route, "dependant", None) is not None:
            yield route


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status_code=401, detail=detail, headers={"WWW-Authenticate": "Bearer"})


class Authorizer:
    """The role an endpoint requires (its ``RBAC`` dependency) and the check of a request's token against it."""

    def __init__(self, fastapi_app, api_prefix: str = ""):
        self.routes = list(_api_routes(fastapi_app.router.routes))
        self.api_prefix = api_prefix
        self._roles: dict[int, list[str] | None] = {}

    def required_roles(self, scope) -> list[str] | None:
        """Roles of which the token needs one; None for an open route (``/auth/``, static files, docs)."""
        from starlette.routing import Match

        scopes = [scope]
        if self.api_prefix and scope["path"].startswith(self.api_prefix):  # included routers keep their own paths
            scopes.insert(0, dict(scope, path=scope["path"][len(self.api_prefix):]))
        for s in scopes:
            for route in self.routes:
                if route.matches(s)[0] == Match.FULL:
                    if id(route) not in self._roles:
                        self._roles[id(route)] = self._route_roles(route, scope["method"])
                    return self._roles[id(route)]
        return None

    @staticmethod
    def _route_roles(route, method: str) -> list[str] | None:
        from monailabel.config import settings
        from monailabel.endpoints.user.auth import RBAC

        if getattr(route, "endpoint", None) is not None and route.endpoint.__module__ == "monailabel.endpoints.model" \
                and method in ("PUT", "DELETE"):
            return [settings.MONAI_LABEL_AUTH_ROLE_ADMIN]  # served weights: see the module docstring
        stack = list(route.dependant.dependencies)
        while stack:
            dep = stack.pop()
            if isinstance(dep.call, RBAC):
                roles = dep.call.roles
                if roles == "*":
                    return [getattr(settings, f"MONAI_LABEL_AUTH_ROLE_{r.upper()}") for r in ROLES]
                return [roles] if isinstance(roles, str) else list(roles)
            stack.extend(dep.dependencies)
        return None

    async def authorize(self, scope, headers: dict, validated: bool = False) -> None:
        """Raise the 401 / 403 MONAI Label would answer (its messages; a 401 says why the token was refused).
        ``validated``: an endpoint cxrfx validates; if its role cannot be found, it needs admin (fail closed)."""
        import jwt
        import requests
        from monailabel.config import settings
        from starlette.concurrency import run_in_threadpool

        roles = self.required_roles(scope)
        if roles is None and validated:
            logger.error(f"{scope['method']} {scope['path']}: no RBAC role found; admin required")
            roles = [settings.MONAI_LABEL_AUTH_ROLE_ADMIN]
        if roles is None:
            return
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _unauthorized("Not authenticated")
        try:
            user = await run_in_threadpool(from_token, token.strip())
        except jwt.InvalidTokenError as e:
            raise _unauthorized(f"Could not validate credentials ({e})") from None
        except requests.RequestException as e:  # only before the key is cached: serve fetches it at start-up
            raise HTTPException(503, f"{REALM_SETTING}: realm not reachable ({_one_line(e)})") from None
        if not any(role in user.roles for role in roles):
            raise HTTPException(403, f'Role "{roles[0]}" is required to perform this action')
