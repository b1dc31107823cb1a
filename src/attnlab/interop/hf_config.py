"""Hugging Face ``config.json`` <-> attnlab :class:`~attnlab.models.config.ModelConfig`, per family.

``from_hf`` reads the architecture (sizes, norm placement, activation, epsilons, tying) and refuses
features attnlab does not implement with a ``ValueError`` naming the field. ``to_hf`` writes the
fields back into a config transformers loads; :func:`check_representable` round-trips a config through
both to find fields a Hugging Face class cannot express (e.g. RoPE in a GPT-2).
"""

from __future__ import annotations

from ..models.config import ModelConfig

# Hugging Face activation name -> attnlab; the first HF name of each attnlab activation is written back
HF_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu",
                  "silu": "silu", "swish": "silu"}
TO_HF_ACTIVATION = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "silu": "silu"}

# ModelConfig fields that describe the architecture (what a checkpoint must reproduce)
ARCH_FIELDS = ("vocab_size", "dim", "num_layers", "num_heads", "num_kv_heads", "head_dim", "mlp_dim",
               "max_seq_len", "position", "norm", "norm_eps", "prenorm", "mlp", "activation", "bias",
               "tie_weights", "type_vocab_size", "embed_norm", "num_classes", "image_size", "patch_size",
               "num_channels")


def _activation(name: str, field: str) -> str:
    if name not in HF_ACTIVATIONS:
        raise ValueError(f"{field}={name!r} is not supported; supported: {sorted(HF_ACTIVATIONS)}")
    return HF_ACTIVATIONS[name]


def _refuse(hf: dict, field: str, ok) -> None:
    value = hf.get(field)
    if not ok(value):
        raise ValueError(f"config.json has {field}={value!r}, which attnlab does not implement")


def num_labels(hf: dict) -> int:
    if "id2label" in hf:
        return len(hf["id2label"])
    return int(hf.get("num_labels", 2))


def from_hf(model_type: str, hf: dict, heads: tuple[str, ...]) -> tuple[dict, float]:
    """``(ModelConfig kwargs, attention-probability dropout)`` for a checkpoint with ``heads``."""
    try:
        kwargs, attn_dropout = {"bert": _bert_from_hf, "gpt2": _gpt2_from_hf, "vit": _vit_from_hf}[model_type](hf)
    except KeyError as e:
        raise ValueError(f"config.json lacks required field {e.args[0]!r} for model_type {model_type!r}") from None
    if "classifier" in heads:
        kwargs["num_classes"] = num_labels(hf)
    kwargs["init_std"] = float(hf.get("initializer_range", 0.02))
    return kwargs, attn_dropout


def _bert_from_hf(hf: dict) -> tuple[dict, float]:
    _refuse(hf, "position_embedding_type", lambda v: v in (None, "absolute"))
    _refuse(hf, "is_decoder", lambda v: not v)
    _refuse(hf, "add_cross_attention", lambda v: not v)
    return dict(
        vocab_size=hf["vocab_size"], dim=hf["hidden_size"], num_layers=hf["num_hidden_layers"],
        num_heads=hf["num_attention_heads"], mlp_dim=hf["intermediate_size"],
        max_seq_len=hf["max_position_embeddings"], dropout=float(hf.get("hidden_dropout_prob", 0.1)),
        position="learned", norm="layernorm", norm_eps=float(hf.get("layer_norm_eps", 1e-12)), prenorm=False,
        mlp="mlp", activation=_activation(hf.get("hidden_act", "gelu"), "hidden_act"), bias=True,
        tie_weights=bool(hf.get("tie_word_embeddings", True)), type_vocab_size=int(hf.get("type_vocab_size", 2)),
        embed_norm=True, pooling="cls",
    ), float(hf.get("attention_probs_dropout_prob", 0.1))


def _gpt2_from_hf(hf: dict) -> tuple[dict, float]:
    _refuse(hf, "scale_attn_weights", lambda v: v in (None, True))
    _refuse(hf, "scale_attn_by_inverse_layer_idx", lambda v: not v)
    _refuse(hf, "add_cross_attention", lambda v: not v)
    dim = hf["n_embd"]
    return dict(
        vocab_size=hf["vocab_size"], dim=dim, num_layers=hf["n_layer"], num_heads=hf["n_head"],
        mlp_dim=hf.get("n_inner") or 4 * dim, max_seq_len=hf["n_positions"],
        dropout=float(hf.get("resid_pdrop", 0.1)), position="learned", norm="layernorm",
        norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)), prenorm=True, mlp="mlp",
        activation=_activation(hf.get("activation_function", "gelu_new"), "activation_function"), bias=True,
        tie_weights=bool(hf.get("tie_word_embeddings", True)), type_vocab_size=0, embed_norm=False,
    ), float(hf.get("attn_pdrop", 0.1))


