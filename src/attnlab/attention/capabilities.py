"""What a kernel can do, declared up front so unsupported requests fail at build time."""

from __future__ import annotations

from dataclasses import dataclass, fields

from .context import AttentionContext


class CapabilityError(ValueError):
    """A kernel was asked for something it does not support (raised at build time or call time)."""


# the yes/no abilities docs/attention.md and `attnlab list attention` show, in this order
LISTED_FLAGS = ("causal", "bidirectional", "key_padding_mask", "packed", "kv_cache", "attn_bias", "grid_2d",
                "cross_attention", "exact")


@dataclass(frozen=True)
class Capabilities:
    """Declared abilities of an attention kernel.

    Attributes:
        causal: supports ``causal=True``.
        bidirectional: supports ``causal=False``.
        key_padding_mask: honours ``key_padding_mask``.
        packed: honours ``document_ids`` (packed sequences, block-diagonal attention).
        kv_cache: supports incremental decoding with a KV cache.
        attn_bias: accepts an additive bias (ALiBi, relative position bias).
        grid_2d: understands ``grid=(rows, cols)``.
        requires_grid: cannot run without ``grid`` (e.g. axial attention).
        exact: equals softmax attention under its own mask pattern (vs. an approximation).
        complexity: time complexity in the sequence length, for docs and reports.
        batch_independent: each sequence's output depends only on that sequence (its batch row and
            document); False for kernels that pool statistics over the batch (KDGQA, DGQA).
        cross_attention: queries may attend to another sequence (``ctx.cross``, the memory of an
            encoder-decoder), with the memory's own length, padding and packing.
    """

    causal: bool = True
    bidirectional: bool = True
    key_padding_mask: bool = True
    packed: bool = True
    kv_cache: bool = True
    attn_bias: bool = True
    grid_2d: bool = False
    requires_grid: bool = False
    exact: bool = True
    complexity: str = "O(N^2)"
    batch_independent: bool = True
    cross_attention: bool = False

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def require(self, kernel_name: str, **needs: bool) -> None:
        """Raise :class:`CapabilityError` if any requested ability is missing.

        ``needs`` keys are field names of this class (``causal=True, kv_cache=True`` ...).
        """
        valid = {f.name for f in fields(self)}
        for need, wanted in needs.items():
            if need not in valid:
                raise ValueError(f"unknown capability {need!r}; valid: {sorted(valid)}")
            if wanted and not getattr(self, need):
                have = [n for n in sorted(valid) if getattr(self, n) is True]
                raise CapabilityError(
                    f"attention {kernel_name!r} does not support {need}; it supports {have}. "
                    f"Kernels that support {need}: {kernels_with(need)} (see `attnlab list attention`), "
                    f"or turn {need} off."
                )

    def check_context(self, kernel_name: str, ctx: AttentionContext) -> None:
        """Raise if a call's context asks for something this kernel does not declare."""
        self.require(kernel_name, cross_attention=ctx.cross)  # first: a causal-only kernel fails on this
        self.require(
            kernel_name,
            causal=ctx.causal,
            bidirectional=not ctx.causal,
            key_padding_mask=ctx.key_padding_mask is not None,
            packed=ctx.document_ids is not None,
            attn_bias=ctx.attn_bias is not None,
        )
        if self.requires_grid and ctx.grid is None:
            raise CapabilityError(
                f"attention {kernel_name!r} needs a 2-D token grid: pass grid=(rows, cols) "
                "(models built on images do this for you)."
            )


def kernels_with(capability: str) -> list[str]:
    """Registered kernel names whose declared capabilities include ``capability`` (for error messages)."""
    from .registry import get_attention_class, list_attention  # the registry imports this module

    return [n for n in list_attention() if getattr(get_attention_class(n).capabilities, capability, False) is True]
