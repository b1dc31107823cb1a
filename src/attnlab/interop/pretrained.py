"""Load local Hugging Face checkpoints (BERT family incl. MiniLM, GPT-2, ViT) into attnlab models and save
them back in a form ``transformers`` loads unchanged.

Conversion is data (:mod:`attnlab.interop.keymaps`); loading is strict: every checkpoint tensor must
land in a parameter and every parameter must come from the checkpoint, except the parameters of a
swapped-in attention kernel, which keep their initialisation (listed in ``model.hf_info["initialised"]``).
"""

from __future__ import annotations

import inspect
import os
import re
from pathlib import Path

import torch
from pydantic import ValidationError
from torch import Tensor, nn

from ..attention.capabilities import CapabilityError
from ..core.io import copy_file, writable_folder, write_json, write_text
from ..models.config import ModelConfig
from ..models.registry import short_error
from ..models.text.encoder import Encoder, MLMHead
from ..models.text.gpt import GPT
from ..models.vision.vit import ViT
from .files import check_finite, check_folder, read_config, read_json, read_weights, write_safetensors
from .heads import AbsentHead, PooledClassifier, Pooler
from .hf_config import check_representable, from_hf, to_hf
from .keymaps import SPECS, TRANSFORMS, Architecture, ArchSpec, expand_rules
from .swap import attention_record, kernel_options, restored_attention, split_options
from .tokenizer import TextTokenizer

FAMILIES: dict[str, type[nn.Module]] = {"bert": Encoder, "gpt2": GPT, "vit": ViT}
# files next to the weights that tokenizers / sentence-transformers / transformers read; copied on save
AUX_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json",
             "merges.txt", "sentence_bert_config.json", "modules.json", "config_sentence_transformers.json",
             "1_Pooling/config.json", "preprocessor_config.json", "generation_config.json")
# parameters a checkpoint never holds: the kernel's own (swapped attention) and its stack-level state
KERNEL_PARAM = re.compile(r"(^|\.)attn\.kernel\.|^stack_hooks\.")
_NOT_FOR = {"bert": ("image_size", "patch_size", "num_channels"), "gpt2": ("image_size", "patch_size", "num_channels"),
            "vit": ("vocab_size", "tie_weights", "type_vocab_size", "max_seq_len")}


