"""TorchScript cost (issue 18): the Model Zoo's ``ckpt_export`` *scripts* the network, so does scripting Swin cost
speed? Times, in interleaved rounds on one input: the eager backbone of this tree, the eager backbone of an older
revision of ``networks/swin.py`` (``--before``, default ``HEAD``: what the scriptability change replaced), the
traced backbone (what ``cxrfx package`` exported so far) and the scripted one. Same weights throughout; also
prints the largest absolute difference of every variant's stage maps from eager. Ratios are the figures
(``scripted / eager``); the machines are shared.

    nice -n 19 .venv/bin/python bench/torchscript_speed.py [--size base] [--image 224] [--repeats 7] [--before HEAD]
        [--bundle finetune_seg]   # a bundle's whole network_def (needs its heads to script)
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from common import emit, interleaved_medians, machine
from cxrfx.networks.swin import swin

ROOT = Path(__file__).resolve().parent.parent
SWIN = "plugins/cxrfx/networks/swin.py"


def swin_at(revision: str):
    """The ``swin`` factory of ``networks/swin.py`` as committed at ``revision`` (imported from a temp file)."""
    source = subprocess.run(["git", "show", f"{revision}:{SWIN}"], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout
    path = Path(tempfile.mkdtemp()) / "swin_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("swin_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["swin_before"] = module
    spec.loader.exec_module(module)
    return module.swin


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="base", help="Swin size (tiny / small / base / large)")
    p.add_argument("--image", type=int, default=224)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--before", default="HEAD", help="git revision of swin.py for the 'eager_before' variant; "
                                                     "'' to leave it out")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: PyTorch's default)")
    p.add_argument("--bundle", default="", help="time a bundle's network_def (inference.json, --size as its "
                                                "backbone) instead of the bare backbone; --before is then unused")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    if a.bundle:
        from monai.bundle import ConfigParser

        parser = ConfigParser()
        parser.read_config(str(ROOT / "bundles" / a.bundle / "configs" / "inference.json"))
        parser["bundle_root"] = str(ROOT / "bundles" / a.bundle)
        parser["backbone"] = a.size
        eager = parser.get_parsed_content("network_def").eval()
        a.before = ""
    else:
        eager = swin(a.size, stem="conv").eval()
    x = torch.rand(a.batch, 1, a.image, a.image)
    models = {"eager": eager}
    if a.before:
        before = swin_at(a.before)(a.size, stem="conv").eval()
        before.load_state_dict(eager.state_dict())
        models["eager_before"] = before
    with torch.no_grad():
        models["traced"] = torch.jit.trace(eager, x, check_trace=False)
    models["scripted"] = torch.jit.script(eager)
    with torch.no_grad():
        reference = eager(x)
        as_list = (lambda out: [out] if isinstance(out, torch.Tensor) else list(out))  # noqa: E731
        diffs = {name: max((r - o).abs().max().item() for r, o in zip(as_list(reference), as_list(m(x))))
                 for name, m in models.items()}
        # TorchScript's profiling executor specialises during the first calls: warm up beyond one call
        times = interleaved_medians({name: (lambda m=m: m(x)) for name, m in models.items()}, a.repeats, warmup=3)
    emit({"machine": machine(), "network": a.bundle or "swin backbone", "swin": a.size, "image": a.image, "batch": a.batch, "threads": torch.get_num_threads(),
          "seconds": {k: round(v, 4) for k, v in times.items()},
          "ratio_to_eager": {k: round(v / times["eager"], 3) for k, v in times.items()},
          "max_abs_diff_to_eager": diffs})


if __name__ == "__main__":
    main()
