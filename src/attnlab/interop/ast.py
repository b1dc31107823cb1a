"""Hugging Face AST checkpoints (``ASTModel`` / ``ASTForAudioClassification``; Gong, Chung & Glass 2021) in and out
of attnlab's :class:`AST`. The key map is data; loading is strict. AST's class and distillation tokens are
``pooling="cls"``; its LayerNorm eps (1e-12 by default) comes from the config."""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..core.io import writable_folder, write_json
from ..models.audio.ast import AST, patch_kernel, patch_strides
from ..models.config import ModelConfig
from .files import copy_mapped, read_checkpoint, write_safetensors
from .swap import reconfigured

PREFIX = "audio_spectrogram_transformer."
STATIC = {
    "embed.cls_token": "embeddings.cls_token", "embed.dist_token": "embeddings.distillation_token",
    "embed.pos_emb": "embeddings.position_embeddings",
    "embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
    "embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
    "final_norm.weight": "layernorm.weight", "final_norm.bias": "layernorm.bias",
}
LAYER = {"attn.q_proj": "attention.attention.query", "attn.k_proj": "attention.attention.key",
         "attn.v_proj": "attention.attention.value", "attn.out_proj": "attention.output.dense",
         "mlp.fc_in": "intermediate.dense", "mlp.fc_out": "output.dense", "attn_norm": "layernorm_before",
         "mlp_norm": "layernorm_after"}
HEAD = {"head.0": "classifier.layernorm", "head.1": "classifier.dense"}
ACTIVATIONS = {"gelu": "gelu", "relu": "relu", "gelu_new": "gelu_tanh", "silu": "silu"}


def ast_config(hf: dict, num_classes: int) -> ModelConfig:
    """attnlab's config for a Hugging Face ``ASTConfig`` dict.

    Raises:
        ValueError: an activation attnlab does not have, or q/k/v without biases.
    """
    act = hf.get("hidden_act", "gelu")
    if act not in ACTIVATIONS or not hf.get("qkv_bias", True):
        raise ValueError(f"this AST config is not supported: hidden_act={act!r}, qkv_bias={hf.get('qkv_bias', True)}")
    k, fs, ts = hf.get("patch_size", 16), hf.get("frequency_stride", 10), hf.get("time_stride", 10)
    mel, frames = hf.get("num_mel_bins", 128), hf.get("max_length", 1024)
    tokens = ((mel - k) // fs + 1) * ((frames - k) // ts + 1) + 2
    return ModelConfig(dim=hf["hidden_size"], num_layers=hf["num_hidden_layers"], num_heads=hf["num_attention_heads"],
                       mlp_dim=hf["intermediate_size"], activation=ACTIVATIONS[act],
                       norm_eps=hf.get("layer_norm_eps", 1e-12), patch_size=k, patch_stride=[fs, ts], mel_bins=mel,
                       frames=frames, pooling="cls", max_seq_len=tokens, num_classes=num_classes, dropout=0.0)


def hf_names(model: AST) -> dict[str, str]:
    """attnlab parameter name -> Hugging Face name (``ASTForAudioClassification``)."""
    out = {ours: PREFIX + theirs for ours, theirs in STATIC.items()}
    for name, _ in model.named_parameters():
        m = re.match(r"blocks\.(\d+)\.(attn\.\w+|mlp\.\w+|\w+)\.(weight|bias)$", name)
        if m and m.group(2) in LAYER:
            out[name] = f"{PREFIX}encoder.layer.{m.group(1)}.{LAYER[m.group(2)]}.{m.group(3)}"
        m = re.match(r"(head\.\d)\.(weight|bias)$", name)
        if m:
            out[name] = f"{HEAD[m.group(1)]}.{m.group(2)}"
    return out


def load_ast(path: str | os.PathLike, attention: str | None = None, **attention_options) -> AST:
    """Build attnlab's :class:`AST` for a Hugging Face AST folder and load its weights (eval mode); an ``ASTModel``
    folder gives a model without a head. ``attention`` swaps the kernel of every layer.

    Raises:
        ValueError: missing folder/config/weights, another ``model_type``, unsupported config features, missing or
            unexpected tensors, shape mismatches, non-finite weights.
        CapabilityError: a swapped-in kernel that cannot place the two prefix tokens on the patch grid.
    """
    folder, hf, weights = read_checkpoint(path, "audio-spectrogram-transformer")
    if not any(k.startswith(PREFIX) for k in weights):  # an ASTModel: base keys without the prefix
        weights = {PREFIX + k: v for k, v in weights.items()}
    head = weights.get("classifier.dense.weight")
    cfg = ast_config(hf, 0 if head is None else head.shape[0])
    if attention is not None:
        cfg = reconfigured(cfg, {"attention": attention, "attention_options": attention_options}, "AST")
    model = AST(cfg)
    copy_mapped(model, hf_names(model), weights, set(), folder, "AST")
    model.hf_info = {"model_type": "audio-spectrogram-transformer", "config": hf, "source": str(folder)}
    return model.eval()


def save_ast(model: AST, path: str | os.PathLike) -> Path:
    """Write ``model`` as a Hugging Face AST folder (``ASTForAudioClassification`` with a head, else ``ASTModel``).

    Raises:
        ValueError: a model transformers' AST cannot run (mean pooling, kernels other than softmax, no biases).
    """
    cfg = model.cfg
    problems = [p for p, bad in (("pooling='mean'", cfg.pooling != "cls"), ("biases off", not cfg.bias),
                                 ("attention kernels other than softmax", cfg.attention != "softmax"),
                                 (f"mlp={cfg.mlp!r}", cfg.mlp != "mlp"),
                                 ("axis_positions (PaSST)", cfg.axis_positions),
                                 (f"patch_shape {cfg.patch_shape} (its patches are square)",
                                  bool(cfg.patch_shape) and cfg.patch_shape[0] != cfg.patch_shape[1])) if bad]
    if problems:
        raise ValueError(f"transformers' AST cannot run this model ({', '.join(problems)})")
    folder = writable_folder(path)
    names = hf_names(model)
    base = model.head is None
    tensors = {(h[len(PREFIX):] if base else h): p.detach().clone() for n, p in model.named_parameters()
               for h in [names[n]]}
    write_safetensors(folder / "model.safetensors", tensors)
    fs, ts = patch_strides(cfg)
    write_json(folder / "config.json", {
        "model_type": "audio-spectrogram-transformer",
        "architectures": ["ASTModel" if base else "ASTForAudioClassification"], "hidden_size": cfg.dim,
        "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
        "intermediate_size": cfg.resolved_mlp_dim, "hidden_act": {v: k for k, v in ACTIVATIONS.items()}[cfg.activation],
        "layer_norm_eps": cfg.norm_eps, "patch_size": patch_kernel(cfg)[0], "frequency_stride": fs, "time_stride": ts,
        "max_length": cfg.frames, "num_mel_bins": cfg.mel_bins, "qkv_bias": True, "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        **({} if base else {"id2label": {str(i): f"LABEL_{i}" for i in range(cfg.num_classes)},
                            "label2id": {f"LABEL_{i}": i for i in range(cfg.num_classes)}})})
    return folder
