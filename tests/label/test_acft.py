"""ACFT scoring (cxrfx.label.acft, torch only): entropy + diversity over augmented copies ranks images the way
the paper intends, unlike random selection and unlike plain (single-prediction) uncertainty."""

from __future__ import annotations

import math
import random

import pytest
import torch

from cxrfx.label.acft import acft_score, augmented_copies, location_scores, network_outputs


def bernoulli_entropy(p: float) -> float:
    return -(p * math.log(p) + (1 - p) * math.log(1 - p))


def test_location_scores_by_hand():
    probs = torch.tensor([[0.5, 0.9], [0.5, 0.1]])  # two copies, two locations
    r = location_scores(probs)
    # location 0: both copies 0.5 -> entropy log 2, no diversity
    assert r[0].item() == pytest.approx(math.log(2), rel=1e-6)
    # location 1: entropy H(0.9) = H(0.1); diversity (0.9 - 0.1) * (logit 0.9 - logit 0.1)
    d = 0.8 * (math.log(9) - math.log(1 / 9))
    assert r[1].item() == pytest.approx(bernoulli_entropy(0.9) + d, rel=1e-6)
    assert location_scores(probs, lambda_diversity=0)[1].item() == pytest.approx(bernoulli_entropy(0.9), rel=1e-6)


def test_alpha_focuses_on_the_uncertain_region():
    small = torch.full((4, 100), 0.01)
    small[:, :5] = 0.5  # 5 % of the image uncertain
    assert acft_score(small, alpha=0.05) == pytest.approx(math.log(2), rel=1e-3)
    assert acft_score(small, alpha=1.0) < 0.2 * acft_score(small, alpha=0.05)  # H(0.01) = 0.056 elsewhere
    with pytest.raises(ValueError, match="alpha"):
        acft_score(small, alpha=0)


def ranking(scores: dict) -> list[str]:
    return sorted(scores, key=lambda k: -scores[k])


def test_ranking_differs_from_random_and_from_plain_uncertainty():
    """Four images, predictions on m = 6 augmented copies (identity first):

    - ``confident``: every copy certain and in agreement -> last for every scorer;
    - ``ambiguous``: every copy at 0.5 -> high entropy, no diversity;
    - ``unstable``: the identity copy is confident, the augmented copies flip -> plain uncertainty (the identity
      copy's entropy) calls it certain, ACFT ranks it first (diversity);
    - ``mild``: every copy mildly unsure (0.3) and in agreement.
    """
    n = 64
    copies = {
        "confident": torch.full((6, n), 0.02),
        "ambiguous": torch.full((6, n), 0.5),
        "unstable": torch.tensor([0.03, 0.97, 0.05, 0.95, 0.9, 0.04])[:, None].repeat(1, n),
        "mild": torch.full((6, n), 0.3),
    }
    acft = {k: acft_score(v, alpha=1.0) for k, v in copies.items()}
    plain = {k: acft_score(v[:1], alpha=1.0) for k, v in copies.items()}  # entropy of the single prediction
    assert ranking(acft) == ["unstable", "ambiguous", "mild", "confident"]
    assert ranking(plain) == ["ambiguous", "mild", "unstable", "confident"]
    # random selection changes its order with the draw; ACFT's order is a property of the predictions
    names = sorted(copies)
    assert len({tuple(random.Random(seed).sample(names, len(names))) for seed in range(20)}) > 1
    assert ranking({k: acft_score(v, alpha=1.0) for k, v in copies.items()}) == ranking(acft)
    # diversity alone does not know the ambiguous image; entropy alone does not know the unstable one
    no_div = {k: acft_score(v, alpha=1.0, lambda_diversity=0) for k, v in copies.items()}
    assert no_div["unstable"] < no_div["ambiguous"]
    no_ent = {k: acft_score(v, alpha=1.0, lambda_entropy=0) for k, v in copies.items()}
    assert no_ent["ambiguous"] == pytest.approx(0, abs=1e-9) and no_ent["unstable"] > no_ent["mild"]


def test_augmented_copies_shift_back_onto_the_original_pixels():
    x = torch.rand(1, 1, 32, 32)
    copies = augmented_copies(x, shift=4)
    assert len(copies) == 6 and torch.equal(copies[0][0], x)
    for xa, back, shifted in copies:
        assert xa.shape == x.shape and float(xa.min()) >= 0 and float(xa.max()) <= 1
        if shifted:
            assert torch.equal(back(xa), x)  # a dense output of the shifted copy lands on the original pixels
        else:
            assert back(xa) is xa


def test_network_outputs_of_a_foundation_x_model():
    from cxrfx.networks import FoundationX

    torch.manual_seed(0)
    net = FoundationX("tiny", cls_heads={"c": 3}, seg_heads={"s": 2}, seg_channels=16, psp_channels=16,
                      backbone_kwargs={"embed_dim": 16, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2],
                                       "window_size": 2}).eval()
    with torch.no_grad():
        parts = network_outputs(net, torch.rand(1, 1, 64, 64))
    assert [p.shape for p in parts] == [(6, 2 * 64 * 64), (6, 3)]
    assert 0 <= acft_score(parts) < 2 * math.log(2) + 50
