"""Grid attention modules (B, C, H, W) against direct computations from their equations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attnlab.attention.grid import build_grid_attention, grid_attention_options, list_grid_attention


def _delta(conv: nn.Conv2d) -> None:
    """Make a depth-wise conv the identity: a centred delta, no bias."""
    with torch.no_grad():
        conv.weight.zero_()
        k = conv.weight.shape[-1] // 2
        conv.weight[:, :, k, k] = 1.0
        conv.bias.zero_()


def test_registry_lists_every_module_and_rejects_unknown_names_and_options():
    assert list_grid_attention() == ["atconv", "lka", "psa", "ulsam"]
    assert grid_attention_options("ulsam") == {"groups": 4, "bn_momentum": 0.1}
    with pytest.raises(ValueError, match=r"unknown grid attention 'lkaa'.*Did you mean \['lka'\]"):
        build_grid_attention("lkaa", 8)
    with pytest.raises(ValueError, match=r"'psa' has no option\(s\) \['group'\]; valid: \['layout'\]"):
        build_grid_attention("psa", 8, group=2)


@pytest.mark.parametrize("name", ["atconv", "lka", "psa", "ulsam"])
@pytest.mark.parametrize("hw", [(1, 1), (5, 7), (8, 8)])
def test_shape_in_equals_shape_out_and_gradients_flow(name, hw):
    torch.manual_seed(0)
    m = build_grid_attention(name, 8)
    x = torch.randn(3, 8, *hw, requires_grad=True)
    y = m(x)
    assert y.shape == x.shape
    y.square().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


# --- LKA -------------------------------------------------------------------------------------------------------------

def test_lka_with_identity_convolutions_is_x_times_x():
    m = build_grid_attention("lka", 4)
    _delta(m.conv0), _delta(m.conv_spatial)
    with torch.no_grad():
        m.conv1.weight.copy_(torch.eye(4).view(4, 4, 1, 1))
        m.conv1.bias.zero_()
    x = torch.randn(2, 4, 9, 9)
    assert torch.equal(m(x), x * x)
    with torch.no_grad():
        m.conv1.weight.zero_()
    assert torch.equal(m(x), torch.zeros_like(x))


def test_lka_equals_its_equation_with_reference_convolutions():
    torch.manual_seed(1)
    m = build_grid_attention("lka", 6)
    x = torch.randn(2, 6, 11, 10)
    a = F.conv2d(x, m.conv0.weight, m.conv0.bias, padding=2, groups=6)
    a = F.conv2d(a, m.conv_spatial.weight, m.conv_spatial.bias, padding=9, dilation=3, groups=6)
    a = torch.einsum("oc,bchw->bohw", m.conv1.weight[:, :, 0, 0], a) + m.conv1.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(m(x), x * a, rtol=1e-5, atol=1e-5)


def test_lka_receptive_field_is_23_by_23_over_all_channels():
    """5x5 then 7x7 dilated by 3: 5 + 6 * 3 = 23 pixels on a side (the paper's nominal K is 21)."""
    torch.manual_seed(2)
    m = build_grid_attention("lka", 3).double()
    x = torch.randn(1, 3, 41, 41, dtype=torch.float64, requires_grad=True)
    m(x)[0, 1, 20, 20].backward()
    touched = x.grad[0].abs().amax(dim=0) > 0                       # (H, W)
    rows, cols = torch.nonzero(touched, as_tuple=True)
    assert (rows.min().item(), rows.max().item(), cols.min().item(), cols.max().item()) == (9, 31, 9, 31)
    assert touched[9:32, 9:32].all()                                 # dense: every pixel of the box
    assert (x.grad[0, :, 9:32, 9:32].abs() > 0).any(dim=(1, 2)).all()  # through the 1x1, every channel


def test_lka_rejects_even_kernels():
    with pytest.raises(ValueError, match="odd kernel sides"):
        build_grid_attention("lka", 4, kernel_size=4)


# --- PSA -------------------------------------------------------------------------------------------------------------

def _psa_direct(m, x):
    """Channel and spatial gates written out from the paper's equations with einsum."""
    B, C, H, W = x.shape
    w = lambda conv: conv.weight[:, :, 0, 0]
    pix = x.flatten(2)                                                             # (B, C, HW)
    v = torch.einsum("oc,bcn->bon", w(m.ch_wv), pix) + m.ch_wv.bias.view(1, -1, 1)
    q = torch.softmax(torch.einsum("oc,bcn->bon", w(m.ch_wq), pix) + m.ch_wq.bias.view(1, -1, 1), dim=-1)[:, 0]
    z = torch.einsum("bcn,bn->bc", v, q)
    logits = torch.einsum("oc,bc->bo", w(m.ch_wz), z) + m.ch_wz.bias
    mu, var = logits.mean(-1, keepdim=True), logits.var(-1, unbiased=False, keepdim=True)
    a_ch = torch.sigmoid((logits - mu) / torch.sqrt(var + m.ln.eps) * m.ln.weight + m.ln.bias)

    def a_sp(inp):
        p = inp.flatten(2)
        vq = torch.einsum("oc,bcn->bon", w(m.sp_wq), p) + m.sp_wq.bias.view(1, -1, 1)
        qs = torch.softmax(vq.mean(-1), dim=-1)                                    # (B, C/2)
        vs = torch.einsum("oc,bcn->bon", w(m.sp_wv), p) + m.sp_wv.bias.view(1, -1, 1)
        return torch.sigmoid(torch.einsum("bc,bcn->bn", qs, vs)).view(B, 1, H, W)

    return a_ch.view(B, C, 1, 1), a_sp


@pytest.mark.parametrize("layout", ["parallel", "sequential"])
def test_psa_equals_its_equations(layout):
    torch.manual_seed(3)
    m = build_grid_attention("psa", 8, layout=layout)
    with torch.no_grad():
        m.ln.weight.uniform_(0.5, 1.5), m.ln.bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, 8, 5, 6)
    a_ch, a_sp = _psa_direct(m, x)
    z = a_ch * x
    want = z + a_sp(x) * x if layout == "parallel" else a_sp(z) * z
    torch.testing.assert_close(m(x), want, rtol=1e-5, atol=1e-6)
    gates = torch.cat([m.channel_gate(x).flatten(), m.spatial_gate(x).flatten()])
    assert ((gates > 0) & (gates < 1)).all()


