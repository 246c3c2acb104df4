"""Models Genesis image distortions in 2D (Zhou et al., MICCAI 2019 / MedIA 2021), as MONAI random transforms.

A restorative self-supervised branch learns by undoing these: a non-linear intensity map (a cubic Bézier curve),
local pixel shuffling, in-painting (boxes filled with noise) and out-painting (noise everywhere except a few
boxes of the image). The originals are 3D; the 2D forms here follow the 2D code of the same lab (TransVW, DiRA):
block sizes and counts are fractions of H, W as there. Input: a (C, H, W) image in [0, 1] (the project's
normalised range; the intensity curve and the noise fill assume it). Output: the same type and shape.

MONAI style: every transform is a :class:`~monai.transforms.RandomizableTransform` drawing only from its own
``self.R``, so ``set_random_state(seed)`` (what ``SeededDataset`` calls per sample through the Compose) makes the
distortion a pure function of the seed, independent of workers and global RNGs. No MONAI transform does any
of the four (``RandHistogramShift`` is piecewise-linear and monotone; ``RandCoarseDropout`` fills holes with
uniform noise, close to in-painting, but has no out-painting or Genesis' box-size rules), hence these.

:class:`RandAnatomyCropsd` is Adam-v2's anatomy decomposition (a whole crop and its two halves), for
``cxrfx.ssl.adam_v2``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable, RandomizableTransform, Resize
from monai.utils import convert_to_dst_type, convert_to_numpy

__all__ = ["bezier_intensity_map", "RandBezierIntensity", "RandLocalPixelShuffle", "RandInpaint", "RandOutpaint",
           "RandGenesisd", "RandAnatomyCropsd"]


def bezier_intensity_map(img: np.ndarray, p1: Sequence[float], p2: Sequence[float], flip: bool = False,
                         samples: int = 1000) -> np.ndarray:
    """Map intensities in [0, 1] through the cubic Bézier curve (0, 0), ``p1``, ``p2``, (1, 1).

    The curve is sampled at ``samples`` points and both coordinates sorted, so the map is monotone (Genesis sorts
    them too). ``flip`` pairs the sorted x samples with the y samples in reverse order, a decreasing map (Genesis'
    "half chance to flip", which also teaches an inverted intensity scale). Control points on the diagonal give
    the identity; (1/3, 1/3), (2/3, 2/3) flipped give 1 - x.
    """
    t = np.linspace(0.0, 1.0, samples)
    basis = np.stack([(1 - t) ** 3, 3 * t * (1 - t) ** 2, 3 * t ** 2 * (1 - t), t ** 3])  # Bernstein, degree 3
    xs = np.sort(basis.T @ np.array([0.0, p1[0], p2[0], 1.0]))
    ys = np.sort(basis.T @ np.array([0.0, p1[1], p2[1], 1.0]))
    if flip:
        ys = ys[::-1]
    return np.interp(img, xs, ys).astype(img.dtype, copy=False)


class _GenesisTransform(RandomizableTransform):
    """Shared plumbing: numpy in the middle, the input's type out; ``randomize`` decides and draws parameters."""

    def _draw(self, shape: Sequence[int]) -> None:
        raise NotImplementedError

    def _apply(self, img: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def randomize(self, shape: Sequence[int]) -> None:
        super().randomize(None)
        if self._do_transform:
            self._draw(shape)

    def __call__(self, img, randomize: bool = True):
        array = convert_to_numpy(img, dtype=np.float32)
        if randomize:
            self.randomize(array.shape)
        if not self._do_transform:
            return img
        return convert_to_dst_type(self._apply(array), img, dtype=np.float32)[0]


class RandBezierIntensity(_GenesisTransform):
    """Genesis' non-linear transformation: intensities through a random monotone Bézier curve
    (:func:`bezier_intensity_map`), reversed with probability ``flip_prob``. Genesis: ``prob`` 0.9."""

    def __init__(self, prob: float = 0.9, flip_prob: float = 0.5):
        super().__init__(prob)
        self.flip_prob = flip_prob
        self.params: tuple = ((0.0, 0.0), (1.0, 1.0), False)

    def _draw(self, shape):
        p1, p2 = tuple(self.R.uniform(0, 1, 2)), tuple(self.R.uniform(0, 1, 2))
        self.params = (p1, p2, bool(self.R.uniform() < self.flip_prob))

    def _apply(self, img):
        return bezier_intensity_map(img, *self.params)


def _block(rng: np.random.RandomState, size: int, low: int, high: int, margin: int = 0) -> tuple[int, int]:
    """(start, length) of a random block along one axis: length in [low, high], ``margin`` px from both edges
    (Genesis keeps painted boxes 3 px inside), clamped for tiny images."""
    length = int(rng.randint(max(1, low), max(1, low, high) + 1))
    length = min(length, max(1, size - 2 * margin))
    start = int(rng.randint(margin, max(margin, size - length - margin) + 1))
    return min(start, size - length), length


class RandLocalPixelShuffle(_GenesisTransform):
    """Genesis' local pixel shuffling: ``num_blocks`` random boxes (sides 1 .. ``max_fraction`` of H, W) of the
    *original* image each get their pixels permuted and pasted back in order (a later box overwrites an earlier
    one where they overlap, as in Genesis' loop), so texture is destroyed locally while the global shape survives.
    Genesis: ``prob`` 0.5. All boxes are drawn and applied as whole arrays: the per-box Python loop of the
    reference code made this the slowest part of the input pipeline.

    ``num_blocks``: the 2D code uses 10000; 1000 boxes of on average 1/20 x 1/20 of the image already cover it
    about 2.5 times, so 1000 is the default here.
    """

    def __init__(self, prob: float = 0.5, num_blocks: int = 1000, max_fraction: float = 0.1):
        super().__init__(prob)
        self.num_blocks, self.max_fraction = int(num_blocks), float(max_fraction)
        self.blocks = np.zeros((0, 4), dtype=np.int64)  # (row, col, height, width) per box

    def _draw(self, shape):
        height, width = shape[-2:]
        hmax, wmax = max(1, int(height * self.max_fraction)), max(1, int(width * self.max_fraction))
        h = self.R.randint(1, min(hmax, height) + 1, self.num_blocks)
        w = self.R.randint(1, min(wmax, width) + 1, self.num_blocks)
        r, c = self.R.randint(0, height - h + 1), self.R.randint(0, width - w + 1)
        self.blocks = np.stack([r, c, h, w], axis=1)

    def _apply(self, img):
        width = img.shape[-1]
        r, c, h, w = self.blocks.T
        sizes = h * w
        box = np.repeat(np.arange(len(sizes)), sizes)  # the box of every pasted pixel, boxes in order
        local = np.arange(sizes.sum()) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        dest = (r[box] + local // w[box]) * width + c[box] + local % w[box]
        # a random permutation inside each box: sort by box index + a random key in [0, 1)
        src = dest[np.argsort(box + self.R.uniform(size=len(dest)))]
        # where boxes overlap the last one wins: keep each destination's last write (numpy does not promise an
        # order for repeated indices in one assignment; ufunc.at is unbuffered and exact)
        last = np.full(img.shape[-2] * width, -1)
        np.maximum.at(last, dest, np.arange(len(dest)))
        keep = last[last >= 0]
        flat = img.reshape(*img.shape[:-2], -1)
        out = flat.copy()
        out[..., dest[keep]] = flat[..., src[keep]]  # one permutation for all channels: a pixel moves as a whole
        return out.reshape(img.shape)


class RandInpaint(_GenesisTransform):
    """Genesis' in-painting: up to ``max_holes`` boxes (sides 1/6 .. 1/3 of H, W; each further box with
    probability ``continue_prob``) replaced by uniform noise in [0, 1); the network restores the inside from
    the surroundings."""

    def __init__(self, prob: float = 1.0, max_holes: int = 5, continue_prob: float = 0.95,
                 size_range: tuple[float, float] = (1 / 6, 1 / 3)):
        super().__init__(prob)
        self.max_holes, self.continue_prob, self.size_range = int(max_holes), float(continue_prob), size_range
        self.boxes: list[tuple[int, int, int, int]] = []

    def _draw(self, shape):
        height, width = shape[-2:]
        self.boxes = []
        while len(self.boxes) < self.max_holes and self.R.uniform() < self.continue_prob:
            r, h = _block(self.R, height, int(height * self.size_range[0]), int(height * self.size_range[1]), 3)
            c, w = _block(self.R, width, int(width * self.size_range[0]), int(width * self.size_range[1]), 3)
            self.boxes.append((r, c, h, w))

    def _apply(self, img):
        out = img.copy()
        for r, c, h, w in self.boxes:
            out[..., r:r + h, c:c + w] = self.R.uniform(0, 1, (*img.shape[:-2], h, w))
        return out


class RandOutpaint(_GenesisTransform):
    """Genesis' out-painting: uniform noise everywhere except a central-sized box (sides 3/7 .. 4/7 of H, W) and
    up to ``max_more`` further boxes of the original (each with probability ``continue_prob``); the network
    extrapolates the image outwards from what is kept."""

    def __init__(self, prob: float = 1.0, max_more: int = 4, continue_prob: float = 0.95):
        super().__init__(prob)
        self.max_more, self.continue_prob = int(max_more), float(continue_prob)
        self.boxes: list[tuple[int, int, int, int]] = []

    def _keep_box(self, height: int, width: int) -> tuple[int, int, int, int]:
        h = height - int(self.R.randint(3 * height // 7, 4 * height // 7 + 1))
        w = width - int(self.R.randint(3 * width // 7, 4 * width // 7 + 1))
        r, h = _block(self.R, height, h, h, 3)
        c, w = _block(self.R, width, w, w, 3)
        return r, c, h, w

    def _draw(self, shape):
        height, width = shape[-2:]
        self.boxes = [self._keep_box(height, width)]
        while len(self.boxes) <= self.max_more and self.R.uniform() < self.continue_prob:
            self.boxes.append(self._keep_box(height, width))

    def _apply(self, img):
        out = self.R.uniform(0, 1, img.shape).astype(img.dtype)
        for r, c, h, w in self.boxes:
            out[..., r:r + h, c:c + w] = img[..., r:r + h, c:c + w]
        return out


class RandGenesisd(Randomizable, MapTransform):
    """The Models Genesis composite on ``keys``, in Genesis' order: local shuffling (``local_prob``), then the
    Bézier intensity map (``nonlinear_prob``), then with probability ``paint_prob`` in-painting (``inpaint_prob``
    of those) or else out-painting. Defaults are Genesis' (0.5, 0.9, 0.9, 0.2). Several keys share the
    curve and the boxes (drawn once per call); noise and permutations are drawn per key.

    ``restore_key``: copy the undistorted image there first (the restoration target), if given.
    """

    def __init__(self, keys: KeysCollection, restore_key: str | None = None, local_prob: float = 0.5,
                 nonlinear_prob: float = 0.9, paint_prob: float = 0.9, inpaint_prob: float = 0.2,
                 num_blocks: int = 1000, allow_missing_keys: bool = False):
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.restore_key = restore_key
        self.paint_prob, self.inpaint_prob = float(paint_prob), float(inpaint_prob)
        self.shuffle = RandLocalPixelShuffle(local_prob, num_blocks=num_blocks)
        self.nonlinear = RandBezierIntensity(nonlinear_prob)
        self.inpaint, self.outpaint = RandInpaint(1.0), RandOutpaint(1.0)
        self.paint: _GenesisTransform | None = None

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        for sub in (self.shuffle, self.nonlinear, self.inpaint, self.outpaint):  # as Compose seeds its members
            sub.set_random_state(seed=int(self.R.randint(2**31 - 1)))
        return self

    def randomize(self, shape: Sequence[int]) -> None:
        self.shuffle.randomize(shape)
        self.nonlinear.randomize(shape)
        self.paint = None
        if self.R.uniform() < self.paint_prob:
            self.paint = self.inpaint if self.R.uniform() < self.inpaint_prob else self.outpaint
            self.paint.randomize(shape)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        first = True
        for key in self.key_iterator(d):
            if first:
                self.randomize(convert_to_numpy(d[key]).shape)
                if self.restore_key:
                    d[self.restore_key] = d[key]
                first = False
            img = self.shuffle(d[key], randomize=False)
            img = self.nonlinear(img, randomize=False)
            d[key] = self.paint(img, randomize=False) if self.paint is not None else img
        return d


def _halve(box: tuple[int, int, int, int], axis: int) -> list[tuple[int, int, int, int]]:
    """The two halves (top/bottom for ``axis`` 0, left/right for 1) of a (row, col, height, width) box."""
    r, c, h, w = box
    if axis == 0:
        return [(r, c, h // 2, w), (r + h // 2, c, h - h // 2, w)]
    return [(r, c, h, w // 2), (r, c + w // 2, h, w - w // 2)]


class RandAnatomyCropsd(Randomizable, MapTransform):
    """Adam-v2's anatomy decomposition (Taher et al., CVPR 2024): a *whole* crop at a random granularity level and
    its two *parts*, each resized to ``size``.

    Level 0 is the whole image; each further level keeps one random half (top/bottom or left/right) of the
    previous crop, down to ``max_level``; the parts are the two halves of the whole along a random axis. Chest
    radiographs are framed alike, so a crop at a given place of this hierarchy shows roughly the same anatomy in
    every image (the "anatomical consistency" Adam learns from). Outputs ``whole_key`` and ``part_keys``; the
    boxes drawn are kept as ``whole_box`` / ``part_boxes`` (row, col, height, width).
    """

    def __init__(self, keys: KeysCollection = "image", size: Sequence[int] | int | None = None, max_level: int = 2,
                 whole_key: str = "whole", part_keys: Sequence[str] = ("part_a", "part_b"),
                 allow_missing_keys: bool = False):
        MapTransform.__init__(self, keys, allow_missing_keys)
        if len(self.keys) != 1 or len(part_keys) != 2:
            raise ValueError("RandAnatomyCropsd reads one key and writes one whole and two part keys")
        self.size, self.max_level = size, int(max_level)
        self.whole_key, self.part_keys = whole_key, tuple(part_keys)
        self.whole_box: tuple[int, int, int, int] = (0, 0, 0, 0)
        self.part_boxes: list[tuple[int, int, int, int]] = []

    def randomize(self, shape: Sequence[int]) -> None:
        box = (0, 0, int(shape[-2]), int(shape[-1]))
        for _ in range(int(self.R.randint(0, self.max_level + 1))):
            box = _halve(box, int(self.R.randint(2)))[int(self.R.randint(2))]
        self.whole_box = box
        self.part_boxes = _halve(box, int(self.R.randint(2)))

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            self.randomize(img.shape)
            resize = Resize(self.size or tuple(img.shape[-2:]), mode="bilinear")
            for name, (r, c, h, w) in zip((self.whole_key, *self.part_keys), [self.whole_box, *self.part_boxes]):
                d[name] = resize(img[..., r:r + h, c:c + w])
        return d
