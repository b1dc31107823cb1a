"""Hugging Face CvT checkpoints (``CvtModel`` / ``CvtForImageClassification``, Wu et al. 2021) in and out.

The key map is data (``KEYS``: a regular expression over attnlab's state-dict names and the Hugging Face name it
becomes); BatchNorm running statistics travel with the weights. Loading is strict: every checkpoint tensor lands
in the model and every model tensor comes from the checkpoint, except the parameters of a swapped-in kernel that
softmax does not have (kept initialised, listed in ``model.hf_info["initialised"]``). ``CvtModel`` has no final
LayerNorm (it belongs to ``CvtForImageClassification``): loaded from one, attnlab's model has none either.

Hugging Face's config has no image size (CvT has no position embedding): ``image_size`` sets the size attnlab's model
checks its inputs against (224 by default; a folder :func:`save_cvt` wrote records its own in ``config.json``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from torch import nn

from ..core.io import writable_folder, write_json
from ..models.config import ModelConfig
from ..models.vision.cvt import CvT
from .files import read_checkpoint, write_safetensors
from .swap import attention_record, reconfigured, restored_attention

ATTN = "layers.{j}.attention.attention."
# attnlab name inside stage i (regex) -> Hugging Face name inside ``encoder.stages.{i}.``
KEYS = [
    (r"embed\.proj\.(\w+)", "embedding.convolution_embeddings.projection.{0}"),
    (r"embed\.norm\.(\w+)", "embedding.convolution_embeddings.normalization.{0}"),
    (r"cls_token", "cls_token"),
    (r"blocks\.(?P<j>\d+)\.attn_norm\.(\w+)", "layers.{j}.layernorm_before.{1}"),
    (r"blocks\.(?P<j>\d+)\.mlp_norm\.(\w+)", "layers.{j}.layernorm_after.{1}"),
    (r"blocks\.(?P<j>\d+)\.attn\.conv_(q|k|v)\.conv\.(\w+)",
     ATTN + "convolution_projection_{qkv}.convolution_projection.convolution.{2}"),
    (r"blocks\.(?P<j>\d+)\.attn\.conv_(q|k|v)\.bn\.(\w+)",
     ATTN + "convolution_projection_{qkv}.convolution_projection.normalization.{2}"),
    (r"blocks\.(?P<j>\d+)\.attn\.attn\.(q|k|v)_proj\.(\w+)", ATTN + "projection_{qkv}.{2}"),
    (r"blocks\.(?P<j>\d+)\.attn\.attn\.out_proj\.(\w+)", "layers.{j}.attention.output.dense.{1}"),
    (r"blocks\.(?P<j>\d+)\.mlp\.fc_in\.(\w+)", "layers.{j}.intermediate.dense.{1}"),
    (r"blocks\.(?P<j>\d+)\.mlp\.fc_out\.(\w+)", "layers.{j}.output.dense.{1}"),
]
TOP_KEYS = {"norm": "layernorm", "head": "classifier"}
QKV = {"q": "query", "k": "key", "v": "value"}
# config.json fields attnlab's CvT fixes: every stage must hold this value
FIXED = {"qkv_projection_method": "dw_bn", "kernel_qkv": 3, "padding_kv": 1, "padding_q": 1, "stride_q": 1,
         "qkv_bias": True}


def hf_name(name: str) -> str | None:
    """The Hugging Face name (without the ``cvt.`` prefix) of attnlab's state-dict entry ``name``; ``None`` for a
    kernel's own parameter, which Hugging Face does not have."""
    if ".kernel." in name:
        return None
    m = re.match(r"stages\.(\d+)\.(.+)$", name)
    if m is None:
        part, leaf = name.split(".", 1)
        return f"{TOP_KEYS[part]}.{leaf}"
    i, rest = m.groups()
    for pattern, template in KEYS:
        k = re.fullmatch(pattern, rest)
        if k:
            groups = k.groups()
            qkv = QKV.get(groups[1], "") if len(groups) > 1 else ""
            return f"encoder.stages.{i}." + template.format(*groups, j=k.groupdict().get("j"), qkv=qkv)
    raise KeyError(f"no Hugging Face name for {name}")


