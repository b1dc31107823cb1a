"""Shared test settings: seeded torch RNG per test, hypothesis without deadlines (shared CPUs)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, settings

# Timing varies a lot on shared 2-core machines: no per-example deadline, modest example counts.
settings.register_profile(
    "attnlab",
    deadline=None,
    max_examples=20,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile("attnlab")

# Test tensors are tiny: intra-op threads only add synchronisation, and on a shared 2-core machine
# they make a tiny model ~20x slower (measured: 2.0 s vs 0.11 s CPU for 3 cached decodes of gpt-tiny).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_torch():
    """Every test starts from the same global RNG state, so failures reproduce."""
    torch.manual_seed(0)
    yield
