"""What MONAI Label 0.8.5 needs to import on this stack (pydicom 3, no torchvision), and a guard.

``monailabel.datastore.utils.convert`` (imported by the server's ``/infer`` endpoint and by ``MONAILabelApp``)
imports ``pydicom_seg`` at module level, and pydicom-seg 0.4.1 imports ``pydicom._storage_sopclass_uids``, a
private module pydicom 3 folded into ``pydicom.uid`` (same constant names and values). :func:`install` registers
``pydicom.uid`` under the old name before MONAI Label is imported, so the import chain loads with pydicom 3.
Nothing in cxrfx.label calls pydicom-seg: DICOM SEG objects are written with highdicom
(:mod:`cxrfx.outputs.dicom_seg`), so the alias only has to satisfy an import.
"""

from __future__ import annotations

import sys

__all__ = ["install", "check_no_torchvision"]


def install() -> None:
    """Make pydicom-seg importable under pydicom 3 (no-op with pydicom 2, which still has the module)."""
    import pydicom
    import pydicom.uid

    if int(pydicom.__version__.split(".")[0]) >= 3:
        sys.modules.setdefault("pydicom._storage_sopclass_uids", pydicom.uid)


def check_no_torchvision() -> None:
    """Raise if anything imported torchvision: on these machines importing it fails or breaks torch ops."""
    if "torchvision" in sys.modules:
        raise RuntimeError("torchvision was imported by a MONAI Label module; cxrfx.label must avoid that module")