def cvt_config(hf: dict, image_size: int = 224) -> ModelConfig:
    """attnlab's config for a Hugging Face ``CvtConfig`` dict.

    Raises:
        ValueError: a feature attnlab's CvT does not have (another projection method or q/k/v convolution, key
            strides or MLP ratios that differ between stages, a class token before the last stage), naming it.
    """
    depth = list(hf.get("depth", [1, 2, 10]))
    n = len(depth)
    for key, value in FIXED.items():
        if any(v != value for v in hf.get(key, [value] * n)):
            raise ValueError(f"CvT config has {key}={hf[key]}; attnlab's CvT implements {value} in every stage")
    same = {key: set(hf.get(key, [default] * n)) for key, default in (("stride_kv", 2), ("mlp_ratio", 4.0))}
    for key, values in same.items():
        if len(values) != 1:
            raise ValueError(f"CvT config has {key}={hf[key]}; attnlab's CvT uses one value for every stage")
    cls = list(hf.get("cls_token", [False] * (n - 1) + [True]))
    if any(cls[:-1]):
        raise ValueError(f"CvT config has cls_token={cls}; attnlab's CvT puts a class token in the last stage only")
    dims = list(hf.get("embed_dim", [64, 192, 384]))
    embed = [list(t) for t in zip(hf.get("patch_sizes", [7, 3, 3]), hf.get("patch_stride", [4, 2, 2]),
                                  hf.get("patch_padding", [2, 1, 1]))]
    labels = len(hf.get("id2label") or {}) if hf.get("architectures", [""])[0].endswith("Classification") else 0
    return ModelConfig(stage_dims=dims, depths=depth, stage_heads=list(hf.get("num_heads", [1, 3, 6])),
                       stage_embed=embed, kv_stride=same["stride_kv"].pop(), pooling="cls" if cls[-1] else "mean",
                       mlp_dim=int(same["mlp_ratio"].pop() * dims[0]), num_channels=hf.get("num_channels", 3),
                       image_size=image_size, norm_eps=1e-5, activation="gelu", num_classes=labels,
                       drop_path=max(hf.get("drop_path_rate", [0.0])), attention="softmax",
                       max_seq_len=max(1, image_size ** 2))


def load_cvt(path: str | os.PathLike, attention: str | list[str] | None = None, image_size: int | None = None,
             num_classes: int | None = None, kv_stride: int | None = None, **attention_options) -> CvT:
    """Build attnlab's :class:`CvT` for a Hugging Face CvT folder and load its weights (eval mode).

    ``attention`` swaps the kernel of every block (one name, one per stage or one per block; with the key stride
    of the checkpoint, 2 by default, it must support cross-attention); without it, the kernel a :func:`save_cvt`
    recorded is restored. ``num_classes`` builds a new classification head (initialised; 0: none) in place of
    the checkpoint's; ``image_size`` is the input size (default: the one a :func:`save_cvt` recorded, else 224);
    ``kv_stride=1`` keeps every key and value (the convolutional projections' weights serve
    any stride), so that grid kernels serve the blocks.

    Raises:
        ValueError: missing folder/config/weights, another ``model_type``, unsupported config features, missing or
            unexpected tensors, shape mismatches, non-finite weights, an unknown kernel or option.
        CapabilityError: a swapped-in kernel that cannot serve CvT's blocks (names the kernels that can).
    """
    folder, hf, raw = read_checkpoint(path, "cvt")
    cfg = cvt_config(hf, image_size or hf.get("image_size", 224))  # save_cvt records the size it was built for
    if num_classes == cfg.num_classes:
        num_classes = None  # the checkpoint's own head fits: keep it
    attention, attention_options = restored_attention(hf, attention, attention_options)
    update = {k: v for k, v in (("num_classes", num_classes), ("kv_stride", kv_stride)) if v is not None}
    if attention is not None:
        update |= {"attention": attention, "attention_options": attention_options}
    cfg = reconfigured(cfg, update, "CvT")
    weights = {k.removeprefix("cvt."): v for k, v in raw.items()}
    if num_classes is not None:  # a new head: the checkpoint's is not read
        weights = {k: v for k, v in weights.items() if not k.startswith("classifier.")}
    model = CvT(cfg)
    state, initialised, missing = {}, [], []
    has_norm = "layernorm.weight" in weights
    for name in model.state_dict():
        source = hf_name(name)
        if name.startswith("norm.") and not has_norm:
            continue  # a CvtModel: no final norm (replaced below)
        if source is None or (name.startswith("head.") and num_classes is not None):
            initialised.append(name)
        elif source in weights:
            state[name] = weights[source]
        else:
            missing.append(name)
    unexpected = sorted(set(weights) - {hf_name(n) for n in state})
    if missing or unexpected:
        raise ValueError(f"checkpoint {str(folder)!r} does not match a CvT of its config: missing {missing[:8] or 'none'}"
                         f"; unexpected {unexpected[:8] or 'none'}")
    _copy(model, state, folder)
    if not has_norm:
        model.norm = nn.Identity()
    model.hf_info = {"model_type": "cvt", "config": hf, "source": str(folder), "initialised": initialised,
                     "skipped": []}
    return model.eval()


