"""``sample_next``: greedy, temperature, top-k and nucleus (top-p) filtering, checked on their distributions."""

from __future__ import annotations

import pytest
import torch

from attnlab.infer import sample_next

N = 20000  # draws per distribution check; frequency tolerance 0.015 is > 4 standard deviations
LOGITS = torch.log(torch.tensor([0.05, 0.40, 0.02, 0.25, 0.15, 0.08, 0.05]))


def frequencies(logits: torch.Tensor, seed: int = 0, **kw) -> torch.Tensor:
    draws = sample_next(logits.expand(N, -1), generator=torch.Generator().manual_seed(seed), **kw)
    return torch.bincount(draws, minlength=logits.shape[-1]).float() / N


def renormalised(probs: torch.Tensor, keep: list[int]) -> torch.Tensor:
    out = torch.zeros_like(probs)
    out[keep] = probs[keep] / probs[keep].sum()
    return out


def test_greedy_is_argmax():
    logits = torch.randn(5, 11)
    assert torch.equal(sample_next(logits), logits.argmax(-1))
    assert torch.equal(sample_next(logits, temperature=0.0, top_k=3, top_p=0.5), logits.argmax(-1))


@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
def test_temperature_distribution(temperature):
    expected = (LOGITS / temperature).softmax(-1)
    torch.testing.assert_close(frequencies(LOGITS, temperature=temperature), expected, atol=0.015, rtol=0)


@pytest.mark.parametrize("k", [1, 2, 4])
def test_top_k_keeps_the_k_most_likely(k):
    probs = LOGITS.softmax(-1)
    keep = probs.argsort(descending=True)[:k].tolist()
    torch.testing.assert_close(frequencies(LOGITS, temperature=1.0, top_k=k), renormalised(probs, keep),
                               atol=0.015, rtol=0)


@pytest.mark.parametrize("top_p,keep", [
    (0.3, [1]),  # the top token alone already reaches 0.3 (and is always kept)
    (0.6, [1, 3]),  # 0.40 + 0.25 = 0.65 >= 0.6
    (0.7, [1, 3, 4]),  # 0.65 < 0.7, so the 0.15 token joins
    (1.0, [0, 1, 2, 3, 4, 5, 6]),
])
def test_top_p_keeps_the_smallest_set_reaching_p(top_p, keep):
    probs = LOGITS.softmax(-1)
    torch.testing.assert_close(frequencies(LOGITS, temperature=1.0, top_p=top_p), renormalised(probs, keep),
                               atol=0.015, rtol=0)


def support(logits, **kw) -> set[int]:
    return set(sample_next(logits.expand(4000, -1), generator=torch.Generator().manual_seed(1), **kw).tolist())


@pytest.mark.parametrize("top_k,top_p,temperature", [(None, 0.5, 1.0), (None, 0.9, 0.7), (5, 0.8, 1.3), (3, None, 1.0)])
def test_filters_match_transformers_warpers(top_k, top_p, temperature):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(3)
    logits = torch.randn(1, 12) * 2
    warped = logits / temperature
    if top_k is not None:
        warped = transformers.TopKLogitsWarper(top_k)(None, warped)
    if top_p is not None:
        warped = transformers.TopPLogitsWarper(top_p)(None, warped)
    peer = set(torch.isfinite(warped[0]).nonzero().flatten().tolist())
    assert support(logits, temperature=temperature, top_k=top_k, top_p=top_p) == peer


def test_sampling_is_reproducible_with_a_generator():
    logits = torch.randn(8, 50)
    a = sample_next(logits, 1.0, generator=torch.Generator().manual_seed(4))
    b = sample_next(logits, 1.0, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b)


@pytest.mark.parametrize("kw,match", [
    (dict(temperature=-0.1), "temperature must be >= 0"),
    (dict(temperature=1.0, top_k=0), "top_k must be >= 1, got 0"),
    (dict(temperature=1.0, top_p=0.0), r"top_p must be in \(0, 1\], got 0.0"),
    (dict(temperature=1.0, top_p=1.5), "got 1.5"),
])
def test_bad_sampling_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        sample_next(torch.randn(1, 5), **kw)
