"""The package layering stated in docs/design.md, checked on every import statement of src/attnlab.

Walks each module's syntax tree (imports inside functions count too) and fails on:
- a package importing a package of a higher layer (or another package of its own layer);
- an attention kernel module importing another kernel module, or anything but the attention contract
  and the engines; an engine importing a kernel; a contract module importing a kernel or an engine
  (the registry's lazy loading of the built-in kernels and the package ``__init__`` excepted);
- a model family folder importing another family; a data modality folder importing another modality.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "attnlab"

# Lower layers never import higher ones; two packages of one layer do not import each other.
LAYERS: dict[str, int] = {
    "core": 0,
    "native": 1,
    "layers": 2, "data": 2, "viz": 2,
    "attention": 3,
    "models": 4,
    "objectives": 5, "interop": 5,
    "infer": 6, "config": 6, "config_reference": 7,
    "train": 7,
    "compare": 8, "distill": 8, "explain": 8,
    "catalogue": 9, "cli": 9,
    "__init__": 10,
}
ATTENTION_CONTRACT = {"base", "cache", "capabilities", "context", "masks", "reference", "registry", "shell", "stack"}
MODEL_SHARED = {"config", "registry", "transformer", "heads", "pooling", "probe", "__init__"}
DATA_SHARED = {"base", "registry", "sources", "__init__"}


def module_name(path: Path, root: Path = SRC) -> tuple[str, ...]:
    """``src/attnlab/attention/kernels/axial.py`` -> ``("attention", "kernels", "axial")``."""
    parts = path.relative_to(root).with_suffix("").parts
    return parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts


def imported_modules(path: Path, root: Path = SRC) -> list[tuple[str, ...]]:
    """Every attnlab module ``path`` imports, as a tuple of names below ``attnlab``."""
    own = module_name(path, root)
    package = own if path.name == "__init__.py" else own[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [tuple(a.name.split(".")[1:]) for a in node.names if a.name.split(".")[0] == "attnlab"]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                if (node.module or "").split(".")[0] != "attnlab":
                    continue
                base = tuple(node.module.split(".")[1:])
            else:
                base = package[: len(package) - (node.level - 1)] + tuple((node.module or "").split(".") if node.module else ())
            # `from . import kernels` names a module: count each imported name as a submodule when it is one
            subs = [base + (a.name,) for a in node.names if (root.joinpath(*base, a.name)).exists()
                    or root.joinpath(*base, a.name + ".py").exists()]
            found += subs or [base]
    return [m for m in found if m]


def top(mod: tuple[str, ...]) -> str:
    return mod[0] if mod else "__init__"


def violations(root: Path = SRC) -> list[str]:
    """One line per import that breaks the layering, for every module below ``root``."""
    out = []
    for path in sorted(root.rglob("*.py")):
        me = module_name(path, root)
        mine = top(me) if path != root / "__init__.py" else "__init__"
        for dep in imported_modules(path, root):
            theirs = top(dep)
            if theirs != mine and LAYERS[theirs] >= LAYERS[mine]:
                out.append(f"{'.'.join(me)} (layer {LAYERS[mine]}) imports {'.'.join(dep)} (layer {LAYERS[theirs]})")
            if mine == theirs == "attention":
                out += _attention_rule(path, me, dep)
            if mine == theirs and mine in ("models", "data") and len(me) > 2 and len(dep) > 1:
                shared = MODEL_SHARED if mine == "models" else DATA_SHARED
                if dep[1] not in shared and dep[1] != me[1]:
                    out.append(f"{'.'.join(me)}: a {mine} folder imports another one ({'.'.join(dep)})")
    return out


def _attention_rule(path: Path, me: tuple[str, ...], dep: tuple[str, ...]) -> list[str]:
    where = me[1] if len(me) > 1 else "__init__"
    target = dep[1] if len(dep) > 1 else "__init__"
    name, to = ".".join(me), ".".join(dep)
    if where == "kernels" and len(me) > 2:
        if target == "kernels" or (target not in ATTENTION_CONTRACT and target != "engines"):
            return [f"kernel {name} imports {to}: kernels import only the contract and the engines"]
    elif where == "engines" and len(me) > 2:
        if target == "kernels" or (target not in ATTENTION_CONTRACT and target != "engines"):
            return [f"engine {name} imports {to}: engines import only the contract and other engines"]
    elif where in ATTENTION_CONTRACT and target in ("kernels", "engines") and where != "registry":
        return [f"contract module {name} imports {to}"]
    return []


def test_every_package_has_a_layer():
    packages = {top(module_name(p)) for p in SRC.rglob("*.py")} - {"__init__"}
    assert packages <= set(LAYERS), f"give these a layer in LAYERS and docs/design.md: {packages - set(LAYERS)}"


def test_no_import_crosses_the_layering():
    assert violations() == []


def test_the_walker_sees_a_violation(tmp_path):
    """The check itself: a kernel importing another kernel, and a lower layer importing a higher one, are found."""
    root = tmp_path / "attnlab"
    (root / "attention" / "kernels").mkdir(parents=True)
    (root / "layers").mkdir()
    for f in ("__init__.py", "attention/__init__.py", "attention/kernels/__init__.py", "layers/__init__.py"):
        (root / f).write_text("")
    (root / "attention" / "kernels" / "a.py").write_text("from .b import x\nfrom ..base import y\n")
    (root / "attention" / "kernels" / "b.py").write_text("x = 1\n")
    (root / "attention" / "base.py").write_text("y = 1\n")
    (root / "layers" / "mlp.py").write_text("def f():\n    from ..attention.base import y\n")
    found = violations(root)
    assert any("kernel attention.kernels.a imports attention.kernels.b" in v for v in found), found
    assert any("layers.mlp (layer 2) imports attention.base (layer 3)" in v for v in found), found
    assert not any("attention.base" in v and "kernels.a" in v for v in found), found


@pytest.mark.parametrize("package", ["attention/kernels", "attention/engines"])
def test_attention_subpackages_exist(package):
    assert (SRC / package / "__init__.py").exists()
