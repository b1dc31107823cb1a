"""The configuration reference page (``docs/config.md``), generated from the pydantic models of
:mod:`attnlab.config` by ``python -m attnlab.config_reference docs/config.md`` (``make docs``)."""

from __future__ import annotations

import sys

from pydantic import BaseModel

from .core.io import write_text
from .config import RESUMABLE_CHANGES, SECTIONS, RunConfig, _model_type, _type_name

SECTION_TITLES = {
    "model": "the network (`attnlab.models.ModelConfig` plus the preset `name`)",
    "data": "where tokens come from and how batches are cut",
    "objective": "what the model is trained to do (`attnlab list objectives`)",
    "train": "optimisation, evaluation, checkpoints, run directory",
}


def config_reference() -> str:
    """Markdown reference of every section and key, generated from the pydantic models."""
    out = ["# Configuration reference", "",
           "Generated from the models of `src/attnlab/config.py` by `python -m attnlab.config_reference docs/config.md` (`make docs`); "
           "do not edit by hand.", "",
           "A recipe (`configs/*.yaml`) has four sections. Override any key on the command line with",
           "`section.key=value`, e.g. `attnlab train configs/char-gpt.yaml model.attention=softmax train.lr=3e-4`.",
           "Values are YAML: `3e-4`, `true`, `null`, `[softmax, softmax]`, `{window: 64}`.",
           "Unknown keys and wrong types are errors that name the closest valid key or the expected type.",
           "The `objective` section was called `task` before; a `task` section or `task.key=value` override is",
           "still read as `objective`.", "",
           "The `model` section starts from the preset `model.name` (`attnlab list models`): keys you set replace",
           "the preset's values, and the defaults below apply only to keys the preset does not set.", "",
           "**Resuming** (`attnlab train RUN --resume`) compares the config with the one the newest checkpoint was",
           "trained with (stored in the checkpoint, so an edited `config.yaml` does not slip through) and refuses any",
           "difference, listing each changed key as `old -> new`. " + ", ".join(f"`train.{k}`" for k in
                                                                                 sorted(RESUMABLE_CHANGES)),
           "may always change; the keys `train.allow_changes` names may change too, e.g.",
           "`attnlab train RUN --resume train.lr=3e-4 'train.allow_changes=[train.lr]'` (the new value applies from the",
           "resumed step on). The allowance holds for that resume only: `config.yaml` is saved without it. The tokenizer",
           "must be the one the checkpoint was trained with.", ""]
    for section in SECTIONS:
        out += section_reference(section, _model_type(RunConfig.model_fields[section].annotation),
                                 SECTION_TITLES[section])
    return "\n".join(out)


def section_reference(section: str, cls: type[BaseModel], title: str) -> list[str]:
    """The Markdown lines of one config section: a heading and a table of its keys."""
    fields = dict(cls.model_fields)
    if "name" in fields:  # the preset name first
        fields = {"name": fields.pop("name"), **fields}
    out = [f"## `{section}` — {title}", "", "| key | type | default | description |", "|---|---|---|---|"]
    for name, f in fields.items():
        default = f.default_factory() if f.default_factory is not None else f.default
        desc = (f.description or "").replace("|", "\\|")
        out.append(f"| `{section}.{name}` | {_type_name(f.annotation).replace('|', 'or')} | `{default!r}` | {desc} |")
    return out + [""]


if __name__ == "__main__":
    if len(sys.argv) > 1:
        write_text(sys.argv[1], config_reference())
    else:
        print(config_reference())
