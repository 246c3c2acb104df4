"""The web viewer MONAI Label serves (OHIF, in the monailabel wheel at ``/ohif/``) in a real headless Chromium.

Chromium (Debian's ``chromium``) and Orthanc are installed with apt-get when missing and permitted, as in
``test_orthanc.py``; only when that is impossible is the test skipped, with the reason. The browser is driven
over the DevTools protocol (``cdp.py``, standard library only). What a person would see, in three steps:

1. OHIF's viewer route for an Orthanc study: the image frames come through MONAI Label's DICOMweb proxy and the
   radiograph is painted in OHIF's viewport (read back from its canvas), screenshot ``viewer_study.png``.
2. From inside that page, the request OHIF's MONAI Label panel sends for auto-segmentation (its
   ``MonaiLabelClient.infer``: ``POST infer/<model>?image=<SeriesInstanceUID>&output=image``, form field
   ``params`` with ``result_extension: ".nrrd"``, ``result_dtype: "uint8"``, ``result_compress: false``,
   ``restore_label_idx: false``): the NRRD reply is parsed in the page as the panel does (raw uint8) and must be
   a non-empty index map of the image's size with the model's label values.
3. That mask drawn over the radiograph where OHIF shows it (a canvas laid over the viewport, screenshot
   ``viewer_overlay.png``), and the same request with the panel's per-model option ``save_label`` stores a DICOM
   SEG in Orthanc that OHIF then lists in the study.

Not done through OHIF's own widgets, because they cannot on a radiograph (seen with this wheel's build): the
"monai-label" mode's hanging protocol is a 3-viewport volume (MPR) layout that displays nothing for a
single-frame DX series, and OHIF's SEG loader requires Plane Orientation in the SEG, which a DX/CR SEG (no
Frame of Reference) does not have. Screenshots and the browser's console log are kept in the test's tmp dir.
"""

from __future__ import annotations

import glob
import io
import json
import os
import shutil
import time

import numpy as np
import pytest
from cdp import CDPError, Chromium, chromium_binary
from label_server import apt_install, http, multipart, read_json, start_label_server
from PIL import Image
from test_orthanc import orthanc  # noqa: F401 (the module-scoped Orthanc fixture, installed when missing)

