"""The shared pathology vocabulary and the mapping of every native label onto it (``harmonise``).

The vocabulary is torchxrayvision's ``default_pathologies`` (same names, same order), so a head trained on
harmonised labels lines up with that library's models. Native label names are matched after normalisation
(lower case, spaces / underscores / hyphens unified) through :data:`SYNONYMS`; a native label with no entry is
dropped from the harmonised vector. Each shared label gets the maximum over the native labels mapped to it
(1 if any is positive, 0 if all are known negatives), and -1 (unknown) when the dataset does not annotate it.
Native label spaces stay the default (Foundation X trains one head per dataset).
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["SHARED_LABELS", "SYNONYMS", "shared_name", "harmonise_vector", "harmonise_datalist"]

SHARED_LABELS = (
    "Atelectasis", "Consolidation", "Infiltration", "Pneumothorax", "Edema", "Emphysema", "Fibrosis", "Effusion",
    "Pneumonia", "Pleural_Thickening", "Cardiomegaly", "Nodule", "Mass", "Hernia", "Lung Lesion", "Fracture",
    "Lung Opacity", "Enlarged Cardiomediastinum",
)


def _norm(name: str) -> str:
    return " ".join(name.lower().replace("_", " ").replace("-", " ").split())


# normalised native name -> shared label
SYNONYMS = {_norm(k): v for k, v in {
    **{s: s for s in SHARED_LABELS},
    "pleural effusion": "Effusion", "effusion": "Effusion", "infiltrate": "Infiltration", "infiltrates": "Infiltration",
    "pleural thickening": "Pleural_Thickening", "pulmonary fibrosis": "Fibrosis", "ild": "Fibrosis",
    "lung tumor": "Mass", "nodule/mass": "Nodule", "nodules": "Nodule", "masses": "Mass", "calcified nodule": "Nodule",
    "lung opacity": "Lung Opacity", "airspace opacity": "Lung Opacity", "opacity": "Lung Opacity",
    "enlarged cardiomediastinum": "Enlarged Cardiomediastinum", "aortic enlargement": "Enlarged Cardiomediastinum",
    "pneumothorax": "Pneumothorax", "ptx": "Pneumothorax", "rib fracture": "Fracture", "acute rib fracture": "Fracture",
    "fracture": "Fracture", "hiatal hernia": "Hernia", "cardiomegaly": "Cardiomegaly", "pneumonia": "Pneumonia",
    "nodule": "Nodule", "mass": "Mass", "atelectasis": "Atelectasis", "consolidation": "Consolidation",
    "edema": "Edema", "emphysema": "Emphysema", "lung lesion": "Lung Lesion", "nodule or mass": "Nodule",
}.items()}


def shared_name(native: str) -> str | None:
    """The shared label a native label maps to, or None."""
    return SYNONYMS.get(_norm(native))


def harmonise_vector(native_labels: Sequence[str], values: Sequence[int]) -> list[int]:
    """A native multi-hot vector (1 / 0 / -1) as a vector over :data:`SHARED_LABELS`."""
    out = [None] * len(SHARED_LABELS)
    for name, value in zip(native_labels, values):
        target = shared_name(name)
        if target is None:
            continue
        k = SHARED_LABELS.index(target)
        if out[k] is None or value > out[k]:
            out[k] = int(value)  # 1 beats 0 beats -1
    return [-1 if v is None else v for v in out]


def harmonise_datalist(data: dict) -> dict:
    """A copy of ``data`` whose classification labels are over :data:`SHARED_LABELS`."""
    labels = data["tasks"].get("classification", {}).get("labels")
    if not labels:
        return data
    out = {**data, "tasks": {**data["tasks"], "classification": {
        "labels": list(SHARED_LABELS),
        "description": f"harmonised from the native labels {labels}"}}}
    for split in ("training", "validation", "test"):
        out[split] = [{**it, "label": harmonise_vector(labels, it["label"])} if "label" in it else it
                      for it in data.get(split, [])]
    return out
