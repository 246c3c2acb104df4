"""The network-building checks of a staged bundle, run as a script in its own process by ``checks.py``.

Run as ``python checks_runner.py '<json request>'`` with the staged bundle as working directory. It never
imports ``cxrfx``: the bundle's configs do (through ``$import scripts``), exactly as ``python -m monai.bundle
run`` from the bundle root would, and the report says which file ``cxrfx`` came from. Each check is MONAI's
own function, in the zoo CI's order (REFERENCE §7.6):

1. ``verify_net_in_out`` on ``configs/inference.json``;
2. ``ConfigWorkflow(...).check_properties() == []`` for train (``train.json``), train + evaluate, and
   inference (without weights, the inference ``initialize`` that loads them is skipped);
3. the weights match ``network_def`` tensor for tensor, then ``ckpt_export`` to TorchScript by tracing (Swin
   does not script) at the inference ``image_size``, reloaded with ``torch.jit.load`` and compared with the
   eager network. Without weights the network's initial state is exported into the scratch folder;
4. ``network_data_format`` value ranges: the inference config's own pre-processing on a synthetic radiograph, then
   ``network_def`` on what it gives (not a MONAI function: the zoo's CI checks only that they are numbers).

Workflows run with ``bundle_root`` set to a scratch folder that links to the staged files, so data and logs
they create never land in the archive. The last stdout line is ``CXRFX-CHECKS {json report}``.
"""

import json
import os
import sys
import time
import traceback

_HERE = os.path.dirname(os.path.abspath(__file__))
# this script's folder is not the bundle's business: keep its siblings off the import path
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]


def _problem(name, exc):
    """One line per exception in the chain: MONAI wraps the cause ("Failed to instantiate ...") that says why."""
    lines, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        lines.append(traceback.format_exception_only(type(exc), exc)[-1].strip().splitlines()[0])
        exc = exc.__cause__ or exc.__context__
    return f"{name}: " + " <- ".join(lines)


def _scratch_root(bundle, work_dir):
    root = os.path.join(work_dir, "bundle_root")
    os.makedirs(root, exist_ok=True)
    for entry in os.listdir(bundle):
        link = os.path.join(root, entry)
        if not os.path.lexists(link):
            os.symlink(os.path.join(bundle, entry), link)
    return root


def _workflows(bundle, weights):
    def have(name):
        return os.path.isfile(os.path.join(bundle, "configs", name))

    found = []
    if have("train.json"):
        found.append(("train", ["train.json"], {}))
        if have("evaluate.json"):
            found.append(("train", ["train.json", "evaluate.json"], {}))
    found.append(("infer", ["inference.json"], {} if weights else {"initialize": []}))
    return found


def _state_dict(path):
    import torch

    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        return obj["model"], "model"
    return obj, ""


def _export_shape(parser, channels):
    size = parser.get("image_size")
    if isinstance(size, int):
        return [1, channels, size, size]
    from monai.bundle.scripts import _get_fake_input_shape

    return list(_get_fake_input_shape(parser=parser))


def _check_export(bundle, work_dir, weights, report):
    import torch
    from monai.bundle import ConfigParser, ckpt_export

    meta = os.path.join("configs", "metadata.json")
    config = os.path.join("configs", "inference.json")
    parser = ConfigParser()
    parser.read_config(config)
    parser.read_meta(meta)
    net = parser.get_parsed_content("network_def")
    expected = net.state_dict()
    if weights:
        ckpt = os.path.join(bundle, "models", "model.pt")
        state, key = _state_dict(ckpt)
        missing = [k for k in expected if k not in state]
        unexpected = [k for k in state if k not in expected]
        shapes = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
        for label, keys in (("tensors of network_def missing from", missing),
                            ("tensors not in network_def found in", unexpected), ("shape mismatches in", shapes)):
            if keys:
                report["problems"].append(f"weights: {len(keys)} {label} models/model.pt (first: {keys[:3]})")
        if missing or unexpected or shapes:
            return
        target = os.path.join(bundle, "models", "model.ts")
    else:
        ckpt, key, state = os.path.join(work_dir, "initial.pt"), "", expected
        torch.save(expected, ckpt)
        target = os.path.join(work_dir, "model.ts")
    channels = parser.get("_meta_#network_data_format#inputs#image#num_channels", 1)
    shape = _export_shape(parser, channels)
    ckpt_export(net_id="network_def", filepath=target, ckpt_file=ckpt, meta_file=meta, config_file=config,
                key_in_ckpt=key, use_trace=True, input_shape=shape)
    scripted = torch.jit.load(target, map_location="cpu")
    net.load_state_dict(state)
    net.eval()
    x = torch.rand(*shape)
    with torch.no_grad():
        eager, traced = net(x), scripted(x)
    if not (isinstance(eager, torch.Tensor) and isinstance(traced, torch.Tensor)):
        report["problems"].append(f"ckpt_export: network_def returns {type(eager).__name__}, not a pred tensor")
    elif eager.shape != traced.shape or not torch.allclose(eager, traced, rtol=1e-3, atol=1e-4):
        diff = (eager - traced).abs().max().item() if eager.shape == traced.shape else "shape"
        report["problems"].append(f"ckpt_export: TorchScript output differs from the eager network ({diff})")
    report["export_shape"] = shape
    report["exported"] = target if weights else None
    if not weights:
        os.remove(target)
        os.remove(ckpt)


