"""The ``upernet_fx`` segmentation head type: the reference's structure and sizes.

Numerical equality with the reference code is in ``tests/test_networks_checkpoints.py`` (fixtures generated from
the reference's module definitions by ``tests/fixtures/make_fx_seg_fixture.py``); training, scoring and predicting
through the registry in ``tests/test_networks_heads_registry.py`` (parametrised over the head types).
"""

from __future__ import annotations

import torch

from cxrfx.networks import FoundationX
from cxrfx.networks.heads import get_head_type, registered_heads
from cxrfx.networks.heads.upernet_fx import FXUperNetDecoder

TINY = dict(backbone="tiny", backbone_kwargs={"embed_dim": 16, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1),
                                              "window_size": 4, "drop_path_rate": 0.0})


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_swin_b_sizes_are_the_reference_counts():
    """REFERENCE §1.4, counted on the reference model: PSP 19.93 M, FPN fuse 0.97 M, six heads 0.021 M."""
    decoder = FXUperNetDecoder([128, 256, 512, 1024])
    psp = _count(decoder.psp_branches) + _count(decoder.psp_bottleneck)
    fpn = _count(decoder.lateral) + _count(decoder.smooth) + _count(decoder.fuse)
    assert round(psp / 1e6, 2) == 19.93 and round(fpn / 1e6, 2) == 0.97
    model = FoundationX(**TINY, seg_heads={"a": 1, "b": 1, "c": 1, "d": 1, "chestx_det": 13, "e": 1},
                        head_types={"seg": "upernet_fx"})
    assert model.seg_decoder.out_channels == 16  # the FPN width is stage 0's: 128 for Swin-B
    heads_at_128 = sum((128 * 9 + 1) * n for n in (1, 1, 1, 1, 13, 1))
    assert round(heads_at_128 / 1e6, 3) == 0.021
    # one smoothing conv for the three levels (the reference's [conv] * 3), or one per level
    assert isinstance(decoder.smooth, torch.nn.Conv2d)
    assert len(FXUperNetDecoder([128, 256, 512, 1024], shared_smoothing=False).smooth) == 3


def test_registered_and_configurable():
    assert "upernet_fx" in registered_heads("seg") and get_head_type("upernet_fx", "seg").task == "seg"
    torch.manual_seed(0)
    a = FoundationX(**TINY, seg_heads={"s": 2}, head_types={"seg": "upernet_fx"}).eval()
    b = FoundationX(**TINY, seg_heads={"s": 2}, head_types={"seg": "upernet_fx"},
                    head_options={"seg": {"align_corners": False}}).eval()
    b.load_state_dict(a.state_dict())
    x = torch.rand(1, 1, 64, 96)
    with torch.no_grad():
        out_a, out_b = a(x, "seg"), b(x, "seg")
    assert out_a.shape == (1, 2, 64, 96) and not torch.allclose(out_a, out_b)  # the option reaches every upsampling
    assert {k.split(".")[0] for k in a.state_dict()} == {"backbone", "input_mean", "input_std", "seg_decoder",
                                                         "seg_heads"}
