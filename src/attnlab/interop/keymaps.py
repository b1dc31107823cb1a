"""Checkpoint conversion as data: Hugging Face <-> attnlab state-dict key maps and named transforms.

A *rule* is ``(ours, theirs, transform[, condition])``:

- ``ours``: an attnlab state-dict key, or a tuple of keys when one Hugging Face tensor holds several
  of ours (GPT-2's fused ``c_attn`` holds q, k and v); ``{i}`` is the layer index.
- ``theirs``: the Hugging Face key. Body and layer rules are relative to the base model (the loader
  adds ``bert.`` / ``transformer.`` / ``vit.`` when the checkpoint is a model-with-head); head rules
  spell ``{base}`` where the base prefix goes.
- ``transform``: a name in :data:`TRANSFORMS` (``load`` maps theirs -> ours, ``save`` maps back).
- ``condition``: ``"tied"`` / ``"untied"``: the rule applies only when the output embedding is (not)
  tied to the input embedding.

An :class:`ArchSpec` lists, per family, the body, per-layer and head rules, the architectures (which
heads each has and whether its keys carry the base prefix), the buffers Hugging Face saves that hold no
weights, and the tied duplicates older checkpoints contain.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor


def _transpose(parts: list[Tensor]) -> Tensor:
    return parts[0].t().contiguous()


# name -> (load: theirs tensor -> list of ours tensors, save: list of ours -> theirs tensor)
TRANSFORMS: dict[str, tuple[Callable[[Tensor], list[Tensor]], Callable[[list[Tensor]], Tensor]]] = {
    "copy": (lambda t: [t], lambda parts: parts[0]),
    # GPT-2 Conv1D stores (in, out); nn.Linear stores (out, in)
    "conv1d": (lambda t: [t.t().contiguous()], _transpose),
    # fused c_attn (D, 3D): transpose to (3D, D), then rows [q; k; v]
    "conv1d_split3": (
        lambda t: [c.contiguous() for c in t.t().chunk(3, dim=0)],
        lambda parts: torch.cat(parts, dim=0).t().contiguous(),
    ),
    "split3": (lambda t: [c.contiguous() for c in t.chunk(3, dim=0)], lambda parts: torch.cat(parts, dim=0)),
}


def linear(ours: str, theirs: str, transform: str = "copy", condition: str | None = None) -> list[tuple]:
    """Rules for a weight + bias pair (``ours.weight`` <- ``theirs.weight`` ...)."""
    bias_transform = "copy" if transform == "conv1d" else transform
    return [
        (f"{ours}.weight", f"{theirs}.weight", transform, condition),
        (f"{ours}.bias", f"{theirs}.bias", bias_transform, condition),
    ]


@dataclass(frozen=True)
class Architecture:
    """A Hugging Face class: its name, whether its base-model keys carry the prefix, its heads."""

    name: str
    prefixed: bool
    heads: tuple[str, ...] = ()


@dataclass(frozen=True)
class ArchSpec:
    model_type: str
    base_prefix: str
    body: list[tuple]
    layer: list[tuple]
    heads: dict[str, list[tuple]]
    architectures: list[Architecture]
    ignored: tuple[str, ...] = ()  # regexes of buffers with no weights (position_ids, causal masks)
    tied: dict[str, str] = field(default_factory=dict)  # duplicate key -> key it must equal, when tied


BERT = ArchSpec(
    model_type="bert",
    base_prefix="bert.",
    body=[
        ("embed.tok_emb.weight", "embeddings.word_embeddings.weight", "copy", None),
        ("embed.pos_emb.weight", "embeddings.position_embeddings.weight", "copy", None),
        ("embed.type_emb.weight", "embeddings.token_type_embeddings.weight", "copy", None),
        *linear("embed.embed_norm", "embeddings.LayerNorm"),
    ],
    layer=[
        *linear("blocks.{i}.attn.q_proj", "encoder.layer.{i}.attention.self.query"),
        *linear("blocks.{i}.attn.k_proj", "encoder.layer.{i}.attention.self.key"),
        *linear("blocks.{i}.attn.v_proj", "encoder.layer.{i}.attention.self.value"),
        *linear("blocks.{i}.attn.out_proj", "encoder.layer.{i}.attention.output.dense"),
        *linear("blocks.{i}.attn_norm", "encoder.layer.{i}.attention.output.LayerNorm"),
        *linear("blocks.{i}.mlp.fc_in", "encoder.layer.{i}.intermediate.dense"),
        *linear("blocks.{i}.mlp.fc_out", "encoder.layer.{i}.output.dense"),
        *linear("blocks.{i}.mlp_norm", "encoder.layer.{i}.output.LayerNorm"),
    ],
    heads={
        "pooler": linear("pooler.dense", "{base}pooler.dense"),
        "mlm": [
            *linear("mlm_head.dense", "cls.predictions.transform.dense"),
            *linear("mlm_head.norm", "cls.predictions.transform.LayerNorm"),
            ("mlm_head.decoder.bias", "cls.predictions.bias", "copy", None),
            ("mlm_head.decoder.weight", "cls.predictions.decoder.weight", "copy", "untied"),
        ],
        "classifier": [*linear("classifier.dense", "{base}pooler.dense"), *linear("classifier.out", "classifier")],
    },
    architectures=[
        Architecture("BertModel", False, ("pooler",)),
        Architecture("BertModel", False, ()),
        Architecture("BertForMaskedLM", True, ("mlm",)),
        Architecture("BertForSequenceClassification", True, ("classifier",)),
    ],
    ignored=(r"^(bert\.)?embeddings\.position_ids$", r"^(bert\.)?embeddings\.token_type_ids$"),
    tied={
        "cls.predictions.decoder.weight": "{base}embeddings.word_embeddings.weight",
        "cls.predictions.decoder.bias": "cls.predictions.bias",
    },
)

GPT2 = ArchSpec(
    model_type="gpt2",
    base_prefix="transformer.",
    body=[
        ("embed.tok_emb.weight", "wte.weight", "copy", None),
        ("embed.pos_emb.weight", "wpe.weight", "copy", None),
        *linear("final_norm", "ln_f"),
    ],
    layer=[
        *linear("blocks.{i}.attn_norm", "h.{i}.ln_1"),
        (("blocks.{i}.attn.q_proj.weight", "blocks.{i}.attn.k_proj.weight", "blocks.{i}.attn.v_proj.weight"),
         "h.{i}.attn.c_attn.weight", "conv1d_split3", None),
        (("blocks.{i}.attn.q_proj.bias", "blocks.{i}.attn.k_proj.bias", "blocks.{i}.attn.v_proj.bias"),
         "h.{i}.attn.c_attn.bias", "split3", None),
        *linear("blocks.{i}.attn.out_proj", "h.{i}.attn.c_proj", "conv1d"),
        *linear("blocks.{i}.mlp_norm", "h.{i}.ln_2"),
        *linear("blocks.{i}.mlp.fc_in", "h.{i}.mlp.c_fc", "conv1d"),
        *linear("blocks.{i}.mlp.fc_out", "h.{i}.mlp.c_proj", "conv1d"),
    ],
    heads={"lm_head": [("head.weight", "lm_head.weight", "copy", "untied")]},
    architectures=[
        Architecture("GPT2LMHeadModel", True, ("lm_head",)),
        Architecture("GPT2Model", False, ()),
    ],
    ignored=(r"^(transformer\.)?h\.\d+\.attn\.(bias|masked_bias)$",),
    tied={"lm_head.weight": "{base}wte.weight"},
)

VIT = ArchSpec(
    model_type="vit",
    base_prefix="vit.",
    body=[
        *linear("embed.proj", "embeddings.patch_embeddings.projection"),
        ("embed.cls_token", "embeddings.cls_token", "copy", None),
        ("embed.pos_emb", "embeddings.position_embeddings", "copy", None),
        *linear("final_norm", "layernorm"),
    ],
    layer=[
        *linear("blocks.{i}.attn_norm", "encoder.layer.{i}.layernorm_before"),
        *linear("blocks.{i}.attn.q_proj", "encoder.layer.{i}.attention.attention.query"),
        *linear("blocks.{i}.attn.k_proj", "encoder.layer.{i}.attention.attention.key"),
        *linear("blocks.{i}.attn.v_proj", "encoder.layer.{i}.attention.attention.value"),
        *linear("blocks.{i}.attn.out_proj", "encoder.layer.{i}.attention.output.dense"),
        *linear("blocks.{i}.mlp_norm", "encoder.layer.{i}.layernorm_after"),
        *linear("blocks.{i}.mlp.fc_in", "encoder.layer.{i}.intermediate.dense"),
        *linear("blocks.{i}.mlp.fc_out", "encoder.layer.{i}.output.dense"),
    ],
    heads={"pooler": linear("pooler.dense", "{base}pooler.dense"), "classifier": linear("head", "classifier")},
    architectures=[
        Architecture("ViTModel", False, ("pooler",)),
        Architecture("ViTModel", False, ()),
        Architecture("ViTForImageClassification", True, ("classifier",)),
    ],
)

SPECS: dict[str, ArchSpec] = {s.model_type: s for s in (BERT, GPT2, VIT)}


def expand_rules(spec: ArchSpec, arch: Architecture, num_layers: int, tied: bool, prefixed: bool) -> list[tuple]:
    """Concrete ``(ours_keys, theirs_key, transform)`` for one architecture and depth.

    ``prefixed``: spell base-model keys with the base prefix (``bert.`` ...); the loader strips the
    prefix from checkpoints first and matches unprefixed keys, the saver writes ``arch.prefixed``.
    """
    base = spec.base_prefix if prefixed else ""
    wanted = "tied" if tied else "untied"
    rules = [(o, base + t, tr, c) for o, t, tr, c in spec.body]
    for i in range(num_layers):
        rules += [(_fmt(o, i), base + t.format(i=i), tr, c) for o, t, tr, c in spec.layer]
    for head in arch.heads:
        rules += [(o, t.format(base=base), tr, c) for o, t, tr, c in spec.heads[head]]
    return [(o if isinstance(o, tuple) else (o,), t, tr) for o, t, tr, c in rules if c in (None, wanted)]


def _fmt(ours, i: int):
    return tuple(k.format(i=i) for k in ours) if isinstance(ours, tuple) else ours.format(i=i)
