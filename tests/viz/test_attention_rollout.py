"""Attention rollout, gradient rollout, mean attention distance and head importance against direct computations."""

from __future__ import annotations

import pytest
import torch

from attnlab.models import create_model
from attnlab.viz.attention import (discard_weakest, fuse_heads, grad_rollout, head_importance, key_placement,
                                   mean_attention_distance, rollout)


def _row_stochastic(*shape):
    return torch.softmax(torch.randn(*shape), dim=-1)


def test_identity_attention_rolls_out_to_the_identity():
    maps = [torch.eye(5).expand(2, 3, 5, 5) for _ in range(4)]
    torch.testing.assert_close(rollout(maps), torch.eye(5).expand(2, 5, 5))


def test_two_layers_equal_the_hand_computed_product():
    torch.manual_seed(0)
    a1, a2 = _row_stochastic(1, 2, 4, 4), _row_stochastic(1, 2, 4, 4)
    eye = torch.eye(4)

    def step(a):
        m = (a.mean(1) + eye) / 2
        return m / m.sum(-1, keepdim=True)

    torch.testing.assert_close(rollout([a1, a2]), step(a2) @ step(a1))
    torch.testing.assert_close(rollout([a1, a2], head_fusion="max")[0].sum(-1), torch.ones(4))


def test_head_fusion_and_discard_by_direct_computation():
    a = torch.tensor([[[[0.1, 0.9], [0.6, 0.4]], [[0.5, 0.5], [0.2, 0.8]]]])  # (1, 2, 2, 2)
    torch.testing.assert_close(fuse_heads(a, "max"), torch.tensor([[[0.5, 0.9], [0.6, 0.8]]]))
    torch.testing.assert_close(fuse_heads(a, "min"), torch.tensor([[[0.1, 0.5], [0.2, 0.4]]]))
    fused = torch.tensor([[[0.05, 0.2, 0.3], [0.01, 0.5, 0.02], [0.4, 0.03, 0.6]]])
    out = discard_weakest(fused, 4 / 9)  # the 4 weakest: 0.01, 0.02, 0.03, 0.05; column 0 is kept
    expected = torch.tensor([[[0.05, 0.2, 0.3], [0.01, 0.5, 0.0], [0.4, 0.0, 0.6]]])
    torch.testing.assert_close(out, expected)
    with pytest.raises(ValueError, match="head_fusion must be one of"):
        rollout([a], head_fusion="median")
    with pytest.raises(ValueError, match=r"discard_ratio must be in \[0, 1\)"):
        rollout([a], discard_ratio=1.0)


def test_grad_rollout_keeps_positive_evidence_only():
    a = _row_stochastic(1, 2, 3, 3)
    grads = [-torch.ones_like(a)]  # all evidence negative: nothing but the residual identity survives
    torch.testing.assert_close(grad_rollout([a], grads), torch.eye(3)[None])
    with pytest.raises(ValueError, match="one gradient per map"):
        grad_rollout([a], [])


def test_mean_distance_of_a_uniform_map_is_the_mean_pairwise_distance():
    rows, cols = 3, 4
    n = rows * cols
    uniform = torch.full((2, 3, 1 + n, 1 + n), 1.0 / (1 + n))  # a class token in front, left out
    y, x = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    p = torch.stack([y.flatten(), x.flatten()], 1).float()
    closed = sum(((p[i] - p[j]) ** 2).sum().sqrt() for i in range(n) for j in range(n)) / n ** 2
    out = mean_attention_distance([uniform, uniform], (rows, cols), patch_size=16)
    torch.testing.assert_close(out, torch.full((2, 3), float(closed) * 16))
    local = torch.eye(n).expand(1, 1, n, n)
    assert mean_attention_distance([local], (rows, cols)).item() == 0.0


def test_rollout_of_a_real_model_and_shape_errors():
    model = create_model("vit-tiny", pooling="cls", max_seq_len=65).eval()
    maps = model.attention_maps(torch.randn(2, 3, 32, 32))
    r = rollout(maps, discard_ratio=0.5)
    assert r.shape == (2, 65, 65) and torch.allclose(r.sum(-1), torch.ones(2, 65))
    with pytest.raises(ValueError, match="roll out one stage"):
        rollout([maps[0], maps[1][:, :, :10, :10]])
    with pytest.raises(ValueError, match="no attention maps"):
        rollout([])


