"""The attention registry: loud errors, structural arguments, capability requirements."""

from __future__ import annotations

import pytest
import torch

from attnlab.attention import (
    AttentionContext,
    AttentionKernel,
    Capabilities,
    CapabilityError,
    MultiHeadAttention,
    attention_options,
    build_attention,
    describe_attention,
    get_attention_class,
    list_attention,
    register_attention,
)
from attnlab.attention import registry as registry_module


@pytest.fixture
def temp_kernel():
    """Register a throw-away kernel (with structural args) and remove it afterwards."""
    names: list[str] = []

    def make(name: str, caps: Capabilities = Capabilities()):
        class Dummy(AttentionKernel):
            capabilities = caps

            def __init__(self, window: int = 3, num_heads: int | None = None, head_dim: int | None = None):
                super().__init__()
                self.window, self.num_heads, self.head_dim = window, num_heads, head_dim

            def forward(self, q, k, v, ctx=None):
                ctx = AttentionContext() if ctx is None else ctx
                self.check_call(q, k, v, ctx)
                return q

        names.append(name)
        return register_attention(name)(Dummy)

    yield make
    for n in names:
        registry_module._REGISTRY.pop(n, None)


def one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg, f"error message spans several lines: {msg!r}"
    return msg


def test_unknown_name_lists_valid_names_and_suggests():
    with pytest.raises(ValueError) as err:
        build_attention("softmx")
    msg = one_line(err)
    assert "'softmx'" in msg and "Did you mean ['softmax']" in msg
    assert all(n in msg for n in list_attention())
    with pytest.raises(ValueError, match="unknown attention 'zzz'"):
        get_attention_class("zzz")


def test_unknown_option_lists_valid_options():
    with pytest.raises(ValueError) as err:
        build_attention("softmax", windw=4)
    msg = one_line(err)
    assert "['windw']" in msg and "'dropout'" in msg and "'scale'" in msg
    assert attention_options("softmax") == {"dropout": 0.0, "scale": None}


def test_duplicate_registration_is_an_error(temp_kernel):
    cls = temp_kernel("_test_dup")
    assert register_attention("_test_dup")(cls) is cls  # re-registering the same class is harmless

    class Other(AttentionKernel):
        pass

    with pytest.raises(ValueError, match="'_test_dup' is already registered by"):
        register_attention("_test_dup")(Other)
    with pytest.raises(ValueError, match="already registered"):
        register_attention("softmax")(Other)
    with pytest.raises(TypeError, match="AttentionKernel subclass"):
        register_attention("_test_not_a_kernel")(dict)
    assert "_test_not_a_kernel" not in list_attention()


def test_structural_args_are_filled_only_when_accepted(temp_kernel):
    temp_kernel("_test_structural")
    opts = attention_options("_test_structural")
    assert opts == {"window": 3}  # structural args are not user options
    k = build_attention("_test_structural", structural=dict(num_heads=6, head_dim=16, num_kv_heads=2,
                                                             max_seq_len=None), window=5)
    assert (k.window, k.num_heads, k.head_dim) == (5, 6, 16)
    with pytest.raises(ValueError, match="no option"):
        build_attention("_test_structural", num_heads=6)  # structural args only via `structural`
    # softmax takes none of them: passing them structurally is fine and ignored
    assert isinstance(build_attention("softmax", structural=dict(num_heads=4, head_dim=8)), AttentionKernel)
    # the shell passes its layout
    mha = MultiHeadAttention(48, 6, 2, kernel="_test_structural", kernel_options={"window": 7})
    assert (mha.kernel.window, mha.kernel.num_heads, mha.kernel.head_dim) == (7, 6, 8)
    assert "_test_structural" in list_attention() and list_attention() == sorted(list_attention())


def test_capability_require_errors():
    caps = Capabilities(causal=False, kv_cache=False)
    caps.require("k", bidirectional=True, causal=False)  # asking for nothing missing is fine
    with pytest.raises(CapabilityError) as err:
        caps.require("k", causal=True)
    msg = one_line(err)
    assert "'k' does not support causal" in msg and "bidirectional" in msg
    assert isinstance(err.value, ValueError)
    with pytest.raises(CapabilityError, match="kv_cache"):
        caps.require("k", kv_cache=True)
    with pytest.raises(ValueError, match="unknown capability 'flying'"):
        caps.require("k", flying=True)


def test_capabilities_checked_at_call_time(temp_kernel):
    kernel = temp_kernel("_test_caps", Capabilities(causal=False, packed=False, requires_grid=True, grid_2d=True))()
    q = torch.randn(1, 2, 6, 4)
    grid_ctx = dict(grid=(2, 3))
    assert kernel(q, q, q, AttentionContext(**grid_ctx)) is q
    with pytest.raises(CapabilityError, match="causal"):
        kernel(q, q, q, AttentionContext(causal=True, **grid_ctx))
    with pytest.raises(CapabilityError, match="packed"):
        kernel(q, q, q, AttentionContext(document_ids=torch.zeros(1, 6, dtype=torch.long), **grid_ctx))
    with pytest.raises(CapabilityError, match=r"grid=\(rows, cols\)"):
        kernel(q, q, q, AttentionContext())


def test_describe_attention_rows():
    rows = {r["name"]: r for r in describe_attention()}
    assert set(rows) == set(list_attention())
    soft = rows["softmax"]
    assert soft["capabilities"]["exact"] is True and soft["capabilities"]["causal"] is True
    assert soft["options"] == {"dropout": 0.0, "scale": None}
    assert soft["summary"].startswith("Exact softmax attention")
    for r in rows.values():
        assert r["summary"], f"kernel {r['name']!r} has no docstring summary"
