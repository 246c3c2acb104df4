"""TaskNet as a bundle's ``network_def``: MONAI's ``verify_net_in_out`` and ``ckpt_export`` accept it."""

from __future__ import annotations

import json

import torch
from monai.bundle import ConfigParser, ckpt_export, verify_net_in_out

NETWORK_DEF = {
    "_target_": "cxrfx.networks.TaskNet", "task": "seg", "backbone": "tiny",
    "backbone_kwargs": {"embed_dim": 24, "depths": [2, 2, 2, 2], "num_heads": [1, 2, 3, 6], "window_size": 4},
    "seg_heads": {"phantom_seg": 2}, "seg_channels": 16, "psp_channels": 32,
}
META = {
    "version": "0.1.0", "monai_version": "1.6.1", "pytorch_version": "2.13.0",
    "network_data_format": {
        "inputs": {"image": {"type": "image", "format": "magnitude", "modality": "xray", "num_channels": 1,
                             "spatial_shape": [64, 64], "dtype": "float32", "value_range": [0, 1],
                             "is_patch_data": False, "channel_def": {"0": "image"}}},
        "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": 2, "spatial_shape": [64, 64],
                             "dtype": "float32", "value_range": [0, 1], "is_patch_data": False,
                             "channel_def": {"0": "lung", "1": "heart"}}},
    },
}


def test_verify_net_in_out_and_ckpt_export(tmp_path):
    meta, config = tmp_path / "metadata.json", tmp_path / "inference.json"
    meta.write_text(json.dumps(META))
    config.write_text(json.dumps({"network_def": NETWORK_DEF}))
    verify_net_in_out(net_id="network_def", meta_file=str(meta), config_file=str(config), n=1, device="cpu")
    parser = ConfigParser()
    parser.read_config(str(config))
    net = parser.get_parsed_content("network_def").eval()
    torch.save(net.state_dict(), tmp_path / "model.pt")
    ckpt_export(net_id="network_def", filepath=str(tmp_path / "model.ts"), ckpt_file=str(tmp_path / "model.pt"),
                meta_file=str(meta), config_file=str(config), use_trace=True, input_shape=[1, 1, 64, 64])
    loaded = torch.jit.load(str(tmp_path / "model.ts"))
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x), atol=1e-5, rtol=1e-4)
