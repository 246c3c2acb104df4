"""Request validation for the MONAI Label server: every request we serve is checked before the app touches the
datastore or a model, and a bad one is answered 4xx with a one-line reason (FastAPI's ``{"detail": reason}``).

Why a layer in front of MONAI Label's endpoints: several of its endpoint functions act on a request before any
app hook runs (``json.loads`` of the ``params`` form field, ``FileResponse`` of a result that a JSON-only model
never writes, a training child process spawned before the model name is looked up, an uploaded file copied into
the datastore as is). :class:`ValidationMiddleware` reads the request once (query, JSON body or form with its
uploads; the body is then replayed unchanged to MONAI Label), runs the check for its endpoint, and answers the
:class:`fastapi.HTTPException` a check raises exactly as FastAPI would. The checks are plain functions raising
``HTTPException`` (MONAI Label's own mechanism) and live in :mod:`cxrfx.label.checks`, so app code can call
them too (the app does, for labels saved through ``/infer?save_label`` and for ``/train`` in the training child).

Statuses: 400 malformed request (bad JSON, missing field, unsupported output), 404 unknown model / image /
strategy, 409 state conflict (training without enough labels, disagreement before any training), 413 upload too
large or too many pixels, 415 unsupported file type, 422 well-formed but invalid value (threshold not a number,
label of the wrong size, unknown class, inverted box, unreadable image).

:func:`install` adds the middleware and the exception handlers (a ``MONAILabelException`` is a 400 with its
message; any other exception a one-line 500, never a traceback) to MONAI Label's FastAPI app; ``python -m
cxrfx.label serve`` calls it before the server starts. With MONAI Label's auth on, the middleware first checks
the request's token and role (:mod:`cxrfx.label.auth`): 401 / 403 before any check reads the body.
"""
from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections.abc import Callable

from fastapi import HTTPException

from cxrfx.label.checks import (  # noqa: F401  (check_* re-exported: the names app code and tests used)
    MAX_PIXELS, MAX_UPLOAD_BYTES, PLAIN_NAME, app_infers, app_trainers, check_activelearning, check_image_file,
    check_infer, check_label_file, check_model_upload, check_remove, check_tag, check_train, image_path,
    parse_json_field, reject,
)

__all__ = ["ValidationMiddleware", "install", "reject", "check_infer", "check_train", "check_activelearning",
           "check_label_file", "check_model_upload", "check_image_file", "check_tag", "MAX_UPLOAD_BYTES", "MAX_PIXELS"]

logger = logging.getLogger(__name__)


# -- the middleware --------------------------------------------------------------------------------------------
class _Body:
    """The request body read once, replayed to the app; after it, the client's own ``receive`` (disconnects)."""

    def __init__(self, body: bytes, receive):
        self.body, self.receive, self.sent = body, receive, False

    async def __call__(self):
        if not self.sent:
            self.sent = True
            return {"type": "http.request", "body": self.body, "more_body": False}
        return await self.receive()


async def _read_body(receive, limit: int) -> bytes | None:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return _TooLarge()
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _drain(receive, cap: int = 1 << 30) -> None:
    """Read and drop the rest of a refused body (up to ``cap`` bytes), keeping nothing."""
    seen = 0
    while seen < cap:
        message = await receive()
        if message["type"] != "http.request":
            return
        seen += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


class _TooLarge(bytes):
    """Marks a body that passed the size limit while being read (no or a wrong Content-Length)."""


def _route(method: str, path: str, api: str = "") -> tuple[str, str] | None:
    path = path[len(api):] if api and path.startswith(api) else path
    parts = [p for p in path.split("/") if p]
    if method == "POST" and len(parts) == 2 and parts[0] in ("infer", "train", "activelearning"):
        return parts[0], parts[1]
    if method == "POST" and len(parts) == 3 and parts[:2] == ["batch", "infer"]:
        return "batch_infer", parts[2]
    if method == "POST" and parts == ["train"]:
        return "train_all", ""
    if method in ("PUT", "DELETE") and len(parts) == 2 and parts[0] == "model":
        return f"model_{method.lower()}", parts[1]
    if parts[:1] == ["datastore"]:
        rest = "/".join(parts[1:])
        if method == "PUT" and rest == "label":
            return "save_label", ""
        if method == "PUT" and rest in ("image", ""):
            return "add_image", ""
        if method == "DELETE" and rest in ("image", ""):
            return "remove_image", ""
        if method == "DELETE" and rest == "label":
            return "remove_label", ""
        if method == "PUT" and rest in ("image/info", "label/info", "updatelabelinfo"):
            return "update_info", rest
    return None