def load_pretrained(path: str | os.PathLike, attention: str | list[str] | None = None, *, strict: bool = True,
                    dtype: torch.dtype = torch.float32, device=None, **attention_options) -> nn.Module:
    """Build the attnlab model of a local Hugging Face checkpoint folder and load its weights.

    Swapping: ``load_pretrained(path, attention="sliding_window", window=64)`` keeps every projection,
    norm and MLP weight and only changes the attention kernel (any registry name, or one per layer).
    That is the starting point for fine-tuning the swapped model, or for distilling it from the
    unswapped one (MiniLM-style, Wang et al. 2020): both share parameter names.

    Args:
        path: folder with ``config.json`` and ``model.safetensors`` (or sharded / ``pytorch_model.bin``).
        attention: kernel name(s); ``None`` = softmax (or the kernel recorded by :func:`save_pretrained`).
        strict: ``False`` skips unexpected checkpoint tensors and keeps missing ones initialised
            (both listed in ``model.hf_info``).
        dtype, device: where the parameters live.
        **attention_options: options of the kernel (``window=64``); for Swin and CvT also ``image_size`` (the
            input size the model expects) and ``num_classes`` (a new, initialised classification head; 0 drops
            it), CvT's ``kv_stride``, and ViT's ``pooling="mean"`` (leaves out the [CLS] token and its position, so
            grid kernels serve every block).

    Returns:
        :class:`Encoder` (bert), :class:`GPT` (gpt2) or :class:`ViT` (vit), in eval mode, with
        ``model.tokenizer`` (a :class:`TextTokenizer`, or ``None`` without ``tokenizer.json``) and
        ``model.hf_info`` (model_type, architecture, config, source, initialised, skipped).

    Raises:
        ValueError: missing folder / config / weights, a truncated or corrupt weight file, a shard index naming a
            file outside the folder, weights holding NaN or infinity (names the tensors), unsupported
            ``model_type`` (lists the supported), unsupported config features, missing or unexpected tensors,
            shape mismatches, a refused pickle, an unknown attention kernel or option, a model keyword
            (``image_size`` ...) this model type cannot change.
        CapabilityError: a kernel that cannot serve the model (names the kernels that can; for a ViT with its
            [CLS] token, also ``pooling="mean"``).
    """
    folder = check_folder(path)
    hf = read_config(folder)
    model_options, attention_options = split_options(str(hf.get("model_type")), attention_options)
    if attention is None and attention_options:
        raise ValueError(f"attention options {sorted(attention_options)} need attention=<kernel name>")
    if hf.get("model_type") in OWN_MAPS:  # their own key maps (interop/swin.py, cvt.py, t5.py, bart.py, ast.py)
        load = _own_map_loader(hf["model_type"])
        return load(folder, attention, **model_options, **attention_options).to(dtype=dtype, device=device)
    spec = _spec(hf.get("model_type"))
    num_layers = from_hf(spec.model_type, hf, ())[0]["num_layers"]  # validates config.json first
    raw = read_weights(folder)
    check_finite(raw, folder)
    weights = _normalise_keys(spec, raw)
    tied = spec.model_type != "vit" and bool(hf.get("tie_word_embeddings", True))
    arch, rules, missing, unexpected = _match_architecture(spec, hf, weights, tied, num_layers)
    if strict and (missing or unexpected):
        raise ValueError(f"checkpoint {str(folder)!r} does not match {arch.name}: missing {missing or 'none'}; "
                         f"unexpected {unexpected or 'none'}. Pass strict=False to load anyway")
    cfg = _model_config(spec, hf, arch, folder, attention, attention_options, model_options)
    model = _build(spec.model_type, cfg, arch, hf)
    ours = _convert(rules, weights)
    if cfg.pooling == "mean" and spec.model_type == "vit":
        unexpected = [*unexpected, *_drop_class_token(ours)]
    _check_shapes(model, ours, rules)
    initialised = _load_state(model, ours, strict)
    model.to(device=device, dtype=dtype).eval()
    model.tokenizer = TextTokenizer.from_folder(folder, cfg.max_seq_len) if spec.model_type != "vit" else None
    model.hf_info = {"model_type": spec.model_type, "architecture": arch.name, "config": hf, "source": str(folder),
                     "initialised": initialised, "skipped": unexpected}
    return model


OWN_MAPS = ("audio-spectrogram-transformer", "bart", "cvt", "swin", "t5")


def _own_map_loader(model_type: str):
    """The loader of a model type whose key map lives in its own module."""
    if model_type == "swin":
        from .swin import load_swin as load
    elif model_type == "cvt":
        from .cvt import load_cvt as load
    elif model_type == "bart":
        from .bart import load_bart as load
    elif model_type == "audio-spectrogram-transformer":
        from .ast import load_ast as load
    else:
        from .t5 import load_t5 as load
    return load


def _own_map_saver(model: nn.Module):
    """The writer of ``model`` if its family's key map lives in its own module, else ``None``."""
    from ..models.audio.ast import AST
    from ..models.seq2seq.model import EncoderDecoder
    from ..models.vision.cvt import CvT
    from ..models.vision.swin import Swin
    from .ast import save_ast
    from .bart import save_bart
    from .cvt import save_cvt
    from .swin import save_swin
    from .t5 import save_t5

    if isinstance(model, EncoderDecoder):  # BART's layout has the decoder's own embeddings; T5's does not
        return save_bart if model.cfg.decoder_embeddings else save_t5
    return next((save for cls, save in ((Swin, save_swin), (CvT, save_cvt), (AST, save_ast)) if isinstance(model, cls)),
                None)