def test_psa_special_cases():
    torch.manual_seed(4)
    m = build_grid_attention("psa", 6)
    x = torch.randn(2, 6, 4, 4)
    with torch.no_grad():
        m.sp_wq.weight.zero_(), m.sp_wq.bias.zero_()          # uniform channel softmax: the mean of V'
    v = m.sp_wv(x)
    torch.testing.assert_close(m.spatial_gate(x), torch.sigmoid(v.mean(1, keepdim=True)))
    with torch.no_grad():
        m.ch_wz.weight.zero_(), m.ch_wz.bias.zero_(), m.ln.bias.zero_()
    assert torch.equal(m.channel_gate(x), torch.full((2, 6, 1, 1), 0.5))
    with pytest.raises(ValueError, match="channels=5 must be even"):
        build_grid_attention("psa", 5)
    with pytest.raises(ValueError, match="'parallel' or 'sequential'"):
        build_grid_attention("psa", 4, layout="serial")


# --- ULSAM -----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("groups", [1, 2, 4])
def test_ulsam_maps_sum_to_one_and_reweight_each_subspace(groups):
    torch.manual_seed(5)
    m = build_grid_attention("ulsam", 8, groups=groups).eval()
    for sub in m.subspaces:
        with torch.no_grad():
            sub.bn_point.running_mean.fill_(-1.0)            # keep the ReLU'd logits away from all-zero
    x = torch.randn(2, 8, 6, 5)
    maps = [sub.attention(part) for sub, part in zip(m.subspaces, torch.chunk(x, groups, dim=1))]
    assert len(maps) == groups
    for a in maps:
        assert a.shape == (2, 1, 6, 5)
        torch.testing.assert_close(a.sum(dim=(1, 2, 3)), torch.ones(2))
    want = torch.cat([p * (1 + a) for p, a in zip(torch.chunk(x, groups, dim=1), maps)], dim=1)
    torch.testing.assert_close(m(x), want)