class ValidationMiddleware:
    """ASGI middleware running the checks above for the endpoints the app serves (see the module docstring).

    ``app_instance``: returns the MONAI Label app (MONAI Label's ``app_instance`` by default)."""

    def __init__(self, app, app_instance: Callable | None = None, max_upload_bytes: int | None = None,
                 api_prefix: str = "", auth=None):
        self.app = app
        self.auth = auth  # a cxrfx.label.auth.Authorizer when MONAI Label's auth is on
        self.max_upload_bytes = MAX_UPLOAD_BYTES if max_upload_bytes is None else max_upload_bytes
        self.api_prefix = api_prefix
        if app_instance is None:
            from monailabel.interfaces.utils.app import app_instance
        self.app_instance = app_instance

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        from starlette.responses import JSONResponse

        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        route = _route(scope["method"], scope["path"], self.api_prefix)
        if self.auth is not None:  # who asks comes first: a refused client's body is neither checked nor stored
            try:
                await self.auth.authorize(scope, headers, validated=route is not None)
            except HTTPException as e:
                logger.info(f"refused {scope['method']} {scope['path']}: {e.status_code} {e.detail}")
                await _drain(receive)  # as for a 413: a client still sending would see a reset connection
                return await JSONResponse({"detail": e.detail}, e.status_code, e.headers)(scope, receive, send)
        if route is None:
            return await self.app(scope, receive, send)
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_upload_bytes:
            await _drain(receive)  # a client still sending would see a reset connection instead of the 413
            return await JSONResponse({"detail": f"request body of {length} bytes; the server accepts at most "
                                                 f"{self.max_upload_bytes} bytes"}, 413)(scope, receive, send)
        body = await _read_body(receive, self.max_upload_bytes)
        if body is None:
            return
        if isinstance(body, _TooLarge):
            await _drain(receive)
            return await JSONResponse({"detail": f"request body larger than {self.max_upload_bytes} bytes"},
                                      413)(scope, receive, send)
        try:
            await self._check(route, scope, body, headers)
        except HTTPException as e:
            logger.info(f"refused {scope['method']} {scope['path']}: {e.status_code} {e.detail}")
            return await JSONResponse({"detail": e.detail}, e.status_code)(scope, receive, send)
        await self.app(scope, _Body(body, receive), send)

    async def _check(self, route, scope, body: bytes, headers: dict) -> None:
        from starlette.concurrency import run_in_threadpool
        from starlette.datastructures import QueryParams
        from starlette.requests import Request

        kind, name = route
        query = dict(QueryParams(scope.get("query_string", b"")))
        ctype = headers.get("content-type", "")
        form, files = {}, {}
        temps = []
        try:
            if ctype.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
                request = Request(scope, _Body(body, _never))
                try:
                    data = await request.form()
                except Exception as e:  # noqa: BLE001
                    reject(400, f"body: malformed form data ({str(e)[:200]})")
                for key, value in data.multi_items():
                    if hasattr(value, "read"):
                        suffix = "".join(re.findall(r"(\.[A-Za-z0-9]+)", os.path.basename(value.filename or ""))[-2:])
                        fd, tmp = tempfile.mkstemp(prefix="cxrfx_upload_", suffix=suffix)
                        with os.fdopen(fd, "wb") as f:
                            f.write(await value.read())
                        temps.append(tmp)
                        files[key] = (tmp, value.filename or key)
                    else:
                        form[key] = value
                await data.close()
            json_body = None
            if ctype.startswith("application/json") and body.strip():
                try:
                    json_body = json.loads(body)
                except ValueError as e:
                    reject(400, f"body: malformed JSON ({e})")
            await run_in_threadpool(self._check_sync, kind, name, query, form, files, json_body)
        finally:
            for t in temps:
                try:
                    os.remove(t)
                except OSError:
                    pass

    def _check_sync(self, kind, name, query, form, files, json_body) -> None:
        app = self.app_instance()
        if kind == "infer":
            params = parse_json_field(form.get("params"), "params")
            upload = files.get("file")
            check_infer(app, name, query, params, upload)
        elif kind == "batch_infer":
            if name not in app_infers(app):
                reject(404, f"model {name!r}: unknown; served models are {sorted(app_infers(app))}")
            if json_body is not None and not isinstance(json_body, dict):
                reject(400, "body: expected a JSON object")
            if query.get("images", "unlabeled") not in ("all", "labeled", "unlabeled"):
                reject(422, f"images: {query['images']!r} is not one of all, labeled, unlabeled")
        elif kind == "model_put":
            upload = files.get("file")
            check_model_upload(app, name, upload[0] if upload else None, upload[1] if upload else "file")
        elif kind == "model_delete":
            if name not in app_infers(app):
                reject(404, f"model {name!r}: unknown; served models are {sorted(app_infers(app))}")
        elif kind == "train":
            check_train(app, name, json_body if json_body is not None else {})
        elif kind == "train_all":
            if json_body is not None and not isinstance(json_body, dict):
                reject(400, "body: expected a JSON object {model: settings}")
            for model, settings in (json_body or {}).items():
                if model not in app_trainers(app):
                    reject(404, f"model {model!r}: not trainable; trainable models are {sorted(app_trainers(app))}")
                check_train(app, model, settings)
        elif kind == "activelearning":
            check_activelearning(app, name, json_body if json_body is not None else {})
        elif kind == "save_label":
            parse_json_field(form.get("params"), "params")
            check_tag(query.get("tag"))
            if "label" not in files:
                image_path(app, query.get("image", ""))
                reject(400, "label: missing (a multipart field 'label' with the label file)")
            check_label_file(app, query.get("image", ""), *files["label"])
        elif kind == "add_image":
            parse_json_field(form.get("params"), "params")
            if "file" not in files:
                reject(400, "file: missing (a multipart field 'file' with the image)")
            tmp, filename = files["file"]
            image_id = query.get("image") or os.path.basename(filename).split(".")[0]
            if not PLAIN_NAME.match(image_id):
                reject(422, f"image {image_id!r}: an image id is a plain name (letters, digits, '.', '_', '-')")
            check_image_file(tmp, filename)
        elif kind == "remove_image":
            check_remove(app, query.get("id", ""))
        elif kind == "remove_label":
            check_remove(app, query.get("id", ""), query.get("tag", ""))
        elif kind == "update_info":
            parse_json_field(form.get("info", form.get("params")), "info" if "info" in form else "params")
            if name == "image/info":
                image_path(app, query.get("image", ""))
            else:
                check_remove(app, query.get("label", ""), query.get("tag", ""))


