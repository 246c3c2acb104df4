"""``CXRLabelApp``: the MONAI Label app serving the cxrfx bundles for 2D chest radiographs.

Served models (names fixed, so clients and docs can rely on them; task type set explicitly, not from folder
names as MONAI Label's bundle app does):

| name | bundle | infer | train |
|---|---|---|---|
| ``cxr_segmentation`` | finetune_seg | index-map PNG (+ DICOM SEG for DICOM) | yes |
| ``cxr_detection`` | finetune_det | boxes JSON | yes |
| ``cxr_classification`` | foundation_x | probabilities + calibrated thresholds | no |

The app folder (made by ``python -m cxrfx.label serve``) holds ``model/<name>/``: a copy of each bundle's
configs and its ``models/`` (served weights; training rewrites them there, never in the checkout).

``--conf`` keys: ``configs`` (comma-separated override configs, e.g. ``demo.json``), ``device`` (``cpu``),
``epistemic_model`` / ``disagreement_model`` (served names; default ``cxr_segmentation``),
``epistemic_dropout`` (0.2), ``epistemic_samples`` (5), ``acft_model`` (``cxr_segmentation``), ``acft_alpha``
(0.25), ``al_max_samples`` (16), ``modalities`` (DICOMweb filter, ``CR,DX``).
"""

from __future__ import annotations

import logging
import os

from cxrfx.label import compat

compat.install()  # before MONAI Label's modules: they import pydicom-seg at module level

from monailabel.config import settings  # noqa: E402
from monailabel.datastore.local import LocalDatastore  # noqa: E402
from monailabel.interfaces.app import MONAILabelApp  # noqa: E402
from monailabel.tasks.activelearning.random import Random  # noqa: E402

from cxrfx.label.infer import ClassificationTask, DetectionTask, SegmentationTask  # noqa: E402
from cxrfx.label.served import ServedBundle  # noqa: E402
from cxrfx.label.strategies import ACFTStrategy, DisagreementStrategy, EpistemicStrategy  # noqa: E402
from cxrfx.label.train import BundleFineTuneTask  # noqa: E402

__all__ = ["CXRLabelApp", "SERVED", "IMAGE_EXTENSIONS"]

logger = logging.getLogger(__name__)
SERVED = {"cxr_segmentation": "finetune_seg", "cxr_detection": "finetune_det", "cxr_classification": "foundation_x"}
IMAGE_EXTENSIONS = ["*.png", "*.dcm", "*.jpg", "*.jpeg"]


class CXRLabelApp(MONAILabelApp):
    """See the module docstring."""

    def __init__(self, app_dir: str, studies: str, conf: dict):
        self.conf_ = dict(conf or {})
        configs = [c for c in self.conf_.get("configs", "").split(",") if c.strip()]
        device = self.conf_.get("device", "cpu")
        self.served = {}
        for name in SERVED:
            folder = os.path.join(app_dir, "model", name)
            if not os.path.isdir(folder):
                raise FileNotFoundError(f"{folder}: served bundle missing (start the server with "
                                        f"'python -m cxrfx.label serve', which prepares the app folder)")
            self.served[name] = ServedBundle(folder, configs, device)
            self.served[name].ensure_weights()
        super().__init__(app_dir=app_dir, studies=studies, conf=conf, name="cxrfx",
                         description="Foundation X bundles for 2D chest radiographs (PNG, DICOM)", version="0.1.0")
        compat.check_no_torchvision()

    def init_datastore(self):
        if self.studies.startswith(("http://", "https://")):
            from cxrfx.label.dicomweb import RadiographDICOMwebDatastore, make_client

            self.studies = self.studies.rstrip("/")
            client = make_client(self.studies, settings.MONAI_LABEL_DICOMWEB_USERNAME,
                                 settings.MONAI_LABEL_DICOMWEB_PASSWORD)
            modalities = [m.strip() for m in self.conf_.get("modalities", "CR,DX").split(",") if m.strip()]
            cache = settings.MONAI_LABEL_DICOMWEB_CACHE_PATH or os.path.join(self.app_dir, "dicomweb_cache")
            classes = list(self.served["cxr_segmentation"].get("classes"))
            return RadiographDICOMwebDatastore(client, classes, modalities, cache_path=cache)
        return LocalDatastore(self.studies, extensions=IMAGE_EXTENSIONS,
                              auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
                              read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY)

    def init_infers(self):
        return {"cxr_segmentation": SegmentationTask(self.served["cxr_segmentation"]),
                "cxr_detection": DetectionTask(self.served["cxr_detection"]),
                "cxr_classification": ClassificationTask(self.served["cxr_classification"])}

    def init_trainers(self):
        return {"cxr_segmentation": BundleFineTuneTask(self.served["cxr_segmentation"], "seg"),
                "cxr_detection": BundleFineTuneTask(self.served["cxr_detection"], "det")}

    def init_strategies(self):
        samples = int(self.conf_.get("al_max_samples", 16))
        epistemic = self.served[self.conf_.get("epistemic_model", "cxr_segmentation")]
        disagreement = self.served[self.conf_.get("disagreement_model", "cxr_segmentation")]
        return {"random": Random(),
                "epistemic": EpistemicStrategy(epistemic, float(self.conf_.get("epistemic_dropout", 0.2)),
                                               int(self.conf_.get("epistemic_samples", 5)), samples),
                "disagreement": DisagreementStrategy(disagreement, samples),
                "acft": ACFTStrategy(self.served[self.conf_.get("acft_model", "cxr_segmentation")], samples,
                                     float(self.conf_.get("acft_alpha", 0.25)))}

    def init_scoring_methods(self):
        return {}  # strategies score on demand; background scoring would compete for the two CPU cores
