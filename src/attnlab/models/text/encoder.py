"""Bidirectional encoder (BERT, Devlin et al. 2019) with MLM and classification heads and pooling."""

from __future__ import annotations


from torch import Tensor, nn

from ...layers.mlp import get_activation
from ...layers.norms import build_norm
from ..config import ModelConfig
from ..pooling import pool
from ..transformer import TransformerBody, init_weights


class MLMHead(nn.Module):
    """BERT's masked-LM head: dense -> activation -> norm -> decoder. ``(B, T, D) -> (B, T, vocab)``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.dim, cfg.dim)
        self.act = get_activation(cfg.activation)
        self.norm = build_norm(cfg.norm, cfg.dim, cfg.norm_eps, cfg.bias)
        self.decoder = nn.Linear(cfg.dim, cfg.vocab_size)

    def forward(self, hidden: Tensor) -> Tensor:
        return self.decoder(self.norm(self.act(self.dense(hidden))))


class ClassificationHead(nn.Module):
    """Pooled representation -> dropout -> linear. ``(B, D) -> (B, num_classes)``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.dropout = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(cfg.dim, cfg.num_classes)

    def forward(self, pooled: Tensor) -> Tensor:
        return self.out(self.dropout(pooled))


class Encoder(TransformerBody):
    """Bidirectional Transformer encoder: ``ids (B, T)`` -> hidden states ``(B, T, dim)``.

    Heads are separate modules used through methods: :meth:`mlm_logits` (``mlm_head``) and
    :meth:`classify` (``classifier``, present when ``cfg.num_classes > 0``).

    Raises:
        CapabilityError: the attention kernel cannot run bidirectionally, at build time.
        ValueError: input longer than ``max_seq_len``, mask of the wrong shape.
        TypeError: token ids that are not an integer tensor (names the dtype).
    """

    causal = False

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.mlm_head = MLMHead(cfg)
        self.classifier = ClassificationHead(cfg) if cfg.num_classes else None
        init_weights(self, cfg)
        if cfg.tie_weights:
            self.mlm_head.decoder.weight = self.embed.tok_emb.weight

    def forward(self, ids: Tensor, key_padding_mask: Tensor | None = None, *, token_type_ids=None,
                positions=None, document_ids=None, grid=None, mlm_positions: Tensor | None = None) -> Tensor:
        """Hidden states ``(B, T, dim)``; with ``mlm_positions`` (``(B, T)`` bool) the masked-LM logits of just
        those positions, ``(N, vocab)`` in row-major order (BERT's ``gather_indexes``, Devlin et al. 2019: the
        vocabulary projection only where a loss is taken). Through ``forward`` so that DDP sees the call."""
        hidden = self.encode(ids, key_padding_mask=key_padding_mask, token_type_ids=token_type_ids,
                             positions=positions, document_ids=document_ids, grid=grid)
        return hidden if mlm_positions is None else self.mlm_head(hidden[mlm_positions])

    def mlm_logits(self, ids: Tensor, key_padding_mask: Tensor | None = None, **kwargs) -> Tensor:
        """``(B, T, vocab)`` masked-LM logits."""
        return self.mlm_head(self(ids, key_padding_mask, **kwargs))

    def embed_pooled(self, ids: Tensor, key_padding_mask: Tensor | None = None, **kwargs) -> Tensor:
        """``(B, dim)`` pooled sentence representation (``cfg.pooling``)."""
        return pool(self(ids, key_padding_mask, **kwargs), key_padding_mask, self.cfg.pooling)

    def classify(self, ids: Tensor, key_padding_mask: Tensor | None = None, **kwargs) -> Tensor:
        """``(B, num_classes)`` logits; needs ``num_classes > 0`` in the config."""
        if self.classifier is None:
            raise ValueError("this encoder has no classification head: build it with num_classes=<number of labels>")
        return self.classifier(self.embed_pooled(ids, key_padding_mask, **kwargs))