def _spec(model_type) -> ArchSpec:
    if model_type not in SPECS:
        raise ValueError(f"unsupported model_type {model_type!r} in config.json; supported: {sorted([*SPECS, *OWN_MAPS])}")
    return SPECS[model_type]


def _normalise_keys(spec: ArchSpec, weights: dict[str, Tensor]) -> dict[str, Tensor]:
    """Strip the base prefix (``bert.`` ...) and drop weightless buffers (position_ids, causal masks)."""
    out = {}
    for k, v in weights.items():
        if any(re.match(p, k) for p in spec.ignored):
            continue
        out[k[len(spec.base_prefix):] if k.startswith(spec.base_prefix) else k] = v
    return out


def _match_architecture(spec: ArchSpec, hf: dict, weights: dict[str, Tensor], tied: bool, num_layers: int):
    """The architecture whose keys the checkpoint matches (exactly, if any does), with its rules and
    its ``missing`` / ``unexpected`` key lists."""
    duplicates = {k for k, src in spec.tied.items() if tied and src.format(base="") in weights}
    named = hf.get("architectures") or []
    best = None
    for arch in spec.architectures:
        rules = expand_rules(spec, arch, num_layers, tied, prefixed=False)
        expected = {t for _, t, _ in rules}
        missing = sorted(expected - set(weights))
        unexpected = sorted(set(weights) - expected - duplicates)
        score = (len(missing) + len(unexpected), arch.name not in named)
        if best is None or score < best[0]:
            best = (score, arch, rules, missing, unexpected)
    for dup in duplicates & set(weights):
        if not torch.equal(weights[dup], weights[spec.tied[dup].format(base="")]):
            raise ValueError(f"config ties {dup!r} to {spec.tied[dup].format(base='')!r} but the checkpoint "
                             "holds different values; set tie_word_embeddings=false in config.json")
    return best[1:]


def _model_config(spec: ArchSpec, hf: dict, arch: Architecture, folder: Path, attention, options,
                  model_options: dict | None = None) -> ModelConfig:
    kwargs, attn_dropout = from_hf(spec.model_type, hf, arch.heads)
    kwargs.update(model_options or {})  # split_options let through only what this family's weights allow
    if spec.model_type == "gpt2" and "lm_head" not in arch.heads:
        kwargs["tie_weights"] = True  # GPT2Model has no output head: GPT's head is a view of the embedding
    attention, options = restored_attention(hf, attention, options)
    if attention is None:
        attention, options = "softmax", {"dropout": attn_dropout}
    pooling_cfg = folder / "1_Pooling" / "config.json"
    if pooling_cfg.is_file() and read_json(pooling_cfg).get("pooling_mode_mean_tokens"):
        kwargs["pooling"] = "mean"  # a sentence-transformers model with mean pooling
    try:
        return ModelConfig(**kwargs, attention=attention, attention_options=kernel_options(options))
    except ValidationError as e:
        raise ValueError(f"cannot build the model of {str(folder)!r}: {short_error(e)}") from None


def _drop_class_token(ours: dict[str, Tensor]) -> list[str]:
    """A ViT checkpoint loaded with ``pooling='mean'``: its [CLS] token and the [CLS] row of its position table are
    left out (the patches keep theirs); returns what was left out, for ``hf_info["skipped"]``."""
    ours.pop("embed.cls_token", None)
    if "embed.pos_emb" in ours:
        ours["embed.pos_emb"] = ours["embed.pos_emb"][:, 1:]
    return ["embeddings.cls_token", "embeddings.position_embeddings[:, 0] (the [CLS] position)"]


def _build(model_type: str, cfg: ModelConfig, arch: Architecture, hf: dict) -> nn.Module:
    try:
        model = FAMILIES[model_type](cfg)
    except CapabilityError as e:
        if model_type != "vit" or cfg.pooling != "cls":
            raise
        raise CapabilityError(f"{e}. Loading a Hugging Face ViT: pass pooling='mean' to load_pretrained, which "
                              "leaves out the checkpoint's [CLS] token (fine-tune it then: the head reads the mean "
                              "of the patches)") from None
    if model_type == "bert" and "mlm" not in arch.heads:
        model.mlm_head = AbsentHead(f"this {arch.name} checkpoint has no masked-LM head; load a BertForMaskedLM")
    if "pooler" in arch.heads:
        model.pooler = Pooler(cfg.dim)
    if model_type == "bert" and "classifier" in arch.heads:
        dropout = hf.get("classifier_dropout")
        model.classifier = PooledClassifier(cfg.dim, cfg.num_classes, cfg.dropout if dropout is None else dropout)
    return model


