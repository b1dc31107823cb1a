"""Norms, MLPs and embeddings against their written formulas."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from attnlab.layers import MLP, ByteEmbedding, RMSNorm, SwiGLU, TokenEmbedding, build_mlp, build_norm
from attnlab.layers.mlp import get_activation


def test_rmsnorm_formula():
    norm = RMSNorm(6, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(6))
    x = torch.randn(3, 4, 6) * 5
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * norm.weight
    torch.testing.assert_close(norm(x), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(norm(x), F.rms_norm(x, (6,), norm.weight, eps=1e-6), atol=1e-5, rtol=1e-5)
    out = norm.bfloat16()(x.bfloat16())  # statistics in fp32, result in the input dtype
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, atol=5e-2, rtol=2e-2)


def test_layernorm_formula_and_options():
    norm = build_norm("layernorm", 6, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(6))
        norm.bias.copy_(torch.randn(6))
    x = torch.randn(3, 6) * 4 + 2
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)  # biased variance
    expected = (x - mean) / torch.sqrt(var + 1e-5) * norm.weight + norm.bias
    torch.testing.assert_close(norm(x), expected, atol=1e-5, rtol=1e-5)
    assert build_norm("layernorm", 6, bias=False).bias is None
    assert isinstance(build_norm("rmsnorm", 6, eps=1e-3), RMSNorm) and build_norm("rmsnorm", 6, eps=1e-3).eps == 1e-3
    with pytest.raises(ValueError, match=r"unknown norm 'batchnorm'; valid: \['layernorm', 'rmsnorm'\]"):
        build_norm("batchnorm", 6)


def test_swiglu_formula():
    torch.manual_seed(0)
    mlp = SwiGLU(8, 12)
    x = torch.randn(2, 5, 8)
    gate, up = x @ mlp.gate.weight.T, x @ mlp.up.weight.T
    expected = (gate * torch.sigmoid(gate) * up) @ mlp.fc_out.weight.T  # silu(g) = g * sigmoid(g)
    torch.testing.assert_close(mlp(x), expected, atol=1e-5, rtol=1e-5)
    assert mlp.gate.bias is None  # no biases by default (Llama / PaLM convention)
    assert isinstance(build_mlp("swiglu", 8, 12), SwiGLU)


@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh", "relu", "silu"])
def test_mlp_formula(activation):
    torch.manual_seed(0)
    mlp = MLP(8, 16, activation)
    x = torch.randn(3, 8)
    h = x @ mlp.fc_in.weight.T + mlp.fc_in.bias
    act = {
        "gelu": lambda h: 0.5 * h * (1 + torch.erf(h / math.sqrt(2))),
        "gelu_tanh": lambda h: 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h**3))),
        "relu": lambda h: h.clamp(min=0),
        "silu": lambda h: h / (1 + torch.exp(-h)),
    }[activation]
    expected = act(h) @ mlp.fc_out.weight.T + mlp.fc_out.bias
    torch.testing.assert_close(mlp(x), expected, atol=1e-5, rtol=1e-5)


def test_mlp_errors():
    with pytest.raises(ValueError, match=r"unknown activation 'tanhh'; valid: \['gelu'"):
        get_activation("tanhh")
    with pytest.raises(ValueError, match=r"unknown mlp 'glu'; valid: \['geglu', 'mlp', 'swiglu'\]"):
        build_mlp("glu", 4, 8)


def test_token_and_byte_embeddings():
    emb = TokenEmbedding(10, 4)
    ids = torch.tensor([[0, 9, 3]])
    torch.testing.assert_close(emb(ids), emb.weight[ids])
    assert 0.01 < emb.weight.std().item() < 0.03  # N(0, 0.02) init
    with pytest.raises(ValueError, match=r"ids in \[0, 10\] but vocab_size=10"):
        emb(torch.tensor([[0, 10]]))
    with pytest.raises(ValueError, match=r"\[-1, 3\]"):
        emb(torch.tensor([[-1, 3]]))
    byte = ByteEmbedding(4, num_special=2)
    assert byte.num_embeddings == 258
    assert byte(torch.tensor([[255, 257]])).shape == (1, 2, 4)


def test_geglu_is_the_tanh_gelu_gated_mlp():
    torch.manual_seed(0)
    mlp = build_mlp("geglu", 8, 16, bias=False)
    x = torch.randn(3, 8)
    expected = mlp.fc_out(torch.nn.functional.gelu(mlp.gate(x), approximate="tanh") * mlp.up(x))
    torch.testing.assert_close(mlp(x), expected)


def _fusion():
    from attnlab.layers.mlp import fusion_available

    return fusion_available(torch.device("cpu"))


@pytest.mark.skipif(not _fusion(), reason="this PyTorch build has no oneDNN fused linear")
@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh", "relu"])
def test_mlp_inference_fuses_the_activation_into_the_matmul(activation, monkeypatch):
    """Without gradients on CPU, ``act(fc_in(x))`` is one oneDNN call: the formula's values in fp32, to bf16
    rounding with bf16 weights and under bf16 autocast; with gradients, for decoding-sized inputs (up to 64 rows)
    and for a hooked ``fc_in`` it is not used."""
    from attnlab.layers import mlp as mlp_module
    from attnlab.layers.mlp import fused_linear_activation

    torch.manual_seed(0)
    mlp = MLP(32, 96, activation)
    x = torch.randn(4, 50, 32)
    act = get_activation(activation)
    w, b = mlp.fc_in.weight, mlp.fc_in.bias
    calls = []
    monkeypatch.setattr(mlp_module, "fused_linear_activation",
                        lambda *a: calls.append(1) or fused_linear_activation(*a))
    with torch.no_grad():
        expected = act(x @ w.T + b)
        torch.testing.assert_close(fused_linear_activation(x, w, b, activation), expected, atol=1e-5, rtol=1e-5)
        calls.clear()
        y = mlp(x)
        assert calls == [1]  # MLP.forward took the fused path
        torch.testing.assert_close(y, expected @ mlp.fc_out.weight.T + mlp.fc_out.bias, atol=1e-5, rtol=1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto = fused_linear_activation(x, w, b, activation)
        half = fused_linear_activation(x.bfloat16(), w.bfloat16(), b.bfloat16(), activation)
        for got in (auto, half):
            assert got.dtype == torch.bfloat16
            assert (got.float() - expected).abs().max() <= 0.02 * expected.abs().max()
        assert fused_linear_activation(x.reshape(-1, 32)[:64], w, b, activation) is None  # the decode kernel's rows
        assert fused_linear_activation(x.reshape(-1, 32)[:65], w, b, activation) is not None
        assert fused_linear_activation(x, w, b, "silu") is None
        handle = mlp.fc_in.register_forward_hook(lambda mod, inp, out: out * 0)
        calls.clear()
        assert mlp(x).abs().max() <= mlp.fc_out.bias.abs().max() + 1e-6 and calls == []  # the hook ran
        handle.remove()
    assert fused_linear_activation(x, w, b, activation) is None  # gradients enabled: no backward for the op
