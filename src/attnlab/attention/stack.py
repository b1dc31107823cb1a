"""Stack-level hooks: state a kernel keeps across a model's whole block stack, owned by the kernel family.

Two kinds, both declared on the kernel class and collected once by the model builder:

- ``link_layers(kernels)`` (a static method): kernels of one class share parameters or state across
  layers, e.g. universal KArAt's single learned operator. :func:`link_kernels` calls it with that class's
  instances in layer order.
- ``stack_hook(kernels, *, dim, vocab_size, max_seq_len)`` (a class method returning a
  :class:`StackHook` or ``None``): the kernel needs something to happen around the whole stack, e.g.
  Deconstructing Attention's fixed query/key streams, which run extra batch rows through the same blocks.
  Kernels whose classes share one ``stack_hook`` implementation share one hook.

The model body calls :meth:`StackHook.enter` before its first block and drops every batch row past
``ctx.num_main_rows`` after its last block, so the body names no mechanism.
"""

from __future__ import annotations

import dataclasses

from torch import Tensor, nn

from .context import AttentionContext


class StackHook(nn.Module):
    """Base class of stack hooks (see the module docstring). Buffers should be non-persistent, rebuilt
    from the kernels' options, so checkpoints keep a standard model's keys.

    Attributes:
        kernel_names: registry names of the kernels this hook serves (for error messages).
    """

    kernel_names: tuple[str, ...] = ()

    def check_embedding(self, embed: nn.Module) -> None:
        """Raise :class:`~attnlab.attention.capabilities.CapabilityError` when the model's input embedding
        cannot serve this hook (called at build time, and again when a head replaces the embedding)."""

    def enter(self, embed: nn.Module, x: Tensor, positions: Tensor, ctx: AttentionContext
              ) -> tuple[Tensor, Tensor, AttentionContext]:
        """Before the first block: ``x (B, T, D)``, ``positions (T,) | (B, T)`` and the stack's context in;
        the same out, possibly with batch rows appended (then ``ctx.num_main_rows`` counts the real ones)."""
        return x, positions, ctx


def link_kernels(kernels: list) -> None:
    """Let kernels of one model share state across layers (e.g. universal KArAt).

    Called once by the model builder with every layer's kernel; each kernel class that defines a
    static ``link_layers(kernels_of_that_class)`` gets its own instances, in layer order.
    """
    for cls in dict.fromkeys(type(k) for k in kernels):
        link = getattr(cls, "link_layers", None)
        if link is not None:
            link([k for k in kernels if type(k) is cls])


def build_stack_hooks(kernels: list, *, dim: int, vocab_size: int, max_seq_len: int) -> nn.ModuleList:
    """The stack hooks the model's ``kernels`` (in layer order) ask for, in order of first appearance."""
    groups: dict = {}
    for kernel in kernels:
        make = getattr(type(kernel), "stack_hook", None)
        if make is not None:
            groups.setdefault(make.__func__, (make, []))[1].append(kernel)
    hooks = [make(members, dim=dim, vocab_size=vocab_size, max_seq_len=max_seq_len)
             for make, members in groups.values()]
    return nn.ModuleList(h for h in hooks if h is not None)


def with_rows(ctx: AttentionContext, num_main_rows: int, **changes) -> AttentionContext:
    """A copy of ``ctx`` for a stack that now carries extra batch rows after the first ``num_main_rows``."""
    main = num_main_rows if ctx.num_main_rows is None else ctx.num_main_rows
    return dataclasses.replace(ctx, num_main_rows=main, **changes)