def _convert(rules: list[tuple], weights: dict[str, Tensor]) -> dict[str, Tensor]:
    ours: dict[str, Tensor] = {}
    for keys, theirs, transform in rules:
        if theirs in weights:
            ours.update(zip(keys, TRANSFORMS[transform][0](weights[theirs])))
    return ours


def _check_shapes(model: nn.Module, ours: dict[str, Tensor], rules: list[tuple]) -> None:
    state = model.state_dict()
    source = {k: t for keys, t, _ in rules for k in keys}
    absent = sorted(set(ours) - set(state))
    if absent:  # a key map naming parameters the model does not have: the map and the builder disagree
        raise ValueError(f"the key map targets parameters this model does not have: {absent}")
    bad = [f"{source[k]} -> {k}: checkpoint {tuple(v.shape)}, model {tuple(state[k].shape)}"
           for k, v in ours.items() if v.shape != state[k].shape]
    if bad:
        raise ValueError("shape mismatch between checkpoint and config.json: " + "; ".join(bad))


def _aliases(model: nn.Module) -> dict[str, str]:
    """state-dict key -> the first key holding the same tensor (tied weights)."""
    first: dict[int, str] = {}
    out = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        out[name] = first.setdefault(id(p), name)
    return out


def _load_state(model: nn.Module, ours: dict[str, Tensor], strict: bool) -> list[str]:
    """Copy ``ours`` into the model; returns the keys left initialised (kernel parameters)."""
    alias = _aliases(model)
    full = dict(ours)
    for key, src in alias.items():
        if key != src and src in ours:
            full[key] = ours[src]
    left = [k for k in model.state_dict() if k not in full]
    unexplained = [k for k in left if not KERNEL_PARAM.search(k)]
    if unexplained and strict:
        raise ValueError(f"the checkpoint provides no values for {unexplained}")
    model.load_state_dict(full, strict=False)
    return left


