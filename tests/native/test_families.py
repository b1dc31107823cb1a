"""Each native kernel family (bf16 attention, fp32 attention, pointwise, transpose) is built, gated on its
own CPU features and reported on its own: a missing feature or a rejected compiler flag takes out only the
families that need it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attnlab import native
from attnlab.native import build
from attnlab.native.documents import documents_attention_bf16
from attnlab.native.documents_fp32 import documents_attention_fp32
from attnlab.native.interface import interface
from attnlab.native.linear import transpose_bf16
from attnlab.native.pointwise import layer_norm_bf16
from native_cpu import HAS_AMX, family_runs, needs_native

OTHERS = ("attention_fp32", "transpose")  # the families that need neither AVX-512 BF16 nor AMX


@pytest.fixture
def fresh(monkeypatch):
    """The families reopened from scratch inside the test (the process's own state is put back after)."""
    monkeypatch.setattr(native, "_loaded", {})


def _fp32_attention_runs() -> None:
    q, k, v = (torch.randn(1, 2, 20, 32) for _ in range(3))
    out = documents_attention_fp32(q, k, v, [[(0, 20)]], causal=True, scale=None)
    assert out is not None and torch.allclose(out, F.scaled_dot_product_attention(q, k, v, is_causal=True),
                                              atol=1e-5)


def _transpose_runs() -> None:
    x = torch.randn(40, 24).to(torch.bfloat16)
    assert torch.equal(transpose_bf16(x), x.t())


def test_each_family_is_available_where_the_cpu_has_its_features():
    for family in native.FAMILIES:
        status = native.native_status(family)
        assert status.startswith("available") == family_runs(family), (family, status)
        assert (native.load(family) is not None) == family_runs(family)
    if family_runs("attention_bf16"):
        assert native.native_status("attention_bf16") == ("available (AMX-BF16)" if HAS_AMX
                                                          else "available (AVX-512 BF16)")
        assert native.native_status().startswith(native.native_status("attention_bf16") + "; attention_fp32: ")
    assert list(native.status_by_family()) == list(native.FAMILIES)


def test_unknown_family_and_switch():
    with pytest.raises(ValueError, match="no native kernel family"):
        native.load("attention_fp16")
    with pytest.raises(ValueError, match="no native kernel family"):
        native.native_status("probe")
    with native.disabled():
        assert all(native.load(f) is None for f in native.FAMILIES)
        assert native.native_status("transpose").startswith("switched off")


@pytest.mark.skipif(not all(family_runs(f) for f in OTHERS), reason="needs AVX-512F, FMA and gcc")
def test_a_cpu_without_avx512_bf16_keeps_fp32_attention_and_transpose(monkeypatch, fresh):
    real = native._cpu_features
    bf16 = interface().features["AVX512_BF16"] | interface().features["AMX_BF16"]
    monkeypatch.setattr(native, "_cpu_features", lambda probe: real(probe) & ~bf16)
    for family in ("attention_bf16", "pointwise"):
        assert native.load(family) is None
        assert native.native_status(family) == "this CPU lacks AVX-512 BF16"
    assert native.native_status().startswith("this CPU lacks AVX-512 BF16; attention_fp32: available;")
    q = torch.randn(1, 2, 16, 32).to(torch.bfloat16)
    assert documents_attention_bf16(q, q, q, [[(0, 16)]], causal=False, scale=None) is None
    assert layer_norm_bf16(torch.randn(3, 32), None, None, 1e-5) is None
    for family in OTHERS:
        assert native.native_status(family) == "available"
    _fp32_attention_runs()
    _transpose_runs()


@pytest.mark.skipif(not family_runs("attention_fp32"), reason="needs AVX-512F, FMA and gcc")
def test_a_cpu_without_avx512_has_no_family_but_a_clear_status(monkeypatch, fresh):
    monkeypatch.setattr(native, "_cpu_features", lambda probe: interface().features["FMA"])
    assert native.native_status("transpose") == "this CPU lacks AVX-512F"
    assert native.native_status("attention_fp32") == "this CPU lacks AVX-512F"
    assert native.native_status("attention_bf16") == "this CPU lacks AVX-512F, AVX-512BW, AVX-512VL, AVX-512 BF16"
    assert all(native.load(f) is None for f in native.FAMILIES)


@needs_native
def test_a_rejected_compiler_flag_takes_out_only_its_family(monkeypatch, fresh):
    """An old compiler without the AMX flags: the bf16 attention (built with them) is not available, the
    families built without them are (their cached libraries do not depend on the AMX flags)."""
    monkeypatch.setitem(build.FEATURES, "AMX_BF16", (["-mno-such-instruction-set"], "AMX-BF16"))
    assert native.load("attention_bf16") is None
    status = native.native_status("attention_bf16")
    assert status.startswith("compiling the native kernels (attention_bf16") and "no-such" in status, status
    assert native.native_status().startswith(status + "; attention_fp32: available; pointwise: available;")
    for family in ("attention_fp32", "pointwise", "transpose"):
        assert native.native_status(family) == "available"
    assert layer_norm_bf16(torch.randn(3, 32), None, None, 1e-5) is not None
    _fp32_attention_runs()
    _transpose_runs()


def test_each_family_is_compiled_with_only_its_features_flags():
    assert build.FAMILIES["attention_fp32"].flags() == build.BASE_FLAGS + ["-mavx512f", "-mfma"]
    assert build.FAMILIES["transpose"].flags() == build.BASE_FLAGS + ["-mavx512f"]
    assert build.PROBE.flags() == build.BASE_FLAGS  # runs on any x86-64 CPU
    assert "-mamx-tile" in build.FAMILIES["attention_bf16"].flags()
    assert "-mamx-tile" not in build.FAMILIES["pointwise"].flags()


def test_build_compiles_the_bytes_it_hashed(tmp_path, monkeypatch):
    """The cache name and the build come from one snapshot of the sources: a source edited on disk after the
    snapshot was taken cannot end up in a library cached under the snapshot's name."""
    import ctypes

    from attnlab.native import build

    compiler = build.find_compiler()
    if compiler is None:
        pytest.skip("no C compiler on this machine (install gcc)")
    monkeypatch.setenv("ATTNLAB_CACHE", str(tmp_path))
    family = build.PROBE
    snapshot = build._snapshot(family)
    marker = b'__attribute__((visibility("default"))) int attnlab_snapshot_marker(void) { return 42; }'
    snapshot[family.sources[0]] += b"\n" + marker + b"\n"
    target = build.library_path(family, compiler, snapshot)
    assert target != build.library_path(family, compiler)  # the name follows the bytes
    assert build._compile(family, compiler, target, snapshot) is None
    lib = ctypes.CDLL(str(target))
    assert ctypes.cast(lib.attnlab_snapshot_marker, ctypes.c_void_p).value is not None
