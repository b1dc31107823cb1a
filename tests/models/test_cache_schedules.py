"""KV-cache decoding when layers keep caches of different lengths (rolling window next to dense).

Uses a throw-away kernel registered for the test: exact windowed softmax with a
:class:`RollingKVCache` and ALiBi support, the combination a sliding-window kernel with position
bias would have. Position biases must then be sized per layer (each layer sees its own key count).
"""

from __future__ import annotations

import pytest
import torch

from attnlab.attention import AttentionKernel, Capabilities, RollingKVCache, reference_attention, register_attention
from attnlab.attention import registry as attention_registry
from attnlab.attention.masks import query_key_positions
from attnlab.models import create_model

WINDOW = 4


class _WindowedSoftmax(AttentionKernel):
    """Query at position p sees keys p - window .. p (bottom-right aligned); rolling cache of window keys."""

    capabilities = Capabilities()

    def __init__(self, window: int = WINDOW):
        super().__init__()
        self.window = window

    def pattern_mask(self, T, S, ctx, device=None):
        q_pos, k_pos = query_key_positions(T, S, device)
        return (k_pos[None, :] >= q_pos[:, None] - self.window)[None, None]  # (1, 1, T, S)

    def forward(self, q, k, v, ctx=None):
        self.check_call(q, k, v, ctx)
        keep = self.full_mask(q.shape[2], k.shape[2], ctx, q.device)
        return reference_attention(q, k, v, keep=keep, bias=ctx.attn_bias)[0]

    def new_cache(self, batch_size, num_kv_heads, head_dim, max_len, device=None, dtype=None):
        return RollingKVCache(batch_size, num_kv_heads, head_dim, self.window, device=device, dtype=dtype)


@pytest.fixture
def windowed():
    register_attention("_test_windowed")(_WindowedSoftmax)
    yield "_test_windowed"
    attention_registry._REGISTRY.pop("_test_windowed", None)


@pytest.mark.parametrize("position", ["alibi", "relative", "rope"])
@pytest.mark.parametrize("order", ["window-first", "dense-first"])
def test_mixed_cache_lengths_equal_full_forward(windowed, position, order):
    schedule = [windowed, "softmax"] if order == "window-first" else ["softmax", windowed]
    torch.manual_seed(0)
    model = create_model("gpt-tiny", vocab_size=23, num_layers=2, attention=schedule, position=position).eval()
    ids = torch.randint(0, 23, (2, 15))
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache(2)
        assert isinstance(cache[schedule.index(windowed)], RollingKVCache)
        steps = [model(ids[:, :6], cache=cache)] + [model(ids[:, t:t + 1], cache=cache) for t in range(6, 12)]
        steps.append(model(ids[:, 12:], cache=cache))  # a chunk after the window has rolled
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-4)