async def _never():
    return {"type": "http.disconnect"}


def install(fastapi_app, app_instance: Callable | None = None) -> None:
    """Add :class:`ValidationMiddleware` and the exception handlers to MONAI Label's FastAPI app (before it
    starts serving)."""
    from fastapi.responses import JSONResponse
    from monailabel.config import settings
    from monailabel.interfaces.exception import MONAILabelError, MONAILabelException

    from starlette.middleware import Middleware

    api_prefix = getattr(settings, "MONAI_LABEL_API_STR", "") or ""
    auth = None
    if settings.MONAI_LABEL_AUTH_ENABLE:
        from cxrfx.label.auth import Authorizer, install_token_check

        install_token_check()
        auth = Authorizer(fastapi_app, api_prefix)
    # innermost of the app's middleware (after CORS), so a browser client (OHIF on another origin) reads the reason
    fastapi_app.user_middleware.append(Middleware(ValidationMiddleware, app_instance=app_instance, auth=auth,
                                                  api_prefix=api_prefix))

    async def monailabel_error(request, exc: MONAILabelException):
        status = 400 if exc.error == MONAILabelError.INVALID_INPUT else 500
        return JSONResponse({"detail": str(exc.msg).splitlines()[0] if exc.msg else exc.error.value}, status)

    async def any_error(request, exc: Exception):
        if auth is not None:
            from cxrfx.label.auth import login_error

            answer = login_error(request.url.path, exc)
            if answer is not None:
                logger.info(f"{request.method} {request.url.path}: {answer[0]} {answer[1]}")
                return JSONResponse({"detail": answer[1]}, answer[0])
        logger.exception(f"{request.method} {request.url.path}: {type(exc).__name__}")
        reason = str(exc).splitlines()[0][:300] if str(exc) else ""
        return JSONResponse({"detail": f"internal error ({type(exc).__name__}: {reason}); see the server log"}, 500)

    fastapi_app.add_exception_handler(MONAILabelException, monailabel_error)
    fastapi_app.add_exception_handler(Exception, any_error)
