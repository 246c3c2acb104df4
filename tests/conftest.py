"""Shared fixtures of the tests: a small asymmetric test image and a CXRReadError checker."""

from __future__ import annotations

import numpy as np
import pytest

from cxrfx.errors import CXRReadError

H, W = 30, 50  # non-square, so that a transpose changes the shape


def make_pattern(maxval: int, h: int = H, w: int = W) -> np.ndarray:
    """(h, w) int64 image in 0..maxval that no flip or transpose maps onto itself.

    A ramp along the columns (0 on the left), a block of ``maxval`` in the top-left corner and a block of
    ``maxval // 2`` in the bottom-right corner; 0 and ``maxval`` both occur.
    """
    a = np.repeat((np.arange(w) * (maxval // 4) // (w - 1))[None, :], h, axis=0).astype(np.int64)
    a[: h // 3, : w // 4] = maxval
    a[-3:, -5:] = maxval // 2
    return a


@pytest.fixture
def pattern():
    """``pattern(maxval)``: see :func:`make_pattern`."""
    return make_pattern


@pytest.fixture
def expect_read_error():
    """``expect_read_error(fn, path, *phrases)``: ``fn()`` raises CXRReadError naming ``path`` and each phrase."""

    def check(fn, path, *phrases: str) -> CXRReadError:
        with pytest.raises(CXRReadError) as info:
            fn()
        message = str(info.value)
        assert str(path) in message, message
        assert info.value.path == str(path)
        for phrase in phrases:
            assert phrase.lower() in message.lower(), f"{phrase!r} not in {message!r}"
        return info.value

    return check
