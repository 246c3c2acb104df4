"""Task heads behind one interface (:mod:`.registry`); importing the package registers the built-in types:
``linear`` (cls), ``upernet``, ``upernet_fx`` and ``unetpp`` (seg), ``retinanet`` and ``dino`` (det)."""

# importing the modules registers their types
from cxrfx.networks.heads import classification, detection, dino, segmentation, unetpp, upernet_fx  # noqa: F401
from cxrfx.networks.heads.registry import (
    DEFAULT_HEAD_TYPES, MAIN_METRIC, TASKS, ClassificationHeadType, DetectionHeadType, HeadType, SegmentationHeadType,
    get_head_type, register_head, registered_heads,
)

__all__ = ["HeadType", "ClassificationHeadType", "SegmentationHeadType", "DetectionHeadType", "register_head",
           "get_head_type", "registered_heads", "TASKS", "DEFAULT_HEAD_TYPES", "MAIN_METRIC"]