def test_ulsam_map_from_its_equations_and_the_uniform_case():
    torch.manual_seed(6)
    m = build_grid_attention("ulsam", 4, groups=2).eval()
    sub, x = m.subspaces[0], torch.randn(1, 2, 5, 5)
    t = x * sub.conv_dws.weight.view(1, 2, 1, 1) + sub.conv_dws.bias.view(1, 2, 1, 1)
    t = F.max_pool2d(torch.relu(t / (1 + sub.bn_dws.eps) ** 0.5), 3, 1, 1)         # eval BN: mean 0, var 1
    a = torch.einsum("c,bchw->bhw", sub.conv_point.weight.view(2), t) + sub.conv_point.bias
    a = torch.softmax(torch.relu(a / (1 + sub.bn_point.eps) ** 0.5).flatten(1), -1).view(1, 1, 5, 5)
    torch.testing.assert_close(sub.attention(x), a)
    with torch.no_grad():
        for s in m.subspaces:
            s.conv_point.weight.zero_(), s.conv_point.bias.zero_()
    x = torch.randn(2, 4, 5, 5)
    torch.testing.assert_close(m(x), x * (1 + 1 / 25))
    with pytest.raises(ValueError, match="groups=3"):
        build_grid_attention("ulsam", 8, groups=3)


# --- ATConv ----------------------------------------------------------------------------------------------------------

def _per_sample_unfold(m, x):
    """The per-sample depth-wise convolution as unfold + einsum (the reference's second path)."""
    B, C, H, W = x.shape
    k = m.kernel_size
    patches = F.unfold(m.x_proj(x), k, padding=k // 2).view(B, C, k * k, H * W)
    y = torch.einsum("bcp,bcpn->bcn", m.kernels(x).view(B, C, k * k), patches).view(B, C, H, W)
    return m.proj(y)


@pytest.mark.parametrize("k", [3, 5])
def test_atconv_grouped_path_equals_unfold_path_and_samples_are_independent(k):
    torch.manual_seed(7)
    m = build_grid_attention("atconv", 6, kernel_size=k)
    x = torch.randn(3, 6, 7, 9)
    y = m(x)
    torch.testing.assert_close(y, _per_sample_unfold(m, x), rtol=1e-5, atol=1e-5)
    x2 = x.clone()
    x2[1] = torch.randn(6, 7, 9)
    y2 = m(x2)
    assert torch.equal(y2[0], y[0]) and torch.equal(y2[2], y[2]) and not torch.allclose(y2[1], y[1])


def test_atconv_kernels_from_their_equations_and_lateral_inhibition():
    torch.manual_seed(8)
    m = build_grid_attention("atconv", 4)
    x = torch.randn(2, 4, 6, 6)
    kp = m.kernel_proj(x).flatten(2)                                          # (2, 4, 36): 9 bins of 4 in raster order
    pooled = kp.view(2, 4, 9, 4).mean(-1)
    raw = m.kernel_gen(F.gelu(pooled))
    torch.testing.assert_close(m.kernels(x).view(2, 4, 9), raw - 0.5 * raw.mean(-1, keepdim=True))
    with torch.no_grad():
        m.difference_control.fill_(-60.0)                                     # no inhibition
    torch.testing.assert_close(m.kernels(x).view(2, 4, 9), raw)
    with torch.no_grad():
        m.difference_control.fill_(60.0)                                      # full inhibition: kernels sum to 0
    torch.testing.assert_close(m.kernels(x).sum(dim=(2, 3)), torch.zeros(2, 4), atol=1e-6, rtol=0)
    const = torch.ones(2, 4, 6, 6) * torch.randn(1, 4, 1, 1)
    interior = m(const)[:, :, 1:-1, 1:-1]
    torch.testing.assert_close(interior, m.proj.bias.view(1, 4, 1, 1).expand_as(interior), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="odd kernel_size"):
        build_grid_attention("atconv", 4, kernel_size=4)
