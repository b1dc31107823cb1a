"""attnlab.native.marshal: the helpers every native entry shares, and that the entries share them through it
rather than importing each other's private names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import attnlab.native
from attnlab.native import marshal


def test_no_module_imports_another_modules_private_names():
    for path in Path(attnlab.native.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level > 0:
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{path.name} imports {private} from .{node.module or ''}"


def test_doc_table_and_whole_rows():
    assert marshal.doc_table([[(0, 3), (3, 5)], [(0, 5)]], 2, 5).tolist() == [[0, 0, 3], [0, 3, 2], [1, 0, 5]]
    assert marshal.doc_table(marshal.whole_rows(2, 7), 2, 7).tolist() == [[0, 0, 7], [1, 0, 7]]
    for bad in ([[(0, 5)]], [[(0, 2), (3, 5)]] * 2, [[(0, 4)]] * 2, [[(0, 0), (0, 5)]] * 2):
        with pytest.raises(ValueError, match="spans"):
            marshal.doc_table(bad, 2, 5)


def test_gradient_buffers_and_kv_group_sums():
    q = torch.randn(2, 6, 5, 16)
    dq, dk, dv, joined = marshal.gradient_buffers(q, 2)
    assert joined is None and dq.shape == q.shape and dq.transpose(1, 2).is_contiguous()
    k = torch.randn(2, 2, 5, 16, requires_grad=True)
    k.repeat_interleave(3, 1).backward(dk.copy_(torch.randn(q.shape)))  # the adjoint of the head expansion
    assert torch.allclose(marshal.gradient_results(dq, dk, dv, None, 2)[1], k.grad)
    assert [t.shape for t in marshal.fake_gradients(q, k, k)] == [q.shape, k.shape, k.shape]
    assert marshal.split_results(*marshal.gradient_results(dq, dk, dv, None, 6))[1] is dk


def test_gradient_buffers_without_gqa_share_the_fused_projection_layout():
    q = torch.randn(2, 3, 5, 16)
    dq, dk, dv, joined = marshal.gradient_buffers(q, 3)
    assert joined.shape == (2, 5, 3, 3, 16) and joined.is_contiguous()
    for i, g in enumerate((dq, dk, dv)):  # slice i of each token's row, heads then Dh: the qkv projection's columns
        assert g.shape == q.shape and g.data_ptr() == joined.data_ptr() + i * 3 * 16 * 4
        g.copy_(torch.full(q.shape, float(i)))
    assert torch.equal(joined.view(2, 5, 3, 48)[:, :, :, 0], torch.tensor([0.0, 1.0, 2.0]).expand(2, 5, 3))
    packed = marshal.gradient_results(dq, dk, dv, joined, 3)
    assert packed[0] is joined and packed[1].numel() == packed[2].numel() == 0  # outputs of an op may not alias
    assert [t.shape for t in marshal.fake_gradients(q, q, q)] == [t.shape for t in packed]
    assert all(torch.equal(a, b) and a.stride() == b.stride() for a, b in zip(marshal.split_results(*packed), (dq, dk, dv)))


def test_small_helpers():
    q = torch.randn(1, 2, 3, 64)
    assert marshal.score_scale(q, None) == 0.125 and marshal.score_scale(q, -2) == -2.0
    assert marshal.pointer(None) is None and marshal.pointer(q) == q.data_ptr()
    assert marshal.threads(1) == 1 and marshal.threads(10 ** 6) == torch.get_num_threads()
    assert not marshal.grad_wanted(q, None) and marshal.grad_wanted(q.requires_grad_())
    with torch.no_grad():
        assert not marshal.grad_wanted(q)
    marshal.check_status(0)
    with pytest.raises(MemoryError, match="could not allocate its buffers"):
        marshal.check_status(-1)
    assert marshal.shapes_fit(q, q[:, :1], q[:, :1]) and not marshal.shapes_fit(q[..., :8], q, q)
