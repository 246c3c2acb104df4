"""The detector a user would pick instead of finetune_det: MONAI's RetinaNet with a ResNet-18 FPN, set up as MONAI's
lung-nodule detection bundle sets up its detector (2D here): FPN on ResNet layers 1-2 plus a max-pool level
(strides 4/8/16), anchors ``AnchorGeneratorWithAnchorShape`` with 3 base shapes from the training boxes and
feature-map scales 1/2/4, ATSS (4 candidates, no centre-in-box rule), hard-negative sampler (64 per image,
30 % positive), MONAI's default BCE classification loss, score threshold 0.02, NMS 0.22.
"""
import torch
from monai.apps.detection.networks.retinanet_network import RetinaNet
from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape
from monai.networks.nets import resnet18
from cxrfx.networks.heads.detection import RetinaDetector

from collections import OrderedDict
from monai.networks.blocks.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool


class ResNetFPN(torch.nn.Module):
    """MONAI's resnet_fpn_feature_extractor (layers [1, 2] + max-pool level, 256 channels), without the
    torchvision IntermediateLayerGetter it wraps the backbone in."""

    def __init__(self, backbone, returned_layers=(1, 2), out_channels=256):
        super().__init__()
        self.backbone, self.layers = backbone, list(returned_layers)
        stage2 = backbone.in_planes // 8
        self.fpn = FeaturePyramidNetwork(2, [stage2 * 2 ** (i - 1) for i in self.layers], out_channels,
                                         LastLevelMaxPool(2))
        self.out_channels = out_channels

    def forward(self, x):
        b = self.backbone
        x = b.act(b.bn1(b.conv1(x)))
        if not b.no_max_pool:
            x = b.maxpool(x)
        feats = OrderedDict()
        for i in range(1, max(self.layers) + 1):
            x = getattr(b, f"layer{i}")(x)
            if i in self.layers:
                feats[str(i)] = x
        return self.fpn(feats)


def monai_retinanet(num_classes, base_shapes):
    """(network, detector) for ``num_classes`` and base anchor shapes [[h, w], ...] at the stride-4 level."""
    backbone = resnet18(spatial_dims=2, n_input_channels=1, conv1_t_stride=2, conv1_t_size=7)
    fe = ResNetFPN(backbone, [1, 2])
    net = RetinaNet(spatial_dims=2, num_classes=num_classes, num_anchors=len(base_shapes), feature_extractor=fe, size_divisible=16)
    ag = AnchorGeneratorWithAnchorShape(feature_map_scales=[1, 2, 4], base_anchor_shapes=base_shapes)
    det = RetinaDetector(net, ag)
    det.set_target_keys(box_key="boxes", label_key="labels")
    det.set_atss_matcher(num_candidates=4, center_in_gt=False)
    det.set_hard_negative_sampler(batch_size_per_image=64, positive_fraction=0.3, pool_size=20, min_neg=16)
    det.set_box_selector_parameters(score_thresh=0.02, topk_candidates_per_level=1000, nms_thresh=0.22, detections_per_img=100)
    return net, det
