"""ChestX-Det10 (Deepwise, 2020): 3,543 NIH ChestX-ray14 images with instance boxes of 10 findings -> datalist.

Layout::

    <root>/train.json, <root>/test.json     [{"file_name": "00000010_000.png", "syms": ["Nodule"],
                                              "boxes": [[x1, y1, x2, y2]]}, ...]
    <root>/train_data/*.png, <root>/test_data/*.png     (folder names uncertain; or any NIH image folder)

The file names are NIH ``Image Index`` names, so the images may also come straight from the NIH release:
they are looked up by name anywhere under ``--root`` or under ``images=`` (e.g. the NIH ``images`` folders),
preferring a path that mentions the split when a name occurs twice. Boxes are ``[x1, y1, x2, y2]`` (left, top,
right, bottom) in pixels of the 1024 x 1024 PNGs and are kept as given. Labels: 1 for each finding with at
least one box, else 0. Official split: train -> training, test -> test; ``val_fraction`` (default 0) carves a
patient-level validation set out of train with ``seed``. Patient id = the NIH patient number (the part of the
name before ``_``), so ``split="random"`` is patient level too. NIH-derived: exclude these images/patients from
NIH pretraining when testing on them.
"""

from __future__ import annotations

from typing import Any

from cxrfx.data.adapters import register
from cxrfx.data.adapters.base import AdapterInfo, DatasetAdapter
from cxrfx.data.adapters.chestx_det import build_deepwise
from cxrfx.data.adapters.common import refuse_views
from cxrfx.errors import ConfigError

__all__ = ["ChestXDet10Adapter", "FINDINGS10"]

FINDINGS10 = ["Atelectasis", "Calcification", "Consolidation", "Effusion", "Emphysema", "Fibrosis", "Fracture",
              "Mass", "Nodule", "Pneumothorax"]

_INFO = AdapterInfo(
    name="chestx_det10",
    tasks=("classification", "detection"),
    source="github.com/Deepwise-AILab/ChestX-Det10-Dataset (train.json, test.json); images from NIH ChestX-ray14 "
           "(nihcc.app.box.com/v/ChestXray-NIHCC)",
    license="not clearly stated by Deepwise; images under the NIH ChestX-ray14 terms",
    description="ChestX-Det10: 10 findings, instance boxes (xyxy) on NIH images; official train/test split",
    official_split=True,
    views=False,
)


def _nih_patient(stem: str) -> str:
    return stem.split("_", 1)[0] if "_" in stem else stem


@register
class ChestXDet10Adapter(DatasetAdapter):
    info = _INFO

    def build(self, root: str, out_dir: str, split: str = "official", seed: int = 0,
              views: list[str] | None = None, **options: Any) -> dict:
        val_fraction = float(options.pop("val_fraction", 0.0))
        images = options.pop("images", None)
        missing_policy = options.pop("missing", "skip")
        if options:
            raise ConfigError(f"chestx_det10: unknown option(s) {sorted(options)}; known: val_fraction, images, "
                              "missing")
        refuse_views(self.info.name, views)
        return build_deepwise(
            name=self.info.name, root=root, out_dir=out_dir, split=split, seed=seed,
            json_names={"train": ("train.json", "ChestX_Det10_train.json", "chestx_det10_train.json"),
                        "test": ("test.json", "ChestX_Det10_test.json", "chestx_det10_test.json")},
            findings=FINDINGS10, with_masks=False, patient_of=_nih_patient, val_fraction=val_fraction,
            images=images, missing_policy=missing_policy, info=self.info)
