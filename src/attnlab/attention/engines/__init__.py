"""Shared computation engines the kernels run on; they import only the attention contract.

- :mod:`.blocked`: softmax over query blocks sharing a key span (sliding window, halo, neighbourhood, axial).
- :mod:`.gathered`: softmax over gathered key rows (routing, Combiner).
- :mod:`.gqa_groups`: data-dependent grouped-query allocation (KDGQA, DGQA) and a masked SDPA call.
- :mod:`.linear_scan`: the causal prefix-sum scan of linear attention.
- :mod:`.documents`: per-document attention over packed sequences.
"""
