"""The three recipes of docs/design.md, followed once each by a throwaway defined here.

- **Kernel**: attention sinks + sliding window (StreamingLLM, Xiao et al. 2023, arXiv:2309.17453): each query
  sees the first ``sinks`` keys and a window of recent keys. Registered for the duration of a test, it goes
  through the whole kernel conformance suite and the model-level checks, as a built-in kernel would.
- **Family**: a tiny causal forecaster for real-valued series on the shared body (a linear read-in of
  ``(B, T, C)`` values, the body, a linear read-out), registered as a preset: ``attention=`` and per-layer
  schedules work in it, an unfit kernel is refused at build time naming the kernels that can serve.
- **Objective**: next-step mean squared error, registered by name and looked up through the registry;
  training the family with it for a few steps lowers the loss.
"""

from __future__ import annotations

import importlib.util
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.attention import AttentionKernel, Capabilities, CapabilityError, reference_attention, register_attention
from attnlab.attention.masks import query_key_positions
from attnlab.attention.registry import _REGISTRY as KERNELS
from attnlab.models import ModelConfig, create_model, register_model
from attnlab.models.registry import _MODELS as PRESETS
from attnlab.models.transformer import TransformerBody, init_weights
from attnlab.objectives import _OBJECTIVES as OBJECTIVES
from attnlab.objectives import get_objective, register_objective

TESTS = Path(__file__).resolve().parents[1]


def _load(relative: str, name: str):
    """A test module of the suite as a library (a separate module object, so pytest does not collect it twice)."""
    spec = importlib.util.spec_from_file_location(name, TESTS / relative)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


# ---- the kernel recipe ------------------------------------------------------------------------------
class SinkWindowAttention(AttentionKernel):
    """Attention sinks + sliding window (Xiao et al. 2023): query ``t`` sees keys ``j < sinks`` and the
    window (causal: ``t - window < j <= t``; bidirectional: ``|t - j| <= window // 2``). Exact softmax under
    that pattern, here through the reference formula. Shapes: q ``(B, H, T, Dh)``, k/v ``(B, Hkv, S, Dh)``.
    """

    capabilities = Capabilities(complexity="O(N^2) here (O(N*(w+s)) with a blocked engine)")

    def __init__(self, window: int = 6, sinks: int = 2, scale: float | None = None):
        super().__init__(scale=scale)
        if window < 1 or sinks < 0:
            raise ValueError(f"window must be >= 1 and sinks >= 0, got window={window}, sinks={sinks}")
        self.window, self.sinks = window, sinks

    def pattern_mask(self, T: int, S: int, ctx, device=None) -> Tensor:
        q_pos, k_pos = query_key_positions(T, S, device)
        diff = q_pos[:, None] - k_pos[None, :]  # (T, S)
        left, right = (self.window - 1, 0) if ctx.causal else (self.window // 2, self.window // 2)
        keep = ((diff <= left) & (diff >= -right)) | (k_pos[None, :] < self.sinks)
        return keep[None, None]  # (1, 1, T, S)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, ctx) -> Tensor:
        keep = self.full_mask(q.shape[2], k.shape[2], ctx, q.device)
        out, _ = reference_attention(q, k, v, keep=keep, bias=ctx.attn_bias, scale=self.softmax_scale(q.shape[-1]))
        return out


@contextmanager
def registered(registry, name: str, add):
    """Register something for the duration of a block (tests must not leave it in the global registry)."""
    add()
    try:
        yield
    finally:
        registry.pop(name)


@pytest.fixture
def sink_window():
    with registered(KERNELS, "sink_window", lambda: register_attention("sink_window")(SinkWindowAttention)):
        yield "sink_window"


def test_the_kernel_passes_the_conformance_suite(sink_window):
    conf = _load("attention/test_conformance.py", "recipe_conformance")
    for causal in (True, False):
        case = conf.Case(sink_window, causal, None)
        conf.test_shape_dtype_finite(case)
        conf.test_gradient_reaches_every_parameter(case)
        conf.test_padded_tokens_change_nothing_at_valid_positions(case)
        conf.test_packed_documents_do_not_interact(case)
        conf.test_batch_rows_are_independent(case)
        conf.test_bf16_autocast_forward_backward(case)
        conf.test_deterministic_under_fixed_seed(case)
        for num_kv_heads in (2, 1):
            conf.test_grouped_kv_heads(case, num_kv_heads)
        conf.test_attention_maps_on_request(case)
        conf.test_exact_kernel_equals_reference(case)
        conf.test_any_length(case)
        if causal:
            for train in (False, True):
                conf.test_causal_future_does_not_leak(case, train)
    conf.test_capabilities_are_honest(sink_window)


def test_the_kernel_runs_in_the_model_families(sink_window):
    models = _load("models/test_attention_in_models.py", "recipe_models")
    models.test_gpt_trains_and_is_causal(sink_window)
    models.test_encoder_trains_and_ignores_padding(sink_window)
    for position in ("learned", "rope", "alibi"):
        models.test_kv_cache_equals_full_forward(sink_window, position)
    models.test_kv_cache_in_mixed_schedule(sink_window)
    models.test_model_build_checks_capabilities(sink_window)


def test_the_kernel_is_gone_after_the_test(sink_window):
    from attnlab.attention import list_attention

    assert sink_window in list_attention()
    KERNELS.pop(sink_window)
    assert sink_window not in list_attention()
    register_attention(sink_window)(SinkWindowAttention)  # the fixture removes it again


# ---- the family recipe ------------------------------------------------------------------------------
class SeriesForecaster(TransformerBody):
    """Causal forecaster: values ``(B, T, C)`` -> predictions of the next step ``(B, T, C)``."""

    causal = True

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg, embed=nn.Identity())  # the read-in below replaces token embeddings
        self.read_in = nn.Linear(cfg.num_channels, cfg.dim)
        self.pos = nn.Parameter(torch.zeros(cfg.max_seq_len, cfg.dim))
        self.read_out = nn.Linear(cfg.dim, cfg.num_channels)
        init_weights(self, cfg)

    def forward(self, values: Tensor) -> Tensor:
        if values.dim() != 3 or values.shape[-1] != self.cfg.num_channels:
            raise ValueError(f"expected values (batch, steps, {self.cfg.num_channels}), got {tuple(values.shape)}")
        x = self.read_in(values) + self.pos[: values.shape[1]]
        return self.read_out(self.encode(None, inputs_embeds=x))


