"""CSV tables of predictions, one row per image and label (probabilities) or per detection (boxes).

``probabilities.csv``: image, head, label, probability, threshold, threshold_source, positive (yes / no)
with the rule *positive if probability >= threshold*; thresholds come from the bundle's calibration
(``models/thresholds.json``, Youden's J) or the default 0.5 (``threshold_source`` says which and why).
``boxes.csv``: image, head, class, label index, score, x1, y1, x2, y2 (x = column, original pixels).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Mapping, Sequence

from cxrfx.metrics.calibration import threshold_for

__all__ = ["PROBABILITY_COLUMNS", "BOX_COLUMNS", "decide", "append_rows"]

PROBABILITY_COLUMNS = ["image", "head", "label", "probability", "threshold", "threshold_source", "positive"]
BOX_COLUMNS = ["image", "head", "class", "label", "score", "x1", "y1", "x2", "y2"]


def decide(head: str, probabilities: Mapping[str, float], thresholds: Mapping | None) -> dict[str, dict]:
    """``{label: {"probability", "threshold", "threshold_source", "positive"}}`` for one head."""
    out = {}
    for label, p in probabilities.items():
        t, src = threshold_for(thresholds, head, label)
        out[label] = {"probability": float(p), "threshold": t, "threshold_source": src, "positive": float(p) >= t}
    return out


def append_rows(path: str, columns: Sequence[str], rows: Iterable[Sequence]) -> None:
    """Append rows to a CSV, writing the header when the file is new."""
    new = not os.path.exists(path)
    with open(path, "a", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        if new:
            writer.writerow(columns)
        writer.writerows(rows)
