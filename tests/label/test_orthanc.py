"""Orthanc (Debian's ``orthanc`` + ``orthanc-dicomweb``) as the DICOMweb datastore of the MONAI Label server.

Orthanc is installed with apt-get when missing and permitted (root); only when it truly cannot be installed is
the test skipped, with the reason. Orthanc and the label server run on free loopback ports and are stopped in
teardown. Flow: upload the phantom's DX DICOMs, see them (CR/DX filter) in MONAI Label, infer a segmentation
through the DICOMweb datastore with ``save_label``, find the DICOM SEG in Orthanc referencing the series.
"""

from __future__ import annotations

import glob
import json
import os
import shutil

import pytest
from label_server import Server, apt_install, free_port, http, multipart, read_json, start_label_server

PLUGIN_DIRS = ["/usr/share/orthanc/plugins", "/usr/lib/orthanc"]


def _orthanc_binary() -> str:
    found = shutil.which("Orthanc") or (os.path.exists("/usr/sbin/Orthanc") and "/usr/sbin/Orthanc")
    if found and _dicomweb_plugin():
        return found
    apt_install(["orthanc", "orthanc-dicomweb"], "Orthanc")
    return shutil.which("Orthanc") or "/usr/sbin/Orthanc"


def _dicomweb_plugin() -> str | None:
    for d in PLUGIN_DIRS:
        hits = sorted(glob.glob(os.path.join(d, "libOrthancDicomWeb.so*")))
        if hits:
            return hits[0]
    return None


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    binary = _orthanc_binary()
    tmp = tmp_path_factory.mktemp("orthanc")
    port = free_port()
    config = {"Name": "cxrfx-test", "StorageDirectory": str(tmp / "db"), "IndexDirectory": str(tmp / "db"),
              "HttpPort": port, "DicomPort": free_port(), "DicomServerEnabled": False, "RemoteAccessAllowed": False,
              "AuthenticationEnabled": False, "Plugins": [_dicomweb_plugin()],
              "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True}}
    (tmp / "orthanc.json").write_text(json.dumps(config))
    srv = Server([binary, str(tmp / "orthanc.json")], str(tmp / "orthanc.log"))
    srv.url = f"http://127.0.0.1:{port}"
    try:
        srv.wait_http(srv.url + "/system", 60)
        yield srv
    finally:
        srv.stop()


def test_orthanc_dicomweb_datastore_gets_dicom_seg(orthanc, tmp_path_factory, label_python, label_env, studies,
                                                   bundles):
    uploaded = []
    for path in sorted(glob.glob(os.path.join(studies, "phantom_det_*.dcm"))):
        with open(path, "rb") as f:
            status, body = http("POST", orthanc.url + "/instances", f.read(), {"Content-Type": "application/dicom"})
        assert status == 200, body[:200]
        uploaded.append(read_json(body)["ParentSeries"])
    series_uids = [read_json(http("GET", f"{orthanc.url}/series/{s}")[1])["MainDicomTags"]["SeriesInstanceUID"]
                   for s in uploaded]

    server, url = start_label_server(tmp_path_factory.mktemp("srv_dicomweb"), label_python, label_env,
                                     orthanc.url + "/dicom-web", bundles)
    try:
        status, body = http("GET", url + "/info/")
        assert status == 200
        assert read_json(body)["datastore"]["total"] == len(series_uids), "the DX series are not all listed"

        image = series_uids[0]
        body, ctype = multipart({"params": ("", json.dumps({"save_label": True}).encode(), "text/plain")})
        status, out = http("POST", f"{url}/infer/cxr_segmentation?image={image}&output=json", body,
                           {"Content-Type": ctype})
        assert status == 200, out[:500] + server.tail().encode()
        assert read_json(out)["image_size"]

        status, body = http("GET", orthanc.url + "/dicom-web/series?Modality=SEG")
        segs = read_json(body) if body.strip() else []
        assert len(segs) == 1, "no DICOM SEG in Orthanc after the inference"
        study, seg_series = segs[0]["0020000D"]["Value"][0], segs[0]["0020000E"]["Value"][0]
        meta = read_json(http("GET", f"{orthanc.url}/dicom-web/studies/{study}/series/{seg_series}/metadata")[1])[0]
        assert meta["00080060"]["Value"] == ["SEG"]
        referenced = meta["00081115"]["Value"][0]["0020000E"]["Value"][0]  # ReferencedSeriesSequence
        assert referenced == image
        assert meta["0008103E"]["Value"][0].startswith("cxrfx model output")

        # a model output does not make the image "labelled": active learning may still propose it
        status, body = http("POST", f"{url}/activelearning/random", b"{}", {"Content-Type": "application/json"})
        assert status == 200 and read_json(body)["id"] in series_uids
    finally:
        server.stop()
