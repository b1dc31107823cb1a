"""The distillation losses against direct computations (MiniLM v1 and v2, embedding MSE)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnlab.distill.losses import (attention_transfer_loss, common_divisors, embedding_mse, relation_loss, row_kl,
                                    split_relation_heads, value_relation_loss)


def _direct_kl(t, s, mask):
    """Per sequence: crop to its true length, mean KL over rows and heads; then the mean over sequences."""
    out = []
    for b in range(t.shape[0]):
        n = int(mask[b].sum())
        p = torch.softmax(t[b, :, :n, :n].double(), -1)
        q = torch.softmax(s[b, :, :n, :n].double(), -1)
        out.append((p * (p.log() - q.log())).sum(-1).mean())
    return torch.stack(out).mean()


def _scores(x):
    return x @ x.transpose(-1, -2) / math.sqrt(x.shape[-1])


def test_row_kl_with_padding_equals_the_cropped_direct_kl():
    g = torch.Generator().manual_seed(0)
    t, s = torch.randn(3, 2, 6, 6, generator=g), torch.randn(3, 2, 6, 6, generator=g)
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 2 + [0] * 4], dtype=torch.bool)
    got = row_kl(t, s, mask[:, None, None, :], mask)
    torch.testing.assert_close(got.double(), _direct_kl(t, s, mask), atol=1e-6, rtol=1e-5)


def test_hand_computed_kl_one_head_two_tokens():
    t = torch.tensor([[[[0.0, math.log(3.0)], [0.0, 0.0]]]])  # rows: p = (1/4, 3/4), (1/2, 1/2)
    s = torch.zeros(1, 1, 2, 2)  # q = (1/2, 1/2) for both rows
    row0 = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert float(row_kl(t, s)) == pytest.approx(row0 / 2, abs=1e-6)


def test_padded_tokens_do_not_change_the_loss_and_get_no_gradient():
    g = torch.Generator().manual_seed(1)
    v_t, v_s = torch.randn(2, 3, 5, 4, generator=g), torch.randn(2, 3, 5, 8, generator=g, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    loss = value_relation_loss(v_t, v_s, mask)
    loss.backward()
    assert torch.isfinite(loss) and float(loss.detach()) > 0
    assert torch.all(v_s.grad[0, :, 3:] == 0) and v_s.grad[0, :, :3].abs().sum() > 0
    noisy_t, noisy_s = v_t.clone(), v_s.detach().clone()
    noisy_t[0, :, 3:] += 100 * torch.randn(3, 2, 4, generator=g)
    noisy_s[0, :, 3:] -= 50
    torch.testing.assert_close(value_relation_loss(noisy_t, noisy_s, mask), loss.detach(), atol=1e-6, rtol=1e-6)


def test_value_relation_is_the_kl_of_value_self_relations():
    g = torch.Generator().manual_seed(2)
    v_t, v_s = torch.randn(2, 4, 7, 8, generator=g), torch.randn(2, 4, 7, 16, generator=g)
    mask = torch.ones(2, 7, dtype=torch.bool)
    torch.testing.assert_close(value_relation_loss(v_t, v_s, mask).double(),
                               _direct_kl(_scores(v_t), _scores(v_s), mask), atol=1e-6, rtol=1e-5)


def test_relation_heads_split_each_width_on_its_own():
    """Teacher width 24 and student width 12 at A_r = 3: heads of 8 and 4 features, each scaled by its own d_r."""
    g = torch.Generator().manual_seed(3)
    x_t, x_s = torch.randn(2, 6, 24, generator=g), torch.randn(2, 6, 12, generator=g)
    mask = torch.tensor([[1] * 6, [1] * 5 + [0]], dtype=torch.bool)
    heads_t = x_t.view(2, 6, 3, 8).permute(0, 2, 1, 3)
    heads_s = x_s.view(2, 6, 3, 4).permute(0, 2, 1, 3)
    torch.testing.assert_close(relation_loss(x_t, x_s, 3, mask).double(),
                               _direct_kl(_scores(heads_t), _scores(heads_s), mask), atol=1e-6, rtol=1e-5)
    assert split_relation_heads(x_t, 3).shape == (2, 3, 6, 8)


def test_qk_relation_with_attention_heads_is_v1_attention_transfer():
    g = torch.Generator().manual_seed(4)
    H, Dh = 4, 8
    q_t, k_t, q_s, k_s = (torch.randn(2, 5, H * Dh, generator=g) for _ in range(4))
    heads = lambda x: x.view(2, 5, H, Dh).transpose(1, 2)  # noqa: E731
    scores = lambda q, k: heads(q) @ heads(k).transpose(-1, -2) / math.sqrt(Dh)  # noqa: E731
    mask = torch.tensor([[1] * 5, [1] * 3 + [0] * 2], dtype=torch.bool)
    at = attention_transfer_loss(scores(q_t, k_t), scores(q_s, k_s), mask[:, None, None, :], mask)
    torch.testing.assert_close(relation_loss(q_t, q_s, H, mask, k_t, k_s), at, atol=1e-6, rtol=1e-5)


def test_one_relation_head_is_invariant_to_permuting_hidden_units():
    g = torch.Generator().manual_seed(5)
    x_t, x_s = torch.randn(2, 6, 16, generator=g), torch.randn(2, 6, 8, generator=g)
    perm = torch.randperm(16, generator=g)
    torch.testing.assert_close(relation_loss(x_t[..., perm], x_s, 1), relation_loss(x_t, x_s, 1))


def test_copies_give_zero_and_errors_name_the_fix():
    x = torch.randn(2, 4, 12)
    assert float(relation_loss(x, x.clone(), 4)) == pytest.approx(0.0, abs=1e-7)
    assert float(embedding_mse(x[:, 0], x[:, 0].clone())) == 0.0
    with pytest.raises(ValueError, match=r"5 relation heads do not divide the teacher's width 12.*\[1, 2, 3, 4, 6, 12\]"):
        relation_loss(x, x, 5)
    with pytest.raises(ValueError, match="needs equal head counts.*v2 relations"):
        attention_transfer_loss(torch.zeros(1, 12, 3, 3), torch.zeros(1, 6, 3, 3))
    with pytest.raises(ValueError, match="relation losses"):
        embedding_mse(torch.zeros(2, 8), torch.zeros(2, 4))
    assert common_divisors(384, 192, 768) == [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 192]


@settings(max_examples=25, deadline=None)
@given(B=st.integers(1, 3), A=st.integers(1, 3), T=st.integers(1, 7), seed=st.integers(0, 10_000))
def test_row_kl_is_non_negative_and_finite_for_any_padding(B, A, T, seed):
    g = torch.Generator().manual_seed(seed)
    t, s = 5 * torch.randn(B, A, T, T, generator=g), 5 * torch.randn(B, A, T, T, generator=g)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = torch.arange(T)[None] < lengths[:, None]
    v = row_kl(t, s, mask[:, None, None, :], mask)
    assert torch.isfinite(v) and float(v) >= -1e-6
    torch.testing.assert_close(v.double(), _direct_kl(t, s, mask), atol=1e-5, rtol=1e-4)
    assert float(row_kl(t, t.clone(), mask[:, None, None, :], mask)) == pytest.approx(0.0, abs=1e-6)