def _vit_from_hf(hf: dict) -> tuple[dict, float]:
    _refuse(hf, "qkv_bias", lambda v: v in (None, True))
    _refuse(hf, "pooler_act", lambda v: v in (None, "tanh"))
    _refuse(hf, "pooler_output_size", lambda v: v in (None, hf.get("hidden_size")))
    image, patch = _side(hf.get("image_size", 224), "image_size"), _side(hf.get("patch_size", 16), "patch_size")
    return dict(
        dim=hf["hidden_size"], num_layers=hf["num_hidden_layers"], num_heads=hf["num_attention_heads"],
        mlp_dim=hf["intermediate_size"], max_seq_len=1 + (image // patch) ** 2,
        dropout=float(hf.get("hidden_dropout_prob", 0.0)), position="learned", norm="layernorm",
        norm_eps=float(hf.get("layer_norm_eps", 1e-12)), prenorm=True, mlp="mlp",
        activation=_activation(hf.get("hidden_act", "gelu"), "hidden_act"), bias=True, tie_weights=False,
        image_size=image, patch_size=patch, num_channels=int(hf.get("num_channels", 3)), pooling="cls",
    ), float(hf.get("attention_probs_dropout_prob", 0.0))


def _side(value, field: str) -> int:
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise ValueError(f"config.json has {field}={value}; attnlab's ViT supports square images/patches only")
        value = value[0]
    return int(value)


def to_hf(model_type: str, cfg: ModelConfig, attn_dropout: float, base: dict | None = None) -> dict:
    """A transformers config dict for ``cfg``; keys of ``base`` (the loaded config) are kept."""
    out = {k: v for k, v in (base or {}).items() if k not in ("transformers_version", "_name_or_path")}
    act = TO_HF_ACTIVATION[cfg.activation]
    if model_type == "bert":
        out.update(vocab_size=cfg.vocab_size, hidden_size=cfg.dim, num_hidden_layers=cfg.num_layers,
                   num_attention_heads=cfg.num_heads, intermediate_size=cfg.resolved_mlp_dim,
                   max_position_embeddings=cfg.max_seq_len, hidden_dropout_prob=cfg.dropout,
                   attention_probs_dropout_prob=attn_dropout, layer_norm_eps=cfg.norm_eps, hidden_act=act,
                   type_vocab_size=cfg.type_vocab_size, position_embedding_type="absolute",
                   tie_word_embeddings=cfg.tie_weights, initializer_range=cfg.init_std)
    elif model_type == "gpt2":
        out.update(vocab_size=cfg.vocab_size, n_embd=cfg.dim, n_layer=cfg.num_layers, n_head=cfg.num_heads,
                   n_inner=cfg.resolved_mlp_dim, n_positions=cfg.max_seq_len, resid_pdrop=cfg.dropout,
                   embd_pdrop=cfg.dropout, attn_pdrop=attn_dropout, layer_norm_epsilon=cfg.norm_eps,
                   activation_function=act, tie_word_embeddings=cfg.tie_weights, initializer_range=cfg.init_std)
        for token in ("bos_token_id", "eos_token_id"):  # GPT-2's defaults (50256) are invalid for small vocabs
            out.setdefault(token, None if cfg.vocab_size <= 50256 else 50256)
    else:
        out.update(hidden_size=cfg.dim, num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                   intermediate_size=cfg.resolved_mlp_dim, hidden_dropout_prob=cfg.dropout,
                   attention_probs_dropout_prob=attn_dropout, layer_norm_eps=cfg.norm_eps, hidden_act=act,
                   image_size=cfg.image_size, patch_size=cfg.patch_size, num_channels=cfg.num_channels,
                   qkv_bias=True, initializer_range=cfg.init_std)
    if cfg.num_classes and num_labels(out) != cfg.num_classes:
        out["id2label"] = {str(i): f"LABEL_{i}" for i in range(cfg.num_classes)}
        out["label2id"] = {f"LABEL_{i}": i for i in range(cfg.num_classes)}
    out["model_type"] = model_type
    return out


def canonical(cfg: ModelConfig) -> dict:
    """Architecture fields with defaults resolved (num_kv_heads, head_dim, mlp_dim)."""
    d = {k: getattr(cfg, k) for k in ARCH_FIELDS}
    d["num_kv_heads"] = cfg.num_kv_heads or cfg.num_heads
    d["head_dim"] = cfg.head_dim or cfg.dim // cfg.num_heads
    d["mlp_dim"] = cfg.resolved_mlp_dim
    return d


def check_representable(model_type: str, cfg: ModelConfig, heads: tuple[str, ...], ignore: tuple = ()) -> None:
    """Raise ``ValueError`` naming each field a Hugging Face ``model_type`` cannot express."""
    back, _ = from_hf(model_type, to_hf(model_type, cfg, 0.0), heads)
    want = canonical(cfg)
    have = canonical(ModelConfig(**{**back, "attention": "softmax"}))
    bad = [f"{k}={want[k]!r} (a {model_type} checkpoint has {have[k]!r})"
           for k in ARCH_FIELDS if k not in ignore and want[k] != have[k]]
    if bad:
        raise ValueError(f"this model cannot be saved as a Hugging Face {model_type!r} checkpoint: {'; '.join(bad)}")
