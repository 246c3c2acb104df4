"""Export a :class:`TaskNet` to TorchScript (trace) or ONNX, checked numerically against eager.

Swin-based networks do not script (REFERENCE §7.6); tracing is exact for a fixed input size. Detection
exports the network part (head maps); anchors, decoding and NMS stay in Python (``build_detector``).
"""

from __future__ import annotations

import os
import warnings

import torch

from cxrfx.errors import CXRFXError

__all__ = ["export_torchscript", "export_onnx", "max_abs_difference"]


def _as_tuple(out) -> tuple[torch.Tensor, ...]:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def max_abs_difference(a, b) -> float:
    """Largest absolute difference between two outputs (tensor or tuple of tensors)."""
    return max(float((x - y).abs().max()) for x, y in zip(_as_tuple(a), _as_tuple(b)))


def _tolerance(expected, atol: float, rtol: float) -> float:
    return atol + rtol * max(float(e.abs().max()) for e in _as_tuple(expected))


def export_torchscript(net: torch.nn.Module, example: torch.Tensor, path: str | os.PathLike,
                       atol: float = 1e-5, rtol: float = 1e-4) -> torch.jit.ScriptModule:
    """Trace ``net`` on ``example`` (eval mode), save to ``path``, reload and compare with eager."""
    net = net.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", (DeprecationWarning, torch.jit.TracerWarning))
        traced = torch.jit.trace(net, example, strict=False, check_trace=False)
        torch.jit.save(traced, os.fspath(path))
        loaded = torch.jit.load(os.fspath(path))
        expected = net(example)
        diff, tol = max_abs_difference(expected, loaded(example)), _tolerance(expected, atol, rtol)
    if diff > tol:
        raise CXRFXError(f"{path}: TorchScript output differs from eager by {diff:.3g} (> {tol:.3g})")
    return loaded


def export_onnx(net: torch.nn.Module, example: torch.Tensor, path: str | os.PathLike, atol: float = 1e-5,
                rtol: float = 1e-4, opset: int = 18) -> float:
    """Export to ONNX (``torch.export`` based; needs onnx + onnxscript), run it with onnxruntime when installed; returns the
    max difference to eager (NaN when onnxruntime is absent)."""
    net = net.eval()
    path = os.fspath(path)
    with torch.no_grad():
        expected = _as_tuple(net(example))
    names = [f"output{i}" for i in range(len(expected))] if len(expected) > 1 else ["pred"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # torch.export-based exporter: the TorchScript-based one mis-exports windowed attention here.
        torch.onnx.export(net, (example,), path, input_names=["image"], output_names=names, opset_version=opset,
                          dynamo=True, verbose=False)
    try:
        import onnxruntime as ort
    except ImportError:
        return float("nan")
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": example.numpy()})
    diff = max(float(abs(torch.from_numpy(g) - e).max()) for g, e in zip(got, expected))
    tol = _tolerance(expected, atol, rtol)
    if diff > tol:
        raise CXRFXError(f"{path}: ONNX Runtime output differs from eager by {diff:.3g} (> {tol:.3g})")
    return diff
