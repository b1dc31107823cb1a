"""Hugging Face T5 checkpoints (``T5ForConditionalGeneration``; Raffel et al. 2020, "Exploring the Limits of Transfer
Learning with a Unified Text-to-Text Transformer") in and out of attnlab's :class:`EncoderDecoder`.

T5 in attnlab's terms: pre-norm RMSNorm blocks without biases, no absolute positions, a bucketed relative position
bias computed once per stack (bidirectional in the encoder, causal in the decoder; none in cross-attention),
attention scores not scaled by ``1/sqrt(d_kv)`` (the ``scale=1.0`` option of every kernel), ``d_kv * heads`` free of
``d_model`` (``head_dim``), a ReLU MLP (T5 1.0) or a tanh-GELU gated one (``gated-gelu``, T5 1.1: ``mlp: geglu``),
one embedding shared by encoder and decoder, and with a tied output head the decoder output scaled by
``d_model ** -0.5`` (``logit_scale``). The key map is data; loading is strict.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from torch import Tensor

from ..core.io import writable_folder, write_json
from ..models.config import ModelConfig
from ..models.seq2seq.model import EncoderDecoder
from .files import copy_mapped, read_checkpoint, write_safetensors
from .swap import reconfigured

ATTN = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "out_proj": "o"}
MLP = {"relu": {"fc_in": "wi", "fc_out": "wo"}, "gated-gelu": {"gate": "wi_0", "up": "wi_1", "fc_out": "wo"}}


def t5_config(hf: dict, separate_head: bool = False) -> ModelConfig:
    """attnlab's config for a Hugging Face ``T5Config`` dict; ``separate_head``: the checkpoint has its own
    ``lm_head`` (T5 1.1 on the Hub) rather than the shared embedding.

    Whether the decoder output is scaled by ``d_model ** -0.5`` comes from ``scale_decoder_outputs`` (transformers 5,
    which always ties the head) or, in older configs, from ``tie_word_embeddings``.

    Raises:
        ValueError: a feed-forward kind other than ``relu`` / ``gated-gelu``, or unequal encoder/decoder widths.
    """
    ff = hf.get("feed_forward_proj", "relu")
    if ff not in MLP:
        raise ValueError(f"T5 feed_forward_proj={ff!r} is not supported; attnlab reads {sorted(MLP)}")
    scaled = hf.get("scale_decoder_outputs", hf.get("tie_word_embeddings", True))
    tied = not separate_head
    return ModelConfig(
        vocab_size=hf["vocab_size"], dim=hf["d_model"], num_layers=hf["num_layers"],
        num_decoder_layers=hf.get("num_decoder_layers") or hf["num_layers"], num_heads=hf["num_heads"],
        head_dim=hf["d_kv"], mlp_dim=hf["d_ff"], mlp="mlp" if ff == "relu" else "geglu", activation="relu",
        norm="rmsnorm", norm_eps=hf.get("layer_norm_epsilon", 1e-6), bias=False, position="relative",
        attention="softmax", attention_options={"scale": 1.0}, cross_attention_options={"scale": 1.0},
        tie_weights=tied, logit_scale=hf["d_model"] ** -0.5 if scaled else 1.0, dropout=0.0,
        max_seq_len=hf.get("n_positions", 512), relative_buckets=hf.get("relative_attention_num_buckets", 32),
        relative_max_distance=hf.get("relative_attention_max_distance", 128))


def hf_names(model: EncoderDecoder, ff: str) -> dict[str, str]:
    """attnlab parameter name -> Hugging Face name."""
    out = {"encoder.embed.tok_emb.weight": "shared.weight", "encoder.final_norm.weight": "encoder.final_layer_norm.weight",
           "final_norm.weight": "decoder.final_layer_norm.weight",
           "encoder.position_bias.embedding.weight":
               "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
           "position_bias.embedding.weight": "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"}
    if not model.cfg.tie_weights:
        out["head.weight"] = "lm_head.weight"
    for name, _ in model.named_parameters():
        m = re.match(r"(encoder\.)?blocks\.(\d+)\.(\w+)\.(\w+)\.weight$", name) or \
            re.match(r"(encoder\.)?blocks\.(\d+)\.(\w+)\.weight$", name)
        if m is None:
            continue
        enc, i, part = m.group(1), m.group(2), m.group(3)
        leaf = m.group(4) if m.lastindex == 4 else None
        stack = f"{'encoder' if enc else 'decoder'}.block.{i}.layer"
        mlp_layer = 1 if enc else 2
        table = {("attn", True): f"0.SelfAttention", ("self_attn", False): "0.SelfAttention",
                 ("cross_attn", False): "1.EncDecAttention"}
        if (part, bool(enc)) in table and leaf in ATTN:
            out[name] = f"{stack}.{table[(part, bool(enc))]}.{ATTN[leaf]}.weight"
        elif part == "mlp" and leaf in MLP[ff]:
            out[name] = f"{stack}.{mlp_layer}.DenseReluDense.{MLP[ff][leaf]}.weight"
        elif leaf is None:  # norms
            norm_layer = {"attn_norm": 0, "self_norm": 0, "cross_norm": 1, "mlp_norm": mlp_layer}[part]
            out[name] = f"{stack}.{norm_layer}.layer_norm.weight"
    return out


def load_t5(path: str | os.PathLike, attention: str | None = None, **attention_options) -> EncoderDecoder:
    """Build attnlab's :class:`EncoderDecoder` for a Hugging Face T5 folder and load its weights (eval mode).

    ``attention`` swaps the self-attention kernel of both stacks (its options: ``attention_options``; T5's
    unscaled scores need ``scale=1.0`` for a kernel that takes it).

    Raises:
        ValueError: missing folder/config/weights, another ``model_type``, unsupported config features, missing or
            unexpected tensors, shape mismatches, non-finite weights.
    """
    folder, hf, weights = read_checkpoint(path, "t5")
    head, shared = weights.get("lm_head.weight"), weights.get("shared.weight")
    separate = head is not None and (shared is None or head.shape != shared.shape or not torch.equal(head, shared))
    cfg = t5_config(hf, separate)
    if attention is not None:
        cfg = reconfigured(cfg, {"attention": attention, "attention_options": attention_options}, "T5")
    model = EncoderDecoder(cfg)
    names = hf_names(model, hf.get("feed_forward_proj", "relu"))
    copies = {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight"}  # the shared table again
    if cfg.tie_weights:
        copies.add("lm_head.weight")
    copy_mapped(model, names, weights, copies, folder, "T5")
    model.hf_info = {"model_type": "t5", "config": hf, "source": str(folder)}
    return model.eval()


def save_t5(model: EncoderDecoder, path: str | os.PathLike, feed_forward_proj: str | None = None) -> Path:
    """Write ``model`` (a T5-layout :class:`EncoderDecoder`) as a Hugging Face T5 folder transformers loads unchanged.

    Raises:
        ValueError: a model that is not T5-shaped (names the setting: norm, position, bias, MLP, scale, kernels).
    """
    cfg = model.cfg
    problems = [f"{k}={getattr(cfg, k)!r}" for k, ok in (("norm", "rmsnorm"), ("position", "relative"), ("bias", False))
                if getattr(cfg, k) != ok]
    if cfg.mlp not in ("mlp", "geglu") or (cfg.mlp == "mlp" and cfg.activation != "relu"):
        problems.append(f"mlp={cfg.mlp!r}/activation={cfg.activation!r}")
    if cfg.attention != "softmax" or cfg.cross_attention != "softmax":
        problems.append("attention kernels other than softmax")
    if problems:
        raise ValueError(f"this encoder-decoder is not T5-shaped ({', '.join(problems)}); transformers' T5 cannot "
                         "run it")
    ff = feed_forward_proj or ("relu" if cfg.mlp == "mlp" else "gated-gelu")
    folder = writable_folder(path)
    tensors: dict[str, Tensor] = {h: dict(model.named_parameters())[n] for n, h in hf_names(model, ff).items()}
    if cfg.tie_weights:
        tensors["lm_head.weight"] = tensors["shared.weight"]
    write_safetensors(folder / "model.safetensors", {k: v.detach().clone() for k, v in tensors.items()})
    write_json(folder / "config.json", {
        "model_type": "t5", "architectures": ["T5ForConditionalGeneration"], "vocab_size": cfg.vocab_size,
        "d_model": cfg.dim, "d_kv": cfg.head_dim or cfg.dim // cfg.num_heads, "d_ff": cfg.resolved_mlp_dim,
        "num_layers": cfg.num_layers, "num_decoder_layers": cfg.num_decoder_layers or cfg.num_layers,
        "num_heads": cfg.num_heads, "relative_attention_num_buckets": cfg.relative_buckets,
        "relative_attention_max_distance": cfg.relative_max_distance, "dropout_rate": 0.0,
        "layer_norm_epsilon": cfg.norm_eps, "feed_forward_proj": ff, "tie_word_embeddings": cfg.tie_weights,
        "scale_decoder_outputs": cfg.logit_scale != 1.0,
        "is_encoder_decoder": True, "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0})
    return folder