def test_a_head_with_a_zero_output_projection_has_zero_importance():
    torch.manual_seed(0)
    model = create_model("vit-tiny", num_classes=10).eval()
    shell = model.blocks[1].attn
    with torch.no_grad():
        shell.out_proj.weight[:, 2 * shell.head_dim:3 * shell.head_dim] = 0  # head 2 of layer 1 writes nothing
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    scores = head_importance(model, lambda m: torch.nn.functional.cross_entropy(m.classify(x), y))
    assert [s.shape for s in scores] == [(4,), (4,)]
    assert scores[1][2] == 0.0 and (scores[0] > 0).all()
    with pytest.raises(ValueError, match="no attention layers"):
        head_importance(torch.nn.Linear(2, 2), lambda m: torch.zeros(()))


def test_key_placement_against_the_convolution_windows():
    # A 5x4 grid, 3x3 keys of stride 2 and padding 1 (CvT's): keys (3x2), each spread over the cells its window reads.
    grid, placed = (5, 4), key_placement((5, 4), 3, 2, 1, prefix=1)
    assert placed.shape == (1 + 3 * 2, 1 + 5 * 4)
    assert placed[0, 0] == 1 and placed[0, 1:].sum() == 0 and placed[1:, 0].sum() == 0   # the class token
    torch.testing.assert_close(placed.sum(-1), torch.ones(7))
    for key in range(6):
        kr, kc = divmod(key, 2)
        cells = [r * 4 + c for r in range(2 * kr - 1, 2 * kr + 2) for c in range(2 * kc - 1, 2 * kc + 2)
                 if 0 <= r < 5 and 0 <= c < 4]
        want = torch.zeros(20)
        want[cells] = 1 / len(cells)
        torch.testing.assert_close(placed[1 + key, 1:], want)
    centre = key_placement(grid, 3, 2, 1, how="centre")
    assert [divmod(int(i), 4) for i in centre.argmax(-1)] == [(2 * r, 2 * c) for r in range(3) for c in range(2)]
    torch.testing.assert_close(key_placement((3, 3), 1, 1, 0), torch.eye(9))   # stride 1, 1x1: the identity
    with pytest.raises(ValueError, match="how must be"):
        key_placement(grid, 3, 2, 1, how="edge")


def test_rollout_of_strided_keys_equals_the_placed_maps_rolled_out():
    torch.manual_seed(0)
    spread = key_placement((4, 4), 3, 2, 1, prefix=1)                 # 17 queries, 5 keys
    maps = [torch.softmax(torch.randn(2, 3, 17, 5), -1) for _ in range(2)]
    placed = [m.mean(1) @ spread for m in maps]
    eye = torch.eye(17)
    want = torch.eye(17).expand(2, 17, 17)
    for a in placed:
        a = (a + eye) / 2
        want = (a / a.sum(-1, keepdim=True)) @ want
    torch.testing.assert_close(rollout(maps, spread=spread), want)
    grads = [torch.randn_like(m) for m in maps]
    fused = [(m * g).clamp(min=0).mean(1) @ spread for m, g in zip(maps, grads)]
    torch.testing.assert_close(grad_rollout(maps, grads, spread=spread), rollout([f[:, None] for f in fused]))
    with pytest.raises(ValueError, match=r"\(B, H, 17, 5\)"):
        rollout([torch.softmax(torch.randn(1, 1, 17, 6), -1)], spread=spread)


def test_attention_distance_to_strided_keys_uses_their_centres():
    # Every query of a 4x4 grid attends only to the key whose window is centred on grid cell (2, 2).
    centre = key_placement((4, 4), 3, 2, 1, how="centre")             # (4, 16): keys at (0,0), (0,2), (2,0), (2,2)
    m = torch.zeros(1, 1, 16, 4)
    m[..., 3] = 1.0
    ys, xs = torch.meshgrid(torch.arange(4.0), torch.arange(4.0), indexing="ij")
    want = torch.hypot(ys - 2, xs - 2).mean() * 3                     # 3 pixels per token
    torch.testing.assert_close(mean_attention_distance([m], (4, 4), 3, centre)[0, 0], want)
