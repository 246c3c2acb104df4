"""``python -m cxrfx.label``: prepare and start the MONAI Label server (run with the label venv's python).

    python -m cxrfx.label serve [--studies DIR|DICOMWEB_URL] [--app-dir runs/label/app] [--port 8000]
                                [--configs demo.json] [--conf KEY VALUE ...] [--limit-concurrency N]
                                [--auth-realm URI [--auth-client-id ID] [--auth-role ROLE NAME ...]]
    python -m cxrfx.label studies --out DIR [--count 16] [--size 256]

``serve`` copies each served bundle's configs (and weights, when the bundle has some and the app folder has
none) into ``<app-dir>/model/<name>/``, writes the app's ``main.py``, builds the phantom studies when
``--studies`` is a missing folder, then runs MONAI Label's own ``start_server`` in this process (uvicorn,
127.0.0.1 by default) with cxrfx's request validation in front of MONAI Label's endpoints
(:mod:`cxrfx.label.validation`: bad requests are answered 4xx with a reason). Nothing is downloaded: no zoo, no
SAM, no dcmqi.
``--auth-realm`` (or ``MONAI_LABEL_AUTH_*`` in the environment) turns on MONAI Label's token auth
(:mod:`cxrfx.label.auth`); the realm is checked first, and a bad one ends the start with one line.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys

from cxrfx.label.studies import write_studies

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
SERVED = {"cxr_segmentation": "finetune_seg", "cxr_detection": "finetune_det", "cxr_classification": "foundation_x"}
MAIN_PY = '''"""MONAI Label app folder made by `python -m cxrfx.label serve`; the app is cxrfx.label.app.CXRLabelApp."""
from cxrfx.label.app import CXRLabelApp  # noqa: F401
'''


def prepare_app(app_dir: str, bundles: str) -> str:
    """Create / refresh the app folder: ``main.py`` and ``model/<name>/`` per served bundle."""
    app_dir = os.path.abspath(app_dir)
    for name, bundle in SERVED.items():
        src, dst = os.path.join(bundles, bundle), os.path.join(app_dir, "model", name)
        if not os.path.isfile(os.path.join(src, "configs", "inference.json")):
            raise SystemExit(f"error: {src}: bundle not found (no configs/inference.json)")
        # configs follow the checkout; served weights stay (they are what /train produced)
        shutil.copytree(os.path.join(src, "configs"), os.path.join(dst, "configs"), dirs_exist_ok=True)
        models = os.path.join(src, "models")
        for f in ("model.pt", "thresholds.json"):
            if os.path.isfile(os.path.join(models, f)) and not os.path.exists(os.path.join(dst, "models", f)):
                os.makedirs(os.path.join(dst, "models"), exist_ok=True)
                shutil.copy2(os.path.join(models, f), os.path.join(dst, "models", f))
    with open(os.path.join(app_dir, "main.py"), "w", encoding="utf-8") as f:
        f.write(MAIN_PY)
    return app_dir


def serve(args: argparse.Namespace) -> None:
    from cxrfx.label.auth import AuthSetupError, apply_options, check_realm

    # MONAI Label reads its settings from the environment when first imported
    os.environ.setdefault("MONAI_LABEL_AUTO_UPDATE_SCORING", "false")
    os.environ.setdefault("MONAI_LABEL_DATASTORE_AUTO_RELOAD", "true")
    try:  # before anything is built: a server that cannot check tokens must not start
        apply_options(os.environ, args.auth_realm, args.auth_client_id, args.auth_role)
        check_realm()
    except AuthSetupError as e:
        raise SystemExit(f"error: {e}") from None
    studies = args.studies
    if not studies.startswith(("http://", "https://")) and not os.path.isdir(studies):
        print(f"building phantom studies in {studies} ...", file=sys.stderr, flush=True)
        write_studies(studies, count=args.count, size=args.size)
    app_dir = prepare_app(args.app_dir, args.bundles)
    conf = [["configs", args.configs]] + [list(c) for c in args.conf or []]

    from cxrfx.label import compat

    compat.install()
    from monailabel.main import Main

    sys.argv = ["monailabel", "start_server", "--app", app_dir, "--studies", studies, "--host", args.host,
               "--port", str(args.port), "--log_level", args.log_level,
               "--uvicorn_app", "cxrfx.label.server:app"]  # MONAI Label's app + cxrfx request validation
    if args.limit_concurrency:  # uvicorn answers 503 past this many open connections / tasks (MONAI Label's option)
        sys.argv += ["--limit_concurrency", str(args.limit_concurrency)]
    for key, value in conf:
        sys.argv += ["--conf", key, value]
    Main().run()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cxrfx.label", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="start the MONAI Label server")
    s.add_argument("--studies", default=os.path.join(REPO, "runs", "label", "studies"),
                   help="studies folder (built from the phantom when missing) or a DICOMweb URL")
    s.add_argument("--app-dir", default=os.path.join(REPO, "runs", "label", "app"))
    s.add_argument("--bundles", default=os.path.join(REPO, "bundles"))
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--configs", default="demo.json", help="override configs of every bundle ('' for none)")
    s.add_argument("--conf", nargs=2, action="append", metavar=("KEY", "VALUE"), help="app setting")
    s.add_argument("--count", type=int, default=16, help="phantom images per dataset (new studies only)")
    s.add_argument("--size", type=int, default=256, help="phantom image size (new studies only)")
    s.add_argument("--log-level", default="info")
    s.add_argument("--limit-concurrency", type=int, default=None,
                   help="answer 503 beyond this many open connections (a bound for a server left running)")
    a = s.add_argument_group("authentication (MONAI Label's own, off by default; docs/monailabel.md)")
    a.add_argument("--auth-realm", metavar="URI", help="turn auth on with this Keycloak realm "
                   "(MONAI_LABEL_AUTH_REALM_URI, e.g. https://keycloak.example.org/realms/monailabel)")
    a.add_argument("--auth-client-id", metavar="ID", help="the realm's client for logins through /auth/token "
                   "(MONAI_LABEL_AUTH_CLIENT_ID; default monailabel-app)")
    a.add_argument("--auth-role", nargs=2, action="append", metavar=("ROLE", "NAME"),
                   help="realm role name of admin / reviewer / annotator / user (default monailabel-<ROLE>)")
    t = sub.add_parser("studies", help="write phantom studies (PNG + DICOM) into a folder")
    t.add_argument("--out", required=True)
    t.add_argument("--count", type=int, default=16)
    t.add_argument("--size", type=int, default=256)
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve(args)
    else:
        print("\n".join(write_studies(args.out, count=args.count, size=args.size)))


if __name__ == "__main__":
    main()
