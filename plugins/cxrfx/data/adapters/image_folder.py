"""A folder of radiographs without annotations -> an unlabelled datalist (self-supervised pretraining).

``python -m cxrfx prepare image_folder --root DIR --out images.json [--validation_fraction 0.05] [--skip_bad]``.
Every file below ``--root`` that ``cxrfx.io.list_images`` recognises is decoded once; an unreadable one stops the
command with its path and the reason (``--skip_bad`` leaves it out instead). The work is
:func:`cxrfx.data.datalist.image_folder_datalist`; this module only puts it behind ``prepare``.
"""

from __future__ import annotations

from typing import Any

from cxrfx.data.adapters import register
from cxrfx.data.adapters.base import AdapterInfo, DatasetAdapter
from cxrfx.data.adapters.common import check_options, refuse_views
from cxrfx.data.datalist import image_folder_datalist

__all__ = ["ImageFolderAdapter"]


@register
class ImageFolderAdapter(DatasetAdapter):
    info = AdapterInfo(
        name="image_folder", tasks=(), source="any folder of radiographs (DICOM, PNG, JPEG, ...)",
        license="that of the images", description="images only: an unlabelled datalist for self-supervised steps",
        official_split=False)

    def build(self, root: str, out_dir: str, split: str = "official", seed: int = 0,
              views: list[str] | None = None, **options: Any) -> dict:
        check_options("image_folder", options, ("name", "validation_fraction", "skip_bad"))
        refuse_views("image_folder", views)
        return image_folder_datalist(root, out_dir, name=options.get("name"), seed=seed,
                                     validation_fraction=float(options.get("validation_fraction", 0.0)),
                                     skip_bad=bool(options.get("skip_bad", False)))
