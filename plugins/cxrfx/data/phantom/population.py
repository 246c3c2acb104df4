"""How varied the phantom population is, and a contact sheet of its patients (figures in docs/data.md).

``python -m cxrfx.data.phantom.population [--count 40] [--size 256] [--sheet docs/phantom_patients.png]``
renders ``count`` images the way ``phantom_seg`` draws them and prints: the mean pairwise Dice of the
unregistered left-lung masks, the coefficient of variation of the left-lung area, the fraction of the heart
covered by the lung masks, the cardiothoracic-ratio range and the median render time; for the default
population (SCR masks) and, with ``--compare``, for the single patient with full-projection masks.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

import numpy as np

from cxrfx.data.phantom.render import LABELS, PhantomRenderer

__all__ = ["population_stats", "contact_sheet"]


def population_stats(renderer: PhantomRenderer, count: int = 40, seed: int = 0, dataset_index: int = 2) -> dict:
    """Statistics of ``count`` renders drawn as ``generate_phantom`` draws dataset ``dataset_index``."""
    lungs, covered, ctrs, cardio, times = [], [], [], [], []
    for i in range(count):
        t0 = time.perf_counter()
        sample = renderer.render(np.random.default_rng([seed, dataset_index, i]))
        times.append(time.perf_counter() - t0)
        lungs.append(sample.masks["lung_left"])
        heart = sample.masks["heart"]
        lung = sample.masks["lung_left"] | sample.masks["lung_right"]
        covered.append((lung & heart).sum() / max(1, heart.sum()))
        ctrs.append(sample.ctr)
        cardio.append(sample.label[LABELS.index("cardiomegaly")])
    dice = [2 * (a & b).sum() / max(1, a.sum() + b.sum()) for a, b in itertools.combinations(lungs, 2)]
    area = np.array([m.sum() for m in lungs], float)
    return {
        "count": count, "size": renderer.shape[1], "annotation": renderer.annotation, "patients": renderer.patients,
        "pairwise_dice_left_lung": round(float(np.mean(dice)), 3),
        "area_cv_left_lung": round(float(area.std() / area.mean()), 3),
        "heart_covered_by_lungs": round(float(np.mean(covered)), 3),
        "ctr_range": [round(float(min(ctrs)), 3), round(float(max(ctrs)), 3)],
        "cardiomegaly_fraction": round(float(np.mean(cardio)), 3),
        "render_seconds_median": round(float(np.median(times)), 3),
    }


def contact_sheet(renderer: PhantomRenderer, path: str, count: int = 16, seed: int = 0, columns: int = 4) -> None:
    """A PNG grid of ``count`` patients, outlines: lungs red, heart green, clavicles blue."""
    from PIL import Image

    tiles = []
    for i in range(count):
        sample = renderer.render(np.random.default_rng([seed, 2, i]))
        grey = (sample.image * 255).astype(np.uint8)
        rgb = np.stack([grey] * 3, axis=-1)
        for name, channel in (("lung_left", 0), ("lung_right", 0), ("heart", 1), ("clavicle_left", 2),
                              ("clavicle_right", 2)):
            m = sample.masks[name]
            edge = m & ~(np.roll(m, 1, 0) & np.roll(m, -1, 0) & np.roll(m, 1, 1) & np.roll(m, -1, 1))
            rgb[edge] = 0
            rgb[edge, channel] = 255
        tiles.append(np.concatenate([np.stack([grey] * 3, axis=-1), rgb], axis=1))
        tiles[-1][:, -1] = 255  # a white line between tiles
        tiles[-1][-1, :] = 255
    rows = [np.concatenate(tiles[k:k + columns], axis=1) for k in range(0, len(tiles), columns)]
    Image.fromarray(np.concatenate(rows, axis=0)).quantize(96).save(path, optimize=True)  # ~4x smaller


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=40)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sheet", default=None, help="write a contact sheet of 16 patients here (PNG)")
    parser.add_argument("--compare", action="store_true", help="also the single patient with full projections")
    args = parser.parse_args(argv)
    results = [population_stats(PhantomRenderer(args.size), args.count, args.seed)]
    if args.compare:
        results.append(population_stats(PhantomRenderer(args.size, annotation="projection", patients=False),
                                        args.count, args.seed))
        results.append(population_stats(PhantomRenderer(args.size, annotation="projection"), args.count, args.seed))
    for r in results:
        print(json.dumps(r))
    if args.sheet:
        contact_sheet(PhantomRenderer(args.size), args.sheet, seed=args.seed)


if __name__ == "__main__":
    main()
