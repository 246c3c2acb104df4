"""Masks from the projected structure bits, drawn as public datasets draw them, and the cardiothoracic ratio.

``"scr"`` (default) follows the SCR definitions (van Ginneken et al., JSRT masks; Montgomery, Shenzhen and
CheXmask trace the same visible lung field):

- lung field: pixels whose ray passes through lung but not through the heart, the mediastinum (aorta and its
  branches, brachiocephalic veins, trachea, oesophagus; the superior vena cava does not count) or structures
  below the diaphragm (liver, spleen, stomach and the other abdominal organs; per image column everything below
  the top of the abdomen, the outermost columns' level continuing laterally so the recesses end at the
  costophrenic angles). So the masks stop at the heart border, the mediastinal border and the diaphragm domes
  instead of running behind them.
- heart: pixels whose ray passes through the heart.
- clavicles: only the parts superimposed on the thorax (lungs and rib cage, row by row); the lateral ends
  beyond the rib cage are left out.

``"projection"`` keeps every class as the full projection of its voxels (lungs behind the heart and below the
domes, whole clavicles). Ribs, pneumothorax and effusion are full projections in both modes.
"""

from __future__ import annotations

import numpy as np

from cxrfx.errors import ConfigError
from cxrfx.data.phantom.volume import HELPER_BITS, STRUCTURE_BITS

__all__ = ["ANNOTATIONS", "structure_masks", "cardiothoracic_ratio"]

ANNOTATIONS = ("scr", "projection")


def _bit(bits: np.ndarray, bit: int) -> np.ndarray:
    return (bits & np.uint16(1 << bit)) != 0


def _row_hull(mask: np.ndarray) -> np.ndarray:
    """Per row, everything between the row's leftmost and rightmost pixel of ``mask``."""
    hull = np.zeros_like(mask)
    rows = np.flatnonzero(mask.any(axis=1))
    if len(rows):
        cols = np.arange(mask.shape[1])
        first = np.argmax(mask[rows], axis=1)
        last = mask.shape[1] - 1 - np.argmax(mask[rows, ::-1], axis=1)
        hull[rows] = (cols[None, :] >= first[:, None]) & (cols[None, :] <= last[:, None])
    return hull


def _below_domes(abdomen: np.ndarray) -> np.ndarray:
    """Everything below the diaphragm in the image: per column, the rows below the topmost abdominal pixel;
    columns lateral to the abdominal organs take the level of the outermost column that has one (the
    costophrenic angle), so the lateral recesses end there as drawn in SCR."""
    below = np.zeros_like(abdomen)
    cols = np.flatnonzero(abdomen.any(axis=0))
    if len(cols) == 0:
        return below
    top = np.full(abdomen.shape[1], -1)
    top[cols] = np.argmax(abdomen[:, cols], axis=0)
    top[: cols.min()] = top[cols.min()]
    top[cols.max() + 1:] = top[cols.max()]
    rows = np.arange(abdomen.shape[0])[:, None]
    return (rows >= top[None, :]) & (top[None, :] >= 0)


def structure_masks(bits: np.ndarray, annotation: str = "scr") -> dict[str, np.ndarray]:
    """Masks of :data:`~cxrfx.data.phantom.volume.STRUCTURES` from projected bits, by annotation convention."""
    if annotation not in ANNOTATIONS:
        raise ConfigError(f"annotation must be one of {ANNOTATIONS}, got {annotation!r}")
    masks = {name: _bit(bits, b) for name, b in STRUCTURE_BITS.items()}
    if annotation == "projection":
        return masks
    hidden = masks["heart"] | _bit(bits, HELPER_BITS["mediastinum"]) | _below_domes(_bit(bits, HELPER_BITS["below_diaphragm"]))
    thorax = _row_hull(masks["lung_left"] | masks["lung_right"] | masks["ribs"])
    for side in ("left", "right"):
        masks[f"lung_{side}"] = masks[f"lung_{side}"] & ~hidden
        masks[f"clavicle_{side}"] = masks[f"clavicle_{side}"] & thorax
    return masks


def cardiothoracic_ratio(bits: np.ndarray) -> float:
    """Widest transverse extent of the heart over the widest internal thoracic width (outer margins of the
    lungs on one row), from full projections; 0 when a structure is missing. Cardiomegaly: > 0.5."""
    heart = _bit(bits, STRUCTURE_BITS["heart"])
    lungs = _bit(bits, STRUCTURE_BITS["lung_left"]) | _bit(bits, STRUCTURE_BITS["lung_right"])
    if not heart.any() or not lungs.any():
        return 0.0
    cols = np.flatnonzero(heart.any(axis=0))
    heart_width = cols.max() - cols.min() + 1
    hull = _row_hull(lungs)
    thorax_width = hull.sum(axis=1).max()
    return float(heart_width / thorax_width)
