"""The ASGI app ``python -m cxrfx.label serve`` runs: MONAI Label's FastAPI app with cxrfx's request validation
(:mod:`cxrfx.label.validation`) installed. Passed to MONAI Label's ``start_server`` as ``--uvicorn_app
cxrfx.label.server:app``, so it is imported after MONAI Label has set its settings from the command line."""

from __future__ import annotations

from cxrfx.label import compat

compat.install()  # before MONAI Label's modules: they import pydicom-seg at module level

from monailabel.app import app  # noqa: E402

from cxrfx.label.validation import install  # noqa: E402

__all__ = ["app"]

install(app)
