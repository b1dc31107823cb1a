"""Grid attention modules: attention-like operators on feature maps ``(B, C, H, W)`` rather than on token sequences.

Each module keeps the input shape (``(B, C, H, W)`` in and out), cites its paper, and declares its options as the
keyword arguments of its ``__init__`` (after ``channels``). They have their own registry because they do not fit the
kernel contract (no q/k/v heads): ``build_grid_attention("lka", channels=64)``; ``list_grid_attention()``.

A module's ``role`` says where it goes in a block: a ``"gate"`` (LKA, PSA, ULSAM) re-weights a feature map and sits
in VAN's spatial unit (``1x1 -> GELU -> gate -> 1x1``, plus a shortcut), a ``"mixer"`` (ATConv) is a whole token
mixer with its own projections.
"""

from .registry import build_grid_attention, grid_attention_options, list_grid_attention, register_grid_attention

__all__ = ["build_grid_attention", "grid_attention_options", "list_grid_attention", "register_grid_attention"]
