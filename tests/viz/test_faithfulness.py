"""Deletion and insertion curves on a model whose score is known in closed form."""

from __future__ import annotations

import pytest
import torch

from attnlab.viz.faithfulness import area_under_curve, patch_index, perturbation_curve


def _score(x):  # the mean of the top-left 2x2 patch of a 4x4 image: only patch 0 matters
    return x[:, 0, :2, :2].mean(dim=(1, 2))


def test_patch_index_is_row_major_and_covers_uneven_sizes():
    assert patch_index((4, 4), (2, 2)).tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]
    assert patch_index((5, 3), (2, 3))[:, 0].tolist() == [0, 0, 0, 3, 3]


@pytest.mark.parametrize("relevance, deletion, insertion", [
    ([4.0, 3.0, 2.0, 1.0], [1, 0, 0, 0, 0], [0, 1, 1, 1, 1]),   # the right patch first
    ([1.0, 2.0, 3.0, 4.0], [1, 1, 1, 1, 0], [0, 0, 0, 0, 1]),   # the right patch last
])
def test_curves_and_areas_in_closed_form(relevance, deletion, insertion):
    x, base = torch.ones(1, 1, 4, 4), torch.zeros(1, 1, 1, 1)
    rel = torch.tensor([relevance])
    d = perturbation_curve(_score, x, rel, (2, 2), base, "deletion")
    i = perturbation_curve(_score, x, rel, (2, 2), base, "insertion")
    assert d.tolist() == [deletion] and i.tolist() == [insertion]
    expected = lambda c: (sum(c) - (c[0] + c[-1]) / 2) / 4  # trapezoid over 4 steps
    assert area_under_curve(d).item() == pytest.approx(expected(deletion))
    assert area_under_curve(i).item() == pytest.approx(expected(insertion))


def test_fewer_steps_ties_and_bad_arguments():
    x, base = torch.ones(2, 1, 4, 4), torch.zeros(1, 1, 1, 1)
    rel = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 5.0]])    # ties: patch order
    assert perturbation_curve(_score, x, rel, (2, 2), base).tolist() == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0]]
    assert perturbation_curve(_score, x, rel, (2, 2), base, steps=2).tolist() == [[1, 0, 0], [1, 0, 0]]
    with pytest.raises(ValueError, match="mode must be"):
        perturbation_curve(_score, x, rel, (2, 2), base, "erase")
    with pytest.raises(ValueError, match=r"relevance must be \(batch, 4\)"):
        perturbation_curve(_score, x, rel[:, :3], (2, 2), base)
    with pytest.raises(ValueError, match="steps must be in 1..4"):
        perturbation_curve(_score, x, rel, (2, 2), base, steps=9)