MODEL = "cxr_segmentation"
# MonaiLabelClient.infer of the wheel's OHIF extension (3933.bundle.*.js), same URL, form and headers; the
# panel's options dialog adds per-model params (OPTIONS) in front of its own
PLUGIN_INFER = """(async () => {
  let url = new URL('infer/' + encodeURIComponent(%(model)s), window.location.origin + '/');
  url.searchParams.append('image', %(image)s);
  url.searchParams.append('output', 'image');
  const params = Object.assign(%(options)s, {result_extension: '.nrrd', result_dtype: 'uint8',
                                             result_compress: false});
  params.restore_label_idx = false;
  const form = new FormData();
  form.append('params', JSON.stringify(params));
  const r = await fetch(url.toString(), {method: 'POST', body: form,
                                         headers: {accept: ['application/json', 'multipart/form-data']}});
  const bytes = new Uint8Array(await r.arrayBuffer());
  if (r.status !== 200) return {status: r.status, text: new TextDecoder().decode(bytes.slice(0, 300))};
  // the panel's nrrd-js parse of a raw file: header lines up to the blank line, then the voxels
  let end = 0;
  while (end < bytes.length - 1 && !(bytes[end] === 10 && bytes[end + 1] === 10)) end++;
  const header = new TextDecoder().decode(bytes.slice(0, end));
  const fields = Object.fromEntries(header.split('\\n').slice(1).map(l => l.split(': ')));
  const data = bytes.slice(end + 2);
  const counts = {};
  for (const v of data) counts[v] = (counts[v] || 0) + 1;
  window.__cxrfxMask = {sizes: fields.sizes.split(' ').map(Number), data: Array.from(data)};
  return {status: r.status, magic: header.split('\\n')[0], fields, n: data.length, counts};
})()"""
# where OHIF painted the radiograph: the bounding box of non-black pixels of its (2D) viewport canvas, in CSS px
IMAGE_BOX = """(() => {
  const c = document.querySelector('canvas.cornerstone-canvas');
  if (!c || !c.width || !c.height) return null;
  const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let x0 = c.width, y0 = c.height, x1 = -1, y1 = -1, sum = 0, n = 0;
  for (let y = 0; y < c.height; y++) for (let x = 0; x < c.width; x++) {
    const v = px[4 * (y * c.width + x)];
    if (v > 12) { n++; sum += v; if (x < x0) x0 = x; if (x > x1) x1 = x; if (y < y0) y0 = y; if (y > y1) y1 = y; }
  }
  if (n < 1000) return null;
  const r = c.getBoundingClientRect(), s = r.width / c.width;
  return {box: [r.left + x0 * s, r.top + y0 * s, r.left + (x1 + 1) * s, r.top + (y1 + 1) * s], lit: n, mean: sum / n};
})()"""
# the returned index map over that box, one colour per label, as the panel's labelmap would be shown
DRAW_MASK = """(() => {
  const m = window.__cxrfxMask, [x0, y0, x1, y1] = %(box)s, [w, h] = m.sizes;
  const c = document.createElement('canvas');
  c.id = 'cxrfx-overlay'; c.width = w; c.height = h;
  Object.assign(c.style, {position: 'fixed', left: x0 + 'px', top: y0 + 'px', width: (x1 - x0) + 'px',
                          height: (y1 - y0) + 'px', pointerEvents: 'none', imageRendering: 'pixelated',
                          zIndex: 1000});
  const colours = [[0, 0, 0], [230, 60, 60], [60, 200, 90], [70, 120, 240], [240, 200, 40], [200, 80, 220]];
  const g = c.getContext('2d'), img = g.createImageData(w, h);
  m.data.forEach((v, i) => { const k = colours[v %% colours.length];
    img.data.set([k[0], k[1], k[2], v ? 110 : 0], 4 * i); });
  g.putImageData(img, 0, 0);
  document.body.appendChild(c);
  return true;
})()"""
DISMISS_BANNER = """(() => { const b = Array.from(document.querySelectorAll('button'))
  .find(e => /Confirm and Hide/.test(e.textContent)); if (b) b.click(); return true; })()"""
SEG_LISTED = """Array.from(document.querySelectorAll('[id^=thumbnail-]')).map(e => e.textContent)
  .find(t => /SEG/.test(t) && /cxrfx model output/.test(t)) || null"""


def _chromium() -> str:
    found = chromium_binary()
    if not found:
        start = time.time()
        apt_install(["chromium"], "Chromium")
        print(f"chromium installed with apt-get in {time.time() - start:.0f} s")
        found = chromium_binary()
    if not found:
        pytest.skip("apt-get installed chromium but no chromium binary is on PATH")
    return found


def _wait(check, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"{what}: not seen in {timeout} s")


