"""Hugging Face Swin checkpoints (``SwinModel`` / ``SwinForImageClassification``, Liu et al. 2021) in and out.

The key map is data: Hub checkpoints, and ``transformers`` ``save_pretrained``, use the v4 parameter names
(``attention.self.query`` ...); transformers 5 renames its modules in memory (``attention.q_proj`` ...) and both
are read. Buffers (``relative_position_index``, ``attn_mask``) are rebuilt, never read. Loading is strict: every
checkpoint tensor lands in a parameter and every parameter comes from the checkpoint (a classification head only
when the checkpoint has one).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from torch import Tensor

from ..core.io import writable_folder, write_json
from ..models.config import ModelConfig
from ..models.vision.swin import Swin, stage_grids
from .files import read_checkpoint, write_safetensors
from .swap import attention_record, reconfigured, restored_attention

# attnlab suffix of a block -> Hugging Face suffixes (v4 on disk first, then v5 in memory)
BLOCK_KEYS = {
    "attn_norm": ("layernorm_before",),
    "attn.q_proj": ("attention.self.query", "attention.q_proj"),
    "attn.k_proj": ("attention.self.key", "attention.k_proj"),
    "attn.v_proj": ("attention.self.value", "attention.v_proj"),
    "attn.out_proj": ("attention.output.dense", "attention.o_proj"),
    "attn.kernel.rel_bias": ("attention.self.relative_position_bias_table",
                             "attention.relative_position_bias.relative_position_bias_table"),
    "mlp_norm": ("layernorm_after",),
    "mlp.fc_in": ("intermediate.dense", "mlp.fc1"),
    "mlp.fc_out": ("output.dense", "mlp.fc2"),
}
TOP_KEYS = {
    "patch_embed.proj": "embeddings.patch_embeddings.projection",
    "patch_embed.norm": "embeddings.norm",
    "norm": "layernorm",
    "head": "classifier",
}
BUFFERS = re.compile(r"relative_position_index$|attn_mask$")
UNSUPPORTED = {"use_absolute_embeddings": True, "qkv_bias": False}


def swin_config(hf: dict) -> ModelConfig:
    """attnlab's config for a Hugging Face ``SwinConfig`` dict.

    Raises:
        ValueError: a feature attnlab's Swin does not have (absolute position embeddings, no q/k/v bias, an
            activation other than GELU), naming it.
    """
    for key, bad in UNSUPPORTED.items():
        if hf.get(key, not bad) == bad:
            raise ValueError(f"Swin config has {key}={bad}, which attnlab's Swin does not implement")
    if hf.get("hidden_act", "gelu") != "gelu":
        raise ValueError(f"Swin config has hidden_act={hf['hidden_act']!r}; attnlab's Swin uses exact GELU")
    depths, heads = list(hf["depths"]), list(hf["num_heads"])
    ratio = hf.get("mlp_ratio", 4.0)
    labels = len(hf.get("id2label") or {}) if hf.get("architectures", [""])[0].endswith("Classification") else 0
    side = hf.get("image_size", 224)
    return ModelConfig(dim=hf["embed_dim"], depths=depths, stage_heads=heads, window_size=hf.get("window_size", 7),
                       image_size=side if isinstance(side, int) else side[0], patch_size=hf.get("patch_size", 4),
                       num_channels=hf.get("num_channels", 3), mlp_dim=int(ratio * hf["embed_dim"]),
                       norm_eps=hf.get("layer_norm_eps", 1e-5), attention="window", num_classes=labels,
                       max_seq_len=max(1, (side if isinstance(side, int) else side[0]) ** 2))


def hf_names(model: Swin) -> dict[str, list[str]]:
    """attnlab parameter name -> the Hugging Face names it may come from (without the ``swin.`` prefix); ``[]`` for
    a swapped-in kernel's own parameters (any but a window kernel's bias table), which Hugging Face has not."""
    out: dict[str, list[str]] = {}
    for name, _ in model.named_parameters():
        m = re.match(r"stages\.(\d+)\.blocks\.(\d+)\.(.+)\.(weight|bias|rel_bias)$", name)
        if ".attn.kernel." in name:
            i, j = map(int, re.match(r"stages\.(\d+)\.blocks\.(\d+)\.", name).groups())
            window = name.endswith("rel_bias") and model.stages[i].blocks[j].attn.kernel.name == "window"
            out[name] = [_table(i, j, s) for s in BLOCK_KEYS["attn.kernel.rel_bias"]] if window else []
        elif m:
            i, j, part, leaf = m.groups()
            out[name] = [f"encoder.layers.{i}.blocks.{j}.{s}.{leaf}" for s in BLOCK_KEYS[part]]
        elif name.startswith("stages."):
            out[name] = [re.sub(r"^stages\.(\d+)\.downsample", r"encoder.layers.\1.downsample", name)]
        else:
            part, leaf = name.rsplit(".", 1)
            out[name] = [f"{TOP_KEYS[part]}.{leaf}"]
    return out


def _table(i: int, j: int, suffix: str) -> str:
    return f"encoder.layers.{i}.blocks.{j}.{suffix}"


def load_swin(path: str | os.PathLike, attention: str | list[str] | None = None, image_size: int | None = None,
              num_classes: int | None = None, **attention_options) -> Swin:
    """Build attnlab's :class:`Swin` for a Hugging Face Swin folder and load its weights (eval mode).

    ``attention`` swaps the kernel of every block (``neighborhood``, ``softmax`` ...; one name, one per stage or
    one per block); blocks that leave window attention do not load their relative bias tables (listed in
    ``model.hf_info["skipped"]``), and a kernel's own parameters keep their initialisation (listed in
    ``model.hf_info["initialised"]``). Without ``attention``, the kernel a :func:`save_swin` recorded is restored.
    ``image_size`` sets the input size (Swin has no position embedding: any size whose stage grids keep the
    checkpoint's windows runs the same weights);
    ``num_classes`` builds a new classification head (initialised; 0: none) in place of the checkpoint's.

    Raises:
        ValueError: missing folder/config/weights, another ``model_type``, unsupported config features, missing or
            unexpected tensors, shape mismatches, non-finite weights, an unknown kernel or option.
        CapabilityError: a kernel that cannot serve a Swin block (names the kernels that can).
    """
    folder, hf, raw = read_checkpoint(path, "swin")
    cfg = swin_config(hf)
    if num_classes == cfg.num_classes:
        num_classes = None  # the checkpoint's own head fits: keep it
    attention, attention_options = restored_attention(hf, attention, attention_options)
    update = {k: v for k, v in (("image_size", image_size), ("num_classes", num_classes)) if v is not None}
    if attention is not None:
        update |= {"attention": attention, "attention_options": attention_options}
    if "image_size" in update:
        update["max_seq_len"] = max(1, update["image_size"] ** 2)
    cfg = _check_windows(swin_config(hf), reconfigured(cfg, update, "Swin"))
    weights = {k.removeprefix("swin."): v for k, v in raw.items() if not BUFFERS.search(k)}
    if num_classes is not None:  # a new head: the checkpoint's is not read
        weights = {k: v for k, v in weights.items() if not k.startswith("classifier.")}
    model = Swin(cfg)
    state, used, missing, initialised = {}, set(), [], []
    for name, sources in hf_names(model).items():
        found = next((s for s in sources if s in weights), None)
        if found is None:
            new_head = name.startswith("head.") and num_classes is not None
            (initialised if not sources or new_head else missing).append(name)
            continue
        state[name], _ = weights[found], used.add(found)
    initialised += [n for n in model.state_dict() if ".attn.kernel." in n and n not in hf_names(model)]  # state
    skipped = sorted(k for k in set(weights) - used if "relative_position_bias" in k and attention is not None)
    unexpected = sorted(set(weights) - used - set(skipped))
    if missing or unexpected:
        raise ValueError(f"checkpoint {str(folder)!r} does not match a Swin of its config: missing {missing[:8] or 'none'}"
                         f"; unexpected {unexpected[:8] or 'none'}")
    _copy(model, state, folder)
    model.hf_info = {"model_type": "swin", "config": hf, "source": str(folder), "skipped": skipped,
                     "initialised": initialised}
    return model.eval()


def _check_windows(ckpt: ModelConfig, cfg: ModelConfig) -> ModelConfig:
    """``cfg``, once its window blocks keep the checkpoint's windows: a smaller image can shrink a stage's grid
    below the window, and the window (and its bias table) with it.

    Raises:
        ValueError: naming the stage and the smallest image size that keeps every window.
    """
    names = cfg.attention if isinstance(cfg.attention, list) else [cfg.attention] * cfg.num_layers
    before = [min(ckpt.window_size, *g) for g in stage_grids(ckpt)]
    after = [min(cfg.window_size, *g) for g in stage_grids(cfg)]
    first = [sum(cfg.depths[:i]) for i in range(len(cfg.depths))]
    for i, (b, a) in enumerate(zip(before, after)):
        if a != b and "window" in names[first[i]:first[i] + cfg.depths[i]]:
            smallest = cfg.patch_size * 2 ** (len(cfg.depths) - 1) * min(b, cfg.window_size)
            raise ValueError(f"image_size={cfg.image_size} makes stage {i}'s grid {stage_grids(cfg)[i]} smaller than "
                             f"the {b}x{b} windows the checkpoint's bias tables were trained for; use image_size >= "
                             f"{smallest}, or another kernel in that stage")
    return cfg


def _copy(model: Swin, state: dict[str, Tensor], folder: Path) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            if params[name].shape != value.shape:
                raise ValueError(f"{folder}: {name} is {tuple(value.shape)} in the checkpoint but "
                                 f"{tuple(params[name].shape)} in the model of its config")
            params[name].copy_(value)


def save_swin(model: Swin, path: str | os.PathLike, allow_attention_change: bool = False) -> Path:
    """Write ``model`` as a Hugging Face Swin folder (``config.json`` + ``model.safetensors``, v4 names) that
    ``SwinForImageClassification`` (with a head) or ``SwinModel`` loads unchanged.

    A model whose blocks are not all window attention is written only with ``allow_attention_change``:
    transformers runs its weights with window attention, taking a zero relative bias table for each block whose
    kernel has none; ``config.json`` records the kernels (``attnlab_attention``) so :func:`load_swin` restores them.

    Raises:
        ValueError: another kernel without ``allow_attention_change``, a kernel with its own parameters, a stage
            grid smaller than the window (transformers cannot run it), or grid attention modules after stages
            (``stage_modules``: transformers' Swin has none).
    """
    cfg = model.cfg
    blocks = [(i, j, b) for i, s in enumerate(model.stages) for j, b in enumerate(s.blocks)]
    record = attention_record(cfg, (b.attn.kernel for _, _, b in blocks), "window", "Swin", allow_attention_change)
    small = [i for i, grid in enumerate(model.grids) if min(grid) < cfg.window_size]
    if small:  # transformers sizes every table for window_size and cannot run a smaller grid (attnlab clamps)
        raise ValueError(f"transformers' Swin cannot run stage(s) {small}, whose grids {[model.grids[i] for i in small]}"
                         f" are smaller than window_size={cfg.window_size}; build the model with window_size <= "
                         f"{min(min(g) for g in model.grids)} or a larger image_size to save it for transformers")
    if any(cfg.stage_modules):
        raise ValueError(f"transformers' Swin has no grid attention modules after its stages; this model has "
                         f"stage_modules={cfg.stage_modules}: save it with attnlab's own checkpoints instead")
    folder = writable_folder(path)
    prefix = "swin." if model.head is not None else ""
    names = hf_names(model)
    tensors = {(prefix if not n.startswith("head.") else "") + names[n][0]: p for n, p in model.named_parameters()}
    for i, j, block in blocks:
        if block.attn.kernel.name != "window":  # transformers needs a table: zero adds no bias
            side = 2 * min(cfg.window_size, *model.grids[i]) - 1
            tensors[prefix + _table(i, j, BLOCK_KEYS["attn.kernel.rel_bias"][0])] = torch.zeros(
                side * side, cfg.stage_heads[i], dtype=next(model.parameters()).dtype)
    write_safetensors(folder / "model.safetensors", tensors)
    write_json(folder / "config.json", _hf_config(cfg, model.head is not None) | record)
    return folder


def _hf_config(cfg: ModelConfig, classifier: bool) -> dict:
    hf = {"model_type": "swin", "architectures": ["SwinForImageClassification" if classifier else "SwinModel"],
          "image_size": cfg.image_size, "patch_size": cfg.patch_size, "num_channels": cfg.num_channels,
          "embed_dim": cfg.dim, "depths": list(cfg.depths), "num_heads": list(cfg.stage_heads),
          "window_size": cfg.window_size, "mlp_ratio": (cfg.mlp_dim or 4 * cfg.dim) / cfg.dim, "qkv_bias": True,
          "hidden_act": "gelu", "layer_norm_eps": cfg.norm_eps, "use_absolute_embeddings": False,
          "drop_path_rate": cfg.drop_path, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    if classifier:
        hf["id2label"] = {str(i): f"LABEL_{i}" for i in range(cfg.num_classes)}
        hf["label2id"] = {v: int(k) for k, v in hf["id2label"].items()}
    return hf
