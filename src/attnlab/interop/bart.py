"""Hugging Face BART checkpoints (``BartForConditionalGeneration`` / ``BartModel``; Lewis et al. 2020, "BART: Denoising
Sequence-to-Sequence Pre-training for Natural Language Generation, Translation, and Comprehension") in and out of
attnlab's :class:`EncoderDecoder`.

BART in attnlab's terms: post-norm blocks with biases and LayerNorm (eps 1e-5), exact GELU MLPs, learned absolute
positions with a LayerNorm after the embeddings in each stack, one token table shared by encoder, decoder and
output head, the decoder's own position table and embedding norm (``decoder_embeddings``), and a bias on the
logits (``final_logits_bias`` -> ``logits_bias``). Hugging Face's position tables carry two unused rows in front
(its ``offset = 2``): they are dropped on load and written as zeros on save. The key map is data; loading is strict.
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

OFFSET = 2  # BartLearnedPositionalEmbedding's unused leading rows
ACTIVATIONS = {"gelu": "gelu", "relu": "relu", "silu": "silu", "gelu_new": "gelu_tanh"}
# attnlab (stack, leaf) -> Hugging Face layer leaf
LAYER = {
    ("encoder", "attn"): "self_attn", ("encoder", "attn_norm"): "self_attn_layer_norm",
    ("encoder", "mlp_norm"): "final_layer_norm",
    ("decoder", "self_attn"): "self_attn", ("decoder", "self_norm"): "self_attn_layer_norm",
    ("decoder", "cross_attn"): "encoder_attn", ("decoder", "cross_norm"): "encoder_attn_layer_norm",
    ("decoder", "mlp_norm"): "final_layer_norm",
}
MLP = {"fc_in": "fc1", "fc_out": "fc2"}
STATIC = {
    "encoder.embed.tok_emb.weight": "model.shared.weight",
    "encoder.embed.pos_emb.weight": "model.encoder.embed_positions.weight",
    "encoder.embed.embed_norm.weight": "model.encoder.layernorm_embedding.weight",
    "encoder.embed.embed_norm.bias": "model.encoder.layernorm_embedding.bias",
    "decoder_embed.pos_emb.weight": "model.decoder.embed_positions.weight",
    "decoder_embed.embed_norm.weight": "model.decoder.layernorm_embedding.weight",
    "decoder_embed.embed_norm.bias": "model.decoder.layernorm_embedding.bias",
    "head.bias": "final_logits_bias",
}


def bart_config(hf: dict) -> ModelConfig:
    """attnlab's config for a Hugging Face ``BartConfig`` dict.

    Raises:
        ValueError: what attnlab's encoder-decoder cannot express (scaled embeddings, pre-norm mBART layers,
            different encoder/decoder widths or head counts, an unknown activation).
    """
    problems = []
    if hf.get("scale_embedding"):
        problems.append("scale_embedding=True")
    if hf.get("normalize_before") or hf.get("add_final_layer_norm"):
        problems.append("pre-norm layers (mBART)")
    for enc, dec in (("encoder_attention_heads", "decoder_attention_heads"), ("encoder_ffn_dim", "decoder_ffn_dim")):
        if hf.get(enc) != hf.get(dec):
            problems.append(f"{enc}={hf.get(enc)} != {dec}={hf.get(dec)}")
    act = hf.get("activation_function", "gelu")
    if act not in ACTIVATIONS:
        problems.append(f"activation_function={act!r}")
    if problems:
        raise ValueError(f"this BART config is not supported by attnlab's encoder-decoder: {', '.join(problems)}")
    return ModelConfig(
        vocab_size=hf["vocab_size"], dim=hf["d_model"], num_layers=hf["encoder_layers"],
        num_decoder_layers=hf["decoder_layers"], num_heads=hf["encoder_attention_heads"], mlp_dim=hf["encoder_ffn_dim"],
        activation=ACTIVATIONS[act], norm="layernorm", norm_eps=1e-5, bias=True, prenorm=False, position="learned",
        embed_norm=True, decoder_embeddings=True, logits_bias=True, tie_weights=True, dropout=0.0,
        max_seq_len=hf["max_position_embeddings"])


def hf_names(model: EncoderDecoder) -> dict[str, str]:
    """attnlab parameter name -> Hugging Face name (``BartForConditionalGeneration``)."""
    out = dict(STATIC)
    for name, _ in model.named_parameters():
        m = re.match(r"(encoder\.)?blocks\.(\d+)\.(\w+)\.(?:(\w+)\.)?(weight|bias)$", name)
        if m is None:
            continue
        stack = "encoder" if m.group(1) else "decoder"
        i, part, leaf, kind = m.group(2), m.group(3), m.group(4), m.group(5)
        base = f"model.{stack}.layers.{i}"
        if part == "mlp" and leaf in MLP:
            out[name] = f"{base}.{MLP[leaf]}.{kind}"
        elif (stack, part) in LAYER:
            out[name] = f"{base}.{LAYER[(stack, part)]}.{leaf + '.' if leaf else ''}{kind}"
    return out


def _to_ours(name: str, tensor: Tensor) -> Tensor:
    if name.endswith("embed_positions.weight"):
        return tensor[OFFSET:]
    return tensor.reshape(-1) if name == "final_logits_bias" else tensor


def _to_theirs(name: str, tensor: Tensor) -> Tensor:
    if name.endswith("embed_positions.weight"):
        return torch.cat([tensor.new_zeros(OFFSET, tensor.shape[1]), tensor])
    return tensor.reshape(1, -1) if name == "final_logits_bias" else tensor


def load_bart(path: str | os.PathLike, attention: str | None = None, **attention_options) -> EncoderDecoder:
    """Build attnlab's :class:`EncoderDecoder` for a Hugging Face BART folder and load its weights (eval mode).

    ``attention`` swaps the self-attention kernel of both stacks (options: ``attention_options``).

    Raises:
        ValueError: missing folder/config/weights, another ``model_type``, unsupported config features, missing or
            unexpected tensors, shape mismatches, non-finite weights.
    """
    folder, hf, weights = read_checkpoint(path, "bart")
    if not any(k.startswith("model.") for k in weights):  # a BartModel: no "model." prefix and no logits bias
        weights = {f"model.{k}": v for k, v in weights.items()}
    weights.setdefault("final_logits_bias", torch.zeros(1, hf["vocab_size"]))
    cfg = bart_config(hf)
    if attention is not None:
        cfg = reconfigured(cfg, {"attention": attention, "attention_options": attention_options}, "BART")
    model = EncoderDecoder(cfg)
    names = hf_names(model)
    copies = {"model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight", "lm_head.weight"}
    copy_mapped(model, names, weights, copies, folder, "BART", _to_ours)
    model.hf_info = {"model_type": "bart", "config": hf, "source": str(folder)}
    return model.eval()


def save_bart(model: EncoderDecoder, path: str | os.PathLike) -> Path:
    """Write ``model`` (a BART-layout :class:`EncoderDecoder`) as a Hugging Face BART folder transformers loads.

    Raises:
        ValueError: a model that is not BART-shaped (names the settings), or kernels other than softmax.
    """
    cfg = model.cfg
    want = dict(norm="layernorm", prenorm=False, position="learned", bias=True, embed_norm=True,
                decoder_embeddings=True, logits_bias=True, tie_weights=True, mlp="mlp")
    problems = [f"{k}={getattr(cfg, k)!r}" for k, v in want.items() if getattr(cfg, k) != v]
    if cfg.attention != "softmax" or cfg.cross_attention != "softmax":
        problems.append("attention kernels other than softmax")
    if problems:
        raise ValueError(f"this encoder-decoder is not BART-shaped ({', '.join(problems)}); transformers' BART "
                         "cannot run it")
    folder = writable_folder(path)
    params = dict(model.named_parameters())
    tensors = {h: _to_theirs(h, params[n].detach()).clone() for n, h in hf_names(model).items()}
    write_safetensors(folder / "model.safetensors", tensors)
    act = {v: k for k, v in ACTIVATIONS.items()}[cfg.activation]
    layers = cfg.num_decoder_layers or cfg.num_layers
    write_json(folder / "config.json", {
        "model_type": "bart", "architectures": ["BartForConditionalGeneration"], "vocab_size": cfg.vocab_size,
        "d_model": cfg.dim, "encoder_layers": cfg.num_layers, "decoder_layers": layers,
        "encoder_attention_heads": cfg.num_heads, "decoder_attention_heads": cfg.num_heads,
        "encoder_ffn_dim": cfg.resolved_mlp_dim, "decoder_ffn_dim": cfg.resolved_mlp_dim,
        "activation_function": act, "max_position_embeddings": cfg.max_seq_len, "scale_embedding": False,
        "dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0, "tie_word_embeddings": True,
        "is_encoder_decoder": True, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2,
        "decoder_start_token_id": 2, "forced_eos_token_id": 2})
    return folder
