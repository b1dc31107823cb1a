"""Fixed query/key streams run through the model's own stack (Deconstructing Attention, spec 15.1).

``random_qk`` and ``fixed_seq_qk`` layers take their queries and keys from a stream that starts at a
fixed input (random embeddings, or the embeddings of a fixed token sequence) and passes through the
**same** blocks as the real input. :class:`QKStreams` appends one batch row per distinct stream to the
hidden states, extends the masks and positions for those rows, and tells the kernels where their row
is (``ctx.extra["qk_stream_rows"]``, ``ctx.extra["num_main_rows"]``). The model strips the rows at the end.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class QKStreams(nn.Module):
    """The stream inputs of one model: ``eps_i (max_seq_len, dim)`` buffers or fixed token ids.

    Buffers are non-persistent: they are rebuilt from the kernels' options (seed, sigma, tokens), so
    checkpoints of these models have exactly the keys of a standard model.

    Args:
        keys: the distinct ``qk_stream_key`` of the model's kernels, in layer order.
        dim, vocab_size, max_seq_len: model sizes.

    Raises:
        ValueError: fixed tokens shorter than ``max_seq_len`` or outside the vocabulary.
    """

    def __init__(self, keys: list[tuple], dim: int, vocab_size: int, max_seq_len: int):
        super().__init__()
        self.keys = list(keys)
        for i, key in enumerate(self.keys):
            kind, seed = key[0], key[1]
            gen = torch.Generator().manual_seed(seed)
            if kind == "random":
                self.register_buffer(f"stream_{i}", torch.randn(max_seq_len, dim, generator=gen) * key[2], persistent=False)
            elif key[2] is None:
                self.register_buffer(f"stream_{i}", torch.randint(0, vocab_size, (max_seq_len,), generator=gen), persistent=False)
            else:
                tokens = torch.tensor(key[2], dtype=torch.long)
                if tokens.numel() < max_seq_len or int(tokens.min()) < 0 or int(tokens.max()) >= vocab_size:
                    raise ValueError(
                        f"fixed_seq_qk tokens must be >= max_seq_len={max_seq_len} ids in [0, {vocab_size}), "
                        f"got {tokens.numel()} ids in [{int(tokens.min())}, {int(tokens.max())}]"
                    )
                self.register_buffer(f"stream_{i}", tokens[:max_seq_len].clone(), persistent=False)

    @classmethod
    def from_kernels(cls, kernels: list, dim: int, vocab_size: int, max_seq_len: int) -> "QKStreams | None":
        keys = list(dict.fromkeys(k.qk_stream_key for k in kernels if hasattr(k, "qk_stream_key")))
        return cls(keys, dim, vocab_size, max_seq_len) if keys else None

    def stream_inputs(self, embed: nn.Module, positions: Tensor) -> Tensor:
        """``(num_streams, T, dim)`` stream inputs at ``positions (T,)``."""
        rows = []
        for i, key in enumerate(self.keys):
            src = getattr(self, f"stream_{i}")
            if key[0] == "random":
                rows.append(src[positions])  # (T, dim): eps replaces the whole embedding output
            elif not hasattr(embed, "tok_emb"):
                raise ValueError(
                    f"fixed_seq_qk needs a model with token embeddings (GPT, Encoder); {type(embed).__name__} "
                    "embeds its input elsewhere (e.g. ViT patches): use random_qk there"
                )
            else:
                rows.append(embed(src[positions][None], positions)[0])  # Emb(t_s): token + position
        return torch.stack(rows)

    def attach(self, embed: nn.Module, x: Tensor, positions: Tensor, ctx_args: dict) -> tuple[Tensor, Tensor, dict, dict]:
        """Append the stream rows: returns ``(x (B+n, T, D), positions, ctx_args, extra)``."""
        B, T, _ = x.shape
        pos_1d = positions if positions.dim() == 1 else positions[0]
        streams = self.stream_inputs(embed, pos_1d).to(x.dtype)  # (n, T, D)
        n = streams.shape[0]
        if positions.dim() == 2:
            positions = torch.cat([positions, pos_1d[None].expand(n, -1)])
        args = dict(ctx_args)
        if args.get("key_padding_mask") is not None:
            kpm = args["key_padding_mask"]
            args["key_padding_mask"] = torch.cat([kpm, kpm.new_ones(n, kpm.shape[1])])
        if args.get("document_ids") is not None:
            doc = args["document_ids"]
            args["document_ids"] = torch.cat([doc, doc.new_zeros(n, doc.shape[1])])
        extra = {"qk_stream_rows": {key: B + i for i, key in enumerate(self.keys)}, "num_main_rows": B}
        return torch.cat([x, streams]), positions, args, extra