def _copy(model: CvT, state: dict, folder: Path) -> None:
    own = model.state_dict()
    for name, value in state.items():
        if own[name].shape != value.shape:
            raise ValueError(f"{folder}: {name} is {tuple(value.shape)} in the checkpoint but "
                             f"{tuple(own[name].shape)} in the model of its config")
    model.load_state_dict(state, strict=False)


def save_cvt(model: CvT, path: str | os.PathLike, allow_attention_change: bool = False) -> Path:
    """Write ``model`` as a Hugging Face CvT folder (``config.json`` + ``model.safetensors``) that
    ``CvtForImageClassification`` (with a head) or ``CvtModel`` (without) loads unchanged.

    A kernel other than softmax is written only with ``allow_attention_change`` (transformers runs the weights
    with softmax; ``config.json`` records the kernels, ``attnlab_attention``, for :func:`load_cvt`).

    Raises:
        ValueError: a kernel other than softmax without ``allow_attention_change``, a kernel with its own
            parameters, a model without a head but with a
            final LayerNorm (``CvtModel`` has none: it would be lost), or a stage ``i`` of at most ``i`` blocks
            (transformers' ``CvtStage`` indexes its drop-path rates by the stage number and cannot build it).
    """
    cfg = model.cfg
    kernels = (b.attn.attn.kernel for s in model.stages for b in s.blocks)
    record = attention_record(cfg, kernels, "softmax", "CvT", allow_attention_change)
    classifier = model.head is not None
    if not classifier and isinstance(model.norm, nn.LayerNorm):
        raise ValueError("CvtModel has no final LayerNorm, so this model's would be lost; save a model with a "
                         "classification head (num_classes > 0), which CvtForImageClassification holds with its norm")
    short = [i for i, d in enumerate(cfg.depths) if d <= i]
    if short:
        raise ValueError(f"transformers' CvT cannot build stage(s) {short} of depths={list(cfg.depths)}: its CvtStage "
                         "indexes the stage's drop-path rates by the stage number, so stage i needs more than i blocks")
    prefix = "cvt." if classifier else ""
    tensors = {}
    for name, value in model.state_dict().items():
        if name.startswith(("norm.", "head.")):
            if classifier:
                tensors[hf_name(name)] = value
        else:
            tensors[prefix + hf_name(name)] = value
    folder = writable_folder(path)
    write_safetensors(folder / "model.safetensors", tensors)
    write_json(folder / "config.json", _hf_config(cfg, classifier) | record)
    return folder


def _hf_config(cfg: ModelConfig, classifier: bool) -> dict:
    n = len(cfg.depths)
    hf = {"model_type": "cvt", "architectures": ["CvtForImageClassification" if classifier else "CvtModel"],
          "num_channels": cfg.num_channels, "patch_sizes": [e[0] for e in cfg.stage_embed],
          "patch_stride": [e[1] for e in cfg.stage_embed], "patch_padding": [e[2] for e in cfg.stage_embed],
          "embed_dim": list(cfg.stage_dims), "num_heads": list(cfg.stage_heads), "depth": list(cfg.depths),
          "mlp_ratio": [(cfg.mlp_dim / cfg.dim if cfg.mlp_dim else 4.0)] * n, "attention_drop_rate": [0.0] * n,
          "drop_rate": [0.0] * n, "drop_path_rate": [0.0] * (n - 1) + [cfg.drop_path],
          "cls_token": [False] * (n - 1) + [cfg.pooling == "cls"], "stride_kv": [cfg.kv_stride] * n,
          "image_size": cfg.image_size,  # not a CvtConfig field (transformers keeps it as an attribute): for load_cvt
          **{key: [value] * n for key, value in FIXED.items()}}
    if classifier:
        hf["id2label"] = {str(i): f"LABEL_{i}" for i in range(cfg.num_classes)}
        hf["label2id"] = {v: int(k) for k, v in hf["id2label"].items()}
    return hf
