"""attnlab.attention.split: the shell's q/k/v split, whose backward takes adjacent gradients without a copy."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnlab.attention import shell, split
from attnlab.attention.context import AttentionContext
from attnlab.attention.shell import MultiHeadAttention
from attnlab.attention.split import split_last
from attnlab.native import load
from attnlab.native.documents_fp32 import FAMILY

_ADJACENT = split._adjacent


def _grads_through_split(split, x: torch.Tensor, grads: list[torch.Tensor | None]) -> torch.Tensor:
    x = x.detach().requires_grad_()
    parts = split(x)
    torch.autograd.backward([p for p, g in zip(parts, grads) if g is not None], [g for g in grads if g is not None])
    return x.grad


@settings(max_examples=30, deadline=None)
@given(B=st.integers(1, 3), T=st.integers(1, 6), sizes=st.lists(st.integers(1, 5), min_size=1, max_size=4),
       drop=st.integers(-1, 3))
def test_values_and_gradients_equal_torch_split(B, T, sizes, drop):
    x = torch.randn(B, T, sum(sizes))
    assert all(torch.equal(a, b) for a, b in zip(split_last(x.requires_grad_(), sizes), x.split(sizes, -1)))
    grads = [torch.randn(B, T, s) if i != drop else None for i, s in enumerate(sizes)]
    if all(g is None for g in grads):
        return
    ours = _grads_through_split(lambda t: split_last(t, sizes), x, grads)
    assert torch.equal(ours, _grads_through_split(lambda t: t.split(sizes, -1), x, grads))


@pytest.mark.parametrize("B,T", [(2, 5), (1, 4), (3, 1)])
def test_adjacent_gradients_become_the_input_gradient_without_a_copy(B, T):
    sizes = [6, 4, 4]
    joined = torch.randn(B, T, 14)
    views = list(joined.split(sizes, -1))  # blocks of one buffer, as the native attention backwards write them
    grad = _grads_through_split(lambda t: split_last(t, sizes), torch.randn(B, T, 14), views)
    assert torch.equal(grad, joined) and grad.data_ptr() == joined.data_ptr()


def test_gradients_out_of_order_or_from_other_buffers_are_concatenated():
    sizes = [4, 4, 4]
    joined = torch.randn(2, 3, 12)
    a, b, c = joined.split(sizes, -1)
    for grads in ([b, a, c], [a, b, c.clone()], [a, b, c.double().float()[:, :, :4]]):
        grad = _grads_through_split(lambda t: split_last(t, sizes), torch.randn(2, 3, 12), grads)
        assert torch.equal(grad, torch.cat(grads, -1)) and grad.data_ptr() != joined.data_ptr()


def test_sizes_that_do_not_add_up_are_refused():
    with pytest.raises(ValueError, match="add up to 7, not the last dimension 8"):
        split_last(torch.randn(1, 2, 8), [3, 4])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_window_attention_backward_hands_the_projection_one_buffer(monkeypatch, dtype):
    """Swin's native window kernel writes dq, dk, dv into one buffer, which becomes the fused projection's
    gradient as is; the layer's gradients equal those through PyTorch's concatenating split."""
    if load(FAMILY) is None:
        pytest.skip("the native window kernel needs an AVX-512 CPU and a C compiler")
    torch.manual_seed(0)
    mha = MultiHeadAttention(32, 2, kernel="window", kernel_options={"window_size": 2, "shift": 1})
    x = torch.randn(2, 16, 32, requires_grad=True)
    ctx = AttentionContext(causal=False, grid=(4, 4))

    def loss():  # bf16 as in training: fp32 weights under autocast
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            return mha(x, ctx=ctx).float().square().sum()

    joined = []
    monkeypatch.setattr(split, "_adjacent", lambda grads, sizes: joined.append(_ADJACENT(grads, sizes)) or joined[-1])
    loss().backward()
    assert len(joined) == 1 and joined[0] is not None  # the copy-free path was taken
    ours = [t.grad.clone() for t in (x, *mha.parameters())]
    for t in (x, *mha.parameters()):
        t.grad = None
    monkeypatch.setattr(shell, "split_last", lambda t, sizes: t.split(sizes, dim=-1))
    loss().backward()
    for a, t in zip(ours, (x, *mha.parameters())):
        assert torch.equal(a, t.grad)