def save_pretrained(model: nn.Module, path: str | os.PathLike, *, allow_attention_change: bool = False) -> Path:
    """Write ``model`` as a Hugging Face folder (``config.json`` + ``model.safetensors``, plus the
    tokenizer / sentence-transformers files of the folder it was loaded from). Files are written
    atomically; ``transformers.AutoModel.from_pretrained(path)`` loads the result unchanged.

    Args:
        allow_attention_change: save a model whose attention is not the checkpoint family's own (softmax;
            Swin: window); transformers will run the weights with its own attention, and the kernel is recorded
            in ``config.json`` (``attnlab_attention``) so :func:`load_pretrained` restores it. BERT, GPT-2, ViT,
            Swin and CvT; AST, BART and T5 refuse other kernels.

    Raises:
        ValueError: unsupported model class, a config Hugging Face cannot express (the fields are named),
            a non-softmax kernel without ``allow_attention_change``, kernel parameters, or ``path`` (or one of
            its parents) is an existing file.
        OSError: the folder cannot be written (permission denied, disk full).
    """
    saver = _own_map_saver(model)
    if saver is not None:  # Swin, CvT, AST, BART and T5 have their own key maps (interop/swin.py ...)
        swaps = "allow_attention_change" in inspect.signature(saver).parameters  # Swin and CvT; the rest refuse
        return saver(model, path, allow_attention_change=allow_attention_change) if swaps else saver(model, path)
    folder = writable_folder(path, "checkpoint folder")
    model_type = _family_of(model)
    spec, cfg = SPECS[model_type], model.cfg
    arch = _architecture_of(model, model_type)
    check_representable(model_type, cfg, arch.heads, ignore=_NOT_FOR[model_type])
    if model_type == "vit" and cfg.pooling != "cls":
        raise ValueError("a ViT with pooling='mean' has no [CLS] token; Hugging Face ViT needs pooling='cls'")
    extra = _attention_record(model, allow_attention_change)
    rules = expand_rules(spec, arch, cfg.num_layers, cfg.tie_weights, prefixed=arch.prefixed)
    state = model.state_dict()
    alias = _aliases(model)
    covered = {k for keys, _, _ in rules for k in keys}
    uncovered = [k for k in state if k not in covered and alias.get(k, k) not in covered]
    if uncovered:
        raise ValueError(f"no Hugging Face {arch.name} tensor holds {uncovered}")
    tensors = {theirs: TRANSFORMS[tr][1]([state[k] for k in keys]) for keys, theirs, tr in rules}
    info = getattr(model, "hf_info", None) or {}
    base = info.get("config") if info.get("model_type") == model_type else None
    attn_dropout = cfg.layer_attention(0)[1].get("dropout", cfg.dropout)
    hf = to_hf(model_type, cfg, attn_dropout, base) | {"architectures": [arch.name], **extra}
    hf["dtype"] = hf["torch_dtype"] = str(next(model.parameters()).dtype).replace("torch.", "")  # v5 / v4 names
    if not extra:
        hf.pop("attnlab_attention", None)
    folder.mkdir(parents=True, exist_ok=True)
    write_safetensors(folder / "model.safetensors", tensors)
    write_json(folder / "config.json", hf, sort_keys=True)
    _copy_aux(model, info, folder)
    return folder


def _family_of(model: nn.Module) -> str:
    for name, cls in FAMILIES.items():
        if type(model) is cls:
            return name
    raise ValueError(f"save_pretrained supports {[c.__name__ for c in FAMILIES.values()]}, got {type(model).__name__}")


def _architecture_of(model: nn.Module, model_type: str) -> Architecture:
    """The Hugging Face class that holds exactly this model's heads."""
    has_pooler = isinstance(getattr(model, "pooler", None), Pooler)
    if model_type == "bert":
        if model.classifier is not None:
            if not isinstance(model.classifier, PooledClassifier):
                raise ValueError("BertForSequenceClassification needs BERT's pooled head; this encoder's "
                                 "classifier has no pooler (build it from a BERT checkpoint to fine-tune)")
            return Architecture("BertForSequenceClassification", True, ("classifier",))
        if isinstance(model.mlm_head, MLMHead):
            return Architecture("BertForMaskedLM", True, ("mlm",))
        return Architecture("BertModel", False, ("pooler",) if has_pooler else ())
    if model_type == "gpt2":
        named = getattr(model, "hf_info", {}).get("architecture")
        if named == "GPT2Model" and model.cfg.tie_weights:
            return Architecture("GPT2Model", False, ())
        return Architecture("GPT2LMHeadModel", True, ("lm_head",))
    if model.head is not None:
        return Architecture("ViTForImageClassification", True, ("classifier",))
    return Architecture("ViTModel", False, ("pooler",) if has_pooler else ())


def _attention_record(model: nn.Module, allow: bool) -> dict:
    family = {"bert": "BERT", "gpt2": "GPT-2", "vit": "ViT"}[_family_of(model)]
    return attention_record(model.cfg, (b.attn.kernel for b in model.blocks), "softmax", family, allow)


def _copy_aux(model: nn.Module, info: dict, folder: Path) -> None:
    source = Path(info["source"]) if info.get("source") else None
    copied = False
    if source is not None and source.resolve() != folder.resolve():
        for name in AUX_FILES:
            if (source / name).is_file():
                copy_file(source / name, folder / name)
                copied = copied or name == "tokenizer.json"
    tok = getattr(model, "tokenizer", None)
    if not copied and tok is not None and not (folder / "tokenizer.json").is_file():
        write_text(folder / "tokenizer.json", tok.tokenizer.to_str())
