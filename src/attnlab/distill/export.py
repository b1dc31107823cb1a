"""A distilled student as a folder that existing tools load: a Hugging Face BERT folder (``config.json``,
``model.safetensors``, the teacher's tokenizer files) plus the sentence-transformers modules (Transformer -> mean
Pooling -> Normalize), so ``SentenceTransformer(folder)`` and ``attnlab.embed(texts, model=folder)`` give the same
vectors."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ..core.io import write_json, write_text
from ..interop.pretrained import save_pretrained

MODULES = [
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
]


def export_student(student: nn.Module, folder: str | Path, *, teacher: str = "", losses: dict | None = None) -> Path:
    """Write ``student`` (an encoder with the teacher's tokenizer) to ``folder`` and return it.

    A student whose kernel is not softmax is saved with that kernel recorded in ``config.json``: attnlab restores it
    when loading, while transformers (and so sentence-transformers) would run softmax attention on its weights — the
    folder's README says so.

    Raises:
        ValueError: a student Hugging Face BERT cannot express (pre-norm, RoPE, ...: the fields are named), or a
            kernel with parameters of its own.
        OSError: the folder cannot be written.
    """
    kernels = sorted({b.attn.kernel.name for b in student.blocks})
    softmax = kernels == ["softmax"]
    folder = save_pretrained(student, folder, allow_attention_change=not softmax)
    cfg = student.cfg
    write_json(folder / "modules.json", MODULES)
    write_json(folder / "sentence_bert_config.json",
               {"max_seq_length": student.tokenizer.max_length, "do_lower_case": False})
    write_json(folder / "1_Pooling" / "config.json", {
        "word_embedding_dimension": cfg.dim, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False})
    (folder / "2_Normalize").mkdir(exist_ok=True)
    write_text(folder / "README.md", _readme(cfg, kernels, softmax, teacher, losses or {}))
    return folder


def _readme(cfg, kernels: list[str], softmax: bool, teacher: str, losses: dict) -> str:
    how = ", ".join(f"{k} x {w:g}" for k, w in losses.items()) or "none (initialisation only)"
    text = [f"# Distilled sentence encoder ({cfg.num_layers} layers x {cfg.dim}, {cfg.num_heads} heads)", "",
            f"Distilled by `attnlab distill` from `{teacher}` with the losses: {how}.", "",
            "Mean pooling over the tokens, then L2 normalisation (the sentence-transformers modules in this folder).", ""]
    if softmax:
        text += ["```python", "from sentence_transformers import SentenceTransformer", "",
                 "model = SentenceTransformer('path/to/this/folder')", "model.encode(['a sentence'])", "```", "",
                 "or `attnlab.embed(['a sentence'], model='path/to/this/folder')`.", ""]
    else:
        text += [f"**Attention: {', '.join(kernels)}.** transformers and sentence-transformers run softmax attention "
                 "only: loading this folder with them would run its weights with softmax and give other vectors. Use "
                 "attnlab, which restores the kernel recorded in `config.json` (`attnlab_attention`):", "",
                 "```python", "import attnlab", "", "attnlab.embed(['a sentence'], model='path/to/this/folder')",
                 "```", ""]
    return "\n".join(text)