def _annotate_and_train(url: str, images: dict[str, tuple[int, int]], labels: dict[str, int]) -> None:
    """Box-shaped annotations (right lung on the image's left, left lung on its right, heart low in the middle)
    saved as ``final`` labels through the API, then 100 training iterations (~45 s on 2 idle cores): the served
    model's output then has that layout, where the seeded weights give one class over the whole image."""
    for image, (rows, columns) in images.items():
        index = np.zeros((rows, columns), np.uint8)
        index[rows // 6:rows * 4 // 5, columns // 10:columns * 2 // 5] = labels["lung_right"]
        index[rows // 6:rows * 4 // 5, columns * 3 // 5:columns * 9 // 10] = labels["lung_left"]
        yy, xx = np.mgrid[:rows, :columns]
        index[(yy - rows * 2 // 3) ** 2 + (xx - columns // 2) ** 2 < (rows // 6) ** 2] = labels["heart"]
        png = io.BytesIO()
        Image.fromarray(index).save(png, format="PNG")
        body, ctype = multipart({"label": ("label.png", png.getvalue(), "image/png")})
        status, out = http("PUT", f"{url}/datastore/label?image={image}&tag=final", body, {"Content-Type": ctype})
        assert status == 200, out[:300]
    status, out = http("POST", url + "/train/cxr_segmentation", json.dumps({"iterations": 100}).encode(),
                       {"Content-Type": "application/json"})
    assert status == 200, out[:300]
    deadline = time.time() + 900  # ~45 s on idle cores; a loaded machine (2-thread torch) can be 10x slower
    while time.time() < deadline:
        task = read_json(http("GET", url + "/train/?check_if_running=false")[1])
        if task.get("status") in ("DONE", "ERROR"):
            assert task["status"] == "DONE", str(task)[-1000:]
            return
        time.sleep(2)
    raise AssertionError("training still running after 900 s")


def _centroid(index: np.ndarray, value: int) -> tuple[float, float]:
    yy, xx = np.nonzero(index == value)
    assert len(yy), f"label {value} absent from the returned mask"
    return float(yy.mean()), float(xx.mean())


def _stored_seg(orthanc_url: str, study: str, out):
    """The model-output DICOM SEG in Orthanc, read back (``cxrfx.outputs.dicom_seg.read_dicom_seg``)."""
    from cxrfx.outputs.dicom_seg import read_dicom_seg

    series = [s["0020000E"]["Value"][0] for s in _segs(orthanc_url)
              if s["0008103E"]["Value"][0].startswith("cxrfx model output")]
    assert len(series) == 1, series
    found = read_json(http("GET", f"{orthanc_url}/dicom-web/studies/{study}/series/{series[0]}/instances")[1])
    sop = found[0]["00080018"]["Value"][0]
    found = read_json(http("POST", orthanc_url + "/tools/lookup", sop.encode())[1])
    status, body = http("GET", f"{orthanc_url}/instances/{found[0]['ID']}/file")
    assert status == 200
    out.write_bytes(body)
    return read_dicom_seg(out)


def _segs(orthanc_url: str) -> list[dict]:
    body = http("GET", f"{orthanc_url}/dicom-web/series?Modality=SEG&includefield=0008103E")[1]
    return read_json(body) if body.strip() else []


def _overlay_fraction(png: str, box) -> float:
    """Share of the image box in a screenshot that is tinted (not grey): the overlay, not the radiograph."""
    rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    inner = rgb[y0 + 2:y1 - 2, x0 + 2:x1 - 2]
    return float(((inner.max(-1) - inner.min(-1)) > 40).mean())


def test_ohif_viewer_shows_study_and_segmentation(orthanc, tmp_path_factory, label_python,  # noqa: F811
                                                  label_env, studies, bundles):
    binary = _chromium()
    for path in sorted(glob.glob(os.path.join(studies, "phantom_det_*.dcm"))):
        with open(path, "rb") as f:
            assert http("POST", orthanc.url + "/instances", f.read(), {"Content-Type": "application/dicom"})[0] == 200
    images, metas = {}, {}
    for found in read_json(http("GET", orthanc.url + "/dicom-web/series?Modality=DX")[1]):
        st, se = found["0020000D"]["Value"][0], found["0020000E"]["Value"][0]
        metas[se] = (st, read_json(http("GET", f"{orthanc.url}/dicom-web/studies/{st}/series/{se}/metadata")[1])[0])
        images[se] = (metas[se][1]["00280010"]["Value"][0], metas[se][1]["00280011"]["Value"][0])
    series = sorted(images)[0]
    (study, meta), (rows, columns) = metas[series], images[series]

    art = tmp_path_factory.mktemp("viewer")
    server, url = start_label_server(tmp_path_factory.mktemp("srv_viewer"), label_python, label_env,
                                     orthanc.url + "/dicom-web", bundles)
    labels = read_json(http("GET", url + "/info/")[1])["models"][MODEL]["labels"]
    browser = Chromium(binary, str(art / "profile"), str(art / "chromium.log"))
    page = None
    try:
        start = time.time()
        _annotate_and_train(url, images, labels)
        print(f"annotated {len(images)} images and trained 100 iterations in {time.time() - start:.0f} s")
        page = browser.page()
        start = time.time()
        page.navigate(f"{url}/ohif/viewer?StudyInstanceUIDs={study}")
        frame = f"{url}/proxy/dicom/wado/studies/{study}/series/{series}/instances/"
        _wait(lambda: [r for r in page.responses() if r[0].startswith(frame) and r[0].endswith("/frames/1")
                       and r[1] == 200], 90, "OHIF fetching the image frame through MONAI Label's DICOMweb proxy")
        shown = page.wait_for(IMAGE_BOX, 60, "the radiograph painted in OHIF's viewport")
        x0, y0, x1, y1 = shown["box"]
        # the whole image is shown, undistorted: the painted box has the image's aspect ratio
        assert abs((x1 - x0) / (y1 - y0) - columns / rows) < 0.03 * columns / rows, (shown, rows, columns)
        print(f"OHIF painted the study in {time.time() - start:.1f} s: box {[round(v) for v in shown['box']]}")
        page.eval(DISMISS_BANNER)
        time.sleep(1)
        page.screenshot(str(art / "viewer_study.png"))

        result = page.eval(PLUGIN_INFER % {"model": json.dumps(MODEL), "image": json.dumps(series),
                                           "options": "{}"}, timeout=180)
        assert result["status"] == 200, result
        assert result["magic"].startswith("NRRD") and result["fields"]["type"] == "uint8", result
        assert result["fields"]["sizes"] == f"{columns} {rows}" and result["n"] == rows * columns, result
        counts = {int(k): v for k, v in result["counts"].items()}
        assert set(counts) <= {0, *labels.values()}, counts
        index = np.asarray(page.eval("window.__cxrfxMask.data"), np.uint8).reshape(rows, columns)
        # laid out as annotated: the right lung left of the left lung, the heart below both (row 0 at the top)
        right, left, heart = (_centroid(index, labels[k]) for k in ("lung_right", "lung_left", "heart"))
        assert right[1] < heart[1] < left[1] and heart[0] > max(right[0], left[0]), (right, left, heart)
        print(f"plugin request: NRRD {result['fields']['sizes']}, label value counts {counts}")

        page.eval(DRAW_MASK % {"box": json.dumps(shown["box"])})
        time.sleep(0.5)
        page.screenshot(str(art / "viewer_overlay.png"))
        labelled = sum(v for k, v in counts.items() if k) / (rows * columns)
        tinted = _overlay_fraction(str(art / "viewer_overlay.png"), shown["box"])
        assert abs(tinted - labelled) < 0.1, (tinted, labelled)

        # the panel's options (per-model params) with save_label: the result goes to Orthanc as DICOM SEG
        saved = page.eval(PLUGIN_INFER % {"model": json.dumps(MODEL), "image": json.dumps(series),
                                          "options": '{"save_label": true}'}, timeout=180)
        assert saved["status"] == 200 and saved["counts"] == result["counts"], saved
        described = sorted(s["0008103E"]["Value"][0] for s in _segs(orthanc.url))
        assert described == ["cxrfx annotation (final)"] * len(images) + ["cxrfx model output (original)"]
        back = _stored_seg(orthanc.url, study, art / "stored_seg.dcm")
        assert back.sop_instance_uid == meta["00080018"]["Value"][0]
        for name, k in labels.items():  # the SEG holds exactly the NRRD the viewer got, row 0 at the top
            mask = back.masks.get(name, np.zeros((rows, columns), bool))
            assert np.array_equal(mask, index == k), name
        page.navigate(f"{url}/ohif/viewer?StudyInstanceUIDs={study}")
        listed = page.wait_for(SEG_LISTED, 60, "the DICOM SEG listed in OHIF's study browser")
        print(f"OHIF lists the stored segmentation: {listed!r}")
    except CDPError as e:
        raise AssertionError(f"browser: {e}\n{server.tail()}") from None
    finally:
        if page is not None:
            (art / "console.log").write_text("\n".join(page.console()))
        browser.close()
        server.stop()
        shutil.rmtree(art / "profile", ignore_errors=True)  # the browser's profile: megabytes, no evidence
        print(f"viewer artefacts: {art}")