PRESET = "series-recipe-tiny"


@pytest.fixture
def series_preset():
    add = lambda: register_model(PRESET, SeriesForecaster, "recipe test: tiny series forecaster", dim=32,  # noqa: E731
                                 num_layers=2, num_heads=4, max_seq_len=64, num_channels=3)
    with registered(PRESETS, PRESET, add):
        yield PRESET


def series(batch: int, steps: int, seed: int) -> Tensor:
    """Three noisy sines with random phases: ``(batch, steps, 3)``, predictable from the past."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(steps, dtype=torch.float32)[None, :, None]
    phase = torch.rand(batch, 1, 3, generator=g) * 6.28
    freq = torch.tensor([0.3, 0.5, 0.8])
    return torch.sin(freq * t + phase) + 0.05 * torch.randn(batch, steps, 3, generator=g)


def test_family_takes_any_causal_kernel_and_schedule(series_preset):
    x = series(2, 20, seed=0)
    for attention in ("softmax", "sliding_window", ["softmax", "linear"]):
        model = create_model(series_preset, attention=attention)
        out = model(x)
        assert out.shape == (2, 20, 3) and torch.isfinite(out).all()
        future = x.clone()
        future[:, 12:] = 5.0
        torch.testing.assert_close(model(future)[:, :12], out[:, :12], atol=1e-5, rtol=1e-4)  # causal
    assert [b.attn.kernel.name for b in create_model(series_preset, attention=["softmax", "linear"]).blocks] == [
        "softmax", "linear"]


def test_family_refuses_an_unfit_kernel_at_build_naming_those_that_fit(series_preset):
    with pytest.raises(CapabilityError, match=r"does not support causal.*Kernels that support causal: \[.*'softmax'"):
        create_model(series_preset, attention=["softmax", "gpsa"])


# ---- the objective recipe ---------------------------------------------------------------------------
def next_step_mse(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
    """Mean squared error of the prediction at step ``t`` against the value at ``t + 1``; ``values (B, T, C)``."""
    values = batch["values"]
    loss = F.mse_loss(model(values[:, :-1]), values[:, 1:])
    return loss, {"loss": loss.detach()}


@pytest.fixture
def forecast_objective():
    with registered(OBJECTIVES, "next_step_mse", lambda: register_objective("next_step_mse")(next_step_mse)):
        yield "next_step_mse"


def test_family_trains_with_the_objective(series_preset, forecast_objective):
    from attnlab.objectives import list_objectives

    assert forecast_objective in list_objectives()
    step = get_objective(forecast_objective)
    torch.manual_seed(0)
    model = create_model(series_preset, attention=["softmax", "sliding_window"],
                         attention_options=[{}, {"window": 8}])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    held_out = {"values": series(16, 33, seed=99)}
    with torch.no_grad():
        before = float(step(model, held_out)[0])
    for i in range(60):
        loss, _ = step(model, {"values": series(16, 33, seed=i)})
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = float(step(model, held_out)[0])
    assert after < 0.5 * before, (before, after)