def _declared_range(fmt, side, key):
    found = ((fmt.get(side) or {}).get(key) or {}).get("value_range")
    if not (isinstance(found, list) and len(found) == 2 and all(isinstance(v, (int, float)) for v in found)
            and found[0] < found[1]):
        raise ValueError(f"network_data_format {side}.{key}.value_range must be [MIN, MAX], found {found!r}")
    return float(found[0]), float(found[1])


def _check_value_ranges(bundle, work_dir, report):
    """The declared ranges against what the network is given and gives. The probe is a 16-bit image, half black
    and half white (both ends of its range), through the ``dataset`` of ``inference.json`` (loading, normalising,
    resizing as a user's image); the input must stay inside the declared input range and reach both of its
    ends (a wider declared range is not what the network sees); ``network_def`` (eval) on it must stay inside
    the declared output range (initial weights give logits of both signs, so a probability range fails)."""
    import numpy as np
    import torch
    from monai.bundle import ConfigParser
    from PIL import Image

    parser = ConfigParser()
    parser.read_config(os.path.join("configs", "inference.json"))
    parser.read_meta(os.path.join("configs", "metadata.json"))
    fmt = parser.get("_meta_#network_data_format") or {}
    low, high = _declared_range(fmt, "inputs", "image")
    out_low, out_high = _declared_range(fmt, "outputs", "pred")
    parser["bundle_root"] = _scratch_root(bundle, work_dir)
    side = 2 * int(parser.get_parsed_content("image_size", default=224))
    probe = np.zeros((side, side), np.uint16)
    probe[:, side // 2:] = np.iinfo(np.uint16).max
    parser["input_path"] = os.path.join(work_dir, "value_range_probe.png")
    Image.fromarray(probe).save(parser["input_path"])
    item = parser.get_parsed_content("dataset")[0]
    if "error" in item:
        raise ValueError(f"the inference pre-processing refused the probe image: {item['error']}")
    image = torch.as_tensor(item["image"]).float()
    seen = (float(image.min()), float(image.max()))
    report["value_ranges"] = {"image": seen}
    if seen[0] < low or seen[1] > high:
        report["problems"].append(f"value_range: the network is given values in {list(seen)}, outside the declared "
                                  f"input range {[low, high]}")
    elif seen != (low, high):
        report["problems"].append(f"value_range: the declared input range {[low, high]} is wider than what the "
                                  f"pre-processing gives ({list(seen)})")
    net = parser.get_parsed_content("network_def").eval()
    with torch.no_grad():
        out = net(image[None])
    tensors, pending = [], [out]
    while pending:  # a tensor, or tuples / lists / dicts of them (a detector's maps)
        item = pending.pop()
        if isinstance(item, torch.Tensor):
            tensors.append(item)
        else:
            pending.extend(item.values() if isinstance(item, dict) else item)
    got = (min(float(t.min()) for t in tensors), max(float(t.max()) for t in tensors))
    report["value_ranges"]["pred"] = got
    if got[0] < out_low or got[1] > out_high:
        report["problems"].append(f"value_range: network_def gives values in {list(got)}, outside the declared "
                                  f"output range {[out_low, out_high]}")


def main(request):
    bundle, work_dir, package = request["bundle"], request["work_dir"], request["package"]
    weights = request["weights"]
    os.chdir(bundle)
    sys.path.insert(0, bundle)  # what `python -m monai.bundle run` from the bundle root gives
    report = {"problems": [], "seconds": {}}
    meta = os.path.join(bundle, "configs", "metadata.json")
    logging_conf = os.path.join(bundle, "configs", "logging.conf")

    start = time.time()
    try:
        from monai.bundle import verify_net_in_out

        verify_net_in_out(net_id="network_def", meta_file=meta, config_file=os.path.join("configs", "inference.json"),
                          device="cpu")
    except Exception as exc:  # every check runs and reports, so the user sees all problems at once
        report["problems"].append(_problem("verify_net_in_out", exc))
    report["seconds"]["verify_net_in_out"] = round(time.time() - start, 1)

    from monai.bundle import ConfigWorkflow

    root = _scratch_root(bundle, work_dir)
    for kind, configs, overrides in _workflows(bundle, weights):
        name = f"check_properties({'+'.join(configs)}, {kind})"
        start = time.time()
        try:
            workflow = ConfigWorkflow(config_file=[os.path.join(bundle, "configs", c) for c in configs],
                                      meta_file=meta,
                                      logging_file=logging_conf if os.path.isfile(logging_conf) else None,
                                      workflow_type=kind, bundle_root=root, **overrides)
            workflow.initialize()
            missing = workflow.check_properties()
            if missing:
                report["problems"].append(f"{name}: properties not wired as MONAI expects: {missing}")
        except Exception as exc:
            report["problems"].append(_problem(name, exc))
        report["seconds"][name] = round(time.time() - start, 1)

    start = time.time()
    try:
        _check_export(bundle, work_dir, weights, report)
    except Exception as exc:
        report["problems"].append(_problem("ckpt_export", exc))
    report["seconds"]["ckpt_export"] = round(time.time() - start, 1)

    start = time.time()
    try:
        _check_value_ranges(bundle, work_dir, report)
    except Exception as exc:
        report["problems"].append(_problem("value_range", exc))
    report["seconds"]["value_range"] = round(time.time() - start, 1)

    loaded = sys.modules.get(package)
    report["package_file"] = getattr(loaded, "__file__", None)
    print("CXRFX-CHECKS " + json.dumps(report), flush=True)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
