"""The README is executed: every fenced example of README.md and docs/*.md runs here, so the docs cannot
drift from the code.

- ``python``/``py`` blocks of one document run in order in one namespace (they build on each other;
  selecting one block runs the earlier ones first). ``bash``/``sh``/``shell``/``console`` blocks run with
  the venv's ``bin`` first on ``PATH`` (``attnlab``, ``python`` and ``torchrun`` resolve to the venv, and
  so does ``make``'s ``$(VENV)``), traced, with a timeout. ``yaml`` recipes are validated, not trained.
- All blocks of one document share a fresh working directory holding a copy of ``configs/`` (and the
  ``Makefile``), like a user's checkout; nothing is written into the repository.
- The only changes made to what the docs say are the size substitutions in ``SUBSTITUTIONS`` below
  (fewer steps, smaller models); each is checked to still match, so a stale entry fails.
- A block that must not run carries ``<!-- not-run: reason -->`` on the line right before its fence;
  it is reported as skipped with that reason. Blocks in ``SLOW`` run only with ``-m slow``.
- Nothing may download: Hugging Face libraries are forced offline.
- Beyond the examples: the prose's repository paths and dotted ``attnlab.`` names must exist, and no
  document points outside the repository.

Each block is one test case, ``README.md:L123`` naming the line of its opening fence.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sysconfig
import traceback
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path

import pytest
from doc_blocks import (Block, console_commands, doc_files, extract_blocks, name_resolves, output_pattern, path_exists,
                        prose_references)

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sysconfig.get_path("scripts"))  # the environment running these tests (the project's .venv)


@dataclass(frozen=True)
class Sub:
    where: str  # a document (replaced in its blocks' text) or a file copied into the working directory
    old: str
    new: str
    why: str


# ---------------------------------------------------------------------------------------------------------
# SUBSTITUTIONS: the only differences between what the docs say and what runs here. Size only: the
# commands, arguments, file names and API calls stay as documented. Every entry must match its target.
# ---------------------------------------------------------------------------------------------------------
SUBSTITUTIONS: tuple[Sub, ...] = (
    # configs/char-gpt.yaml is the recipe of the README's Python API, command-line and `make demo` examples
    Sub("configs/char-gpt.yaml", "dim: 256", "dim: 64",
        "3.2M-parameter GPT -> ~0.1M: forward/backward and the full-split `attnlab eval` take seconds"),
    Sub("configs/char-gpt.yaml", "num_layers: 4", "num_layers: 2", "same: a smaller model"),
    Sub("configs/char-gpt.yaml", "steps: 400", "steps: 5",
        "400 steps take ~4 min on 2 cores; 5 steps still train, evaluate, checkpoint and sample"),
    # configs/compare/quick.yaml is run by `make demo(-compare)` and the `attnlab compare` examples
    Sub("configs/compare/quick.yaml", "steps: 600", "steps: 5",
        "base budget of every cell (600 steps x 12 cells = ~7 min on 2 cores)"),
    Sub("configs/compare/quick.yaml", "steps: 1500", "steps: 5", "MQAR cells' own budget"),
    Sub("configs/compare/quick.yaml", "num_train: 20000", "num_train: 256",
        "generating 20,000 MQAR training sequences is wasted on 5 steps"),
    Sub("configs/compare/quick.yaml", "num_test: 1000", "num_test: 64", "a 1,000-sequence test set: same"),
    Sub("configs/compare/quick.yaml", "seeds: [0, 1]", "seeds: [0]", "half the cells; the table and "
        "plots are the same code with one seed"),
    # the encoder-decoder and masked-pretraining recipes the README trains
    Sub("configs/seq2seq-reversal.yaml", "steps: 600", "steps: 20", "600 steps take ~25 s; 20 train, evaluate and "
        "checkpoint"),
    Sub("configs/text2text-sentiment.yaml", "steps: 1500", "steps: 3", "1,500 steps of a 6.8M-parameter model "
        "take ~20 min"),
    Sub("configs/text2text-sentiment.yaml", "name: seq2seq-small", "name: seq2seq-tiny", "same: a smaller model"),
    Sub("configs/mlm-kjv.yaml", "steps: 1000", "steps: 5", "1,000 steps take ~6 min"),
    Sub("configs/finetune-sentiment.yaml", "steps: 600", "steps: 5", "600 steps take ~3 min"),
    # the forecasting recipe the README trains and then evaluates and forecasts from
    Sub("configs/forecast-taylor.yaml", "steps: 1500", "steps: 20", "1,500 steps take ~1 min; 20 train, write the "
        "test table and a checkpoint that `attnlab eval` and `attnlab forecast` read"),
    Sub("configs/forecast-taylor-calendar.yaml", "steps: 1500", "steps: 20", "same, for the TimeXer recipe with "
        "the calendar known over the horizon"),
    Sub("README.md", "train.run_dir=runs/forecast-taylor-it train.steps=300", "train.run_dir=runs/forecast-taylor-it "
        "train.steps=5", "same, for the iTransformer variant"),
    # the distillation recipes the README runs
    Sub("configs/distill/minilm-l3.yaml", "steps: 1500", "steps: 3", "1,500 steps take ~12 min; 3 train, "
        "evaluate, checkpoint and export"),
    Sub("configs/distill/minilm-l3.yaml", "seq_len: 128", "seq_len: 128\n  max_sentences: 300",
        "tokenising 41,855 sentences is wasted on 3 steps"),
    Sub("configs/distill/sparse-l3.yaml", "steps: 1500", "steps: 3", "same"),
    Sub("configs/distill/sparse-l3.yaml", "seq_len: 128", "seq_len: 128\n  max_sentences: 300", "same"),
    Sub("README.md", "train.steps=300            #", "train.steps=20             #",
        "vision example: 300 steps take ~15 s; 20 train, evaluate and draw the confusion matrix"),
    Sub("configs/bytes-filetypes.yaml", "steps: 600", "steps: 5", "600 steps take ~2 min; 5 train and checkpoint"),
    Sub("configs/vision-fashion.yaml", "steps: 6000", "steps: 3", "6,000 steps take ~19 min; 3 train, checkpoint "
        "and leave a run that `attnlab eval` scores on the 10,000 test images"),
    Sub("README.md", "train.steps=300 train.run_dir=runs/vision-digits-na", "train.steps=5 train.run_dir="
        "runs/vision-digits-na", "same, with neighbourhood attention"),
    # README.md: step counts given on the command line or in Python override the (already small) config
    Sub("README.md", "train.steps=300", "train.steps=5", "Python API example: 300 steps take ~3 min"),
    Sub("README.md", "train.steps=500", "train.steps=5", "command-line example: 500 steps take ~5 min"),
    Sub("README.md", "attnlab eval runs/char-gpt ", "attnlab eval runs/char-gpt --max-batches 10 ",
        "the whole validation split is 102 batches: 5 s on a quiet machine, 25 s on a busy one"),
    Sub("README.md", "base.train.steps=100", "base.train.steps=5", "compare example: 100 steps per cell"),
    Sub("README.md", "for step in range(400):", "for step in range(20):",
        "encoder-decoder example: 400 steps take ~15 s; 20 still train, decode and score"),
)

# Blocks that run only with `pytest -m slow` (`make test-slow`): first words of the block -> why.
SLOW: dict[str, str] = {
    "make demo": "30-55 s even at the sizes above (two trainings, a full-split eval, 6 compare cells), and "
                 "every command it runs is also run by the README's command-line and compare blocks",
    "attnlab distill --eval-only": "~40 s: the teacher embeds 6,050 texts for the probe and the Lee pairs, then "
                                   "2,000 twice for its speed; tests/distill runs the same table on a smaller probe",
}

SHELL_TIMEOUT_S = 600  # per shell/console block
PYTHON_TIMEOUT_S = 600  # per Python block (SIGALRM)
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}

DOCS = doc_files(ROOT)
BLOCKS: list[Block] = []
PROBLEMS: list[str] = []
for _doc in DOCS:
    _blocks, _problems = extract_blocks(_doc, ROOT)
    BLOCKS += _blocks
    PROBLEMS += _problems


def substituted(block: Block) -> str:
    code = block.code
    for sub in SUBSTITUTIONS:
        if sub.where == block.doc:
            code = code.replace(sub.old, sub.new)
    return code


def slow_reason(block: Block) -> str | None:
    for start, why in SLOW.items():
        if block.code.lstrip().startswith(start):
            return why
    return None


def _params():
    for block in BLOCKS:
        marks = [pytest.mark.slow] if slow_reason(block) else []
        yield pytest.param(block, id=block.id, marks=marks)


# --- one working directory and one Python namespace per document ----------------------------------------

@dataclass
class Outcome:
    ok: bool
    output: str


@dataclass
class DocSession:
    doc: str
    workdir: Path
    namespace: dict = field(default_factory=dict)
    outcomes: dict[int, Outcome] = field(default_factory=dict)  # block line -> outcome


def make_workdir(path: Path) -> Path:
    """A user's checkout as far as the examples see it: configs/ (size-substituted), Makefile, pyproject.toml."""
    shutil.copytree(ROOT / "configs", path / "configs")
    for sub in SUBSTITUTIONS:
        target = path / sub.where
        if sub.where.startswith("configs/"):
            text = target.read_text(encoding="utf-8")
            target.write_text(text.replace(sub.old, sub.new), encoding="utf-8")
    shutil.copy2(ROOT / "Makefile", path / "Makefile")
    shutil.copy2(ROOT / "pyproject.toml", path / "pyproject.toml")
    # make's install stamp depends on pyproject.toml: an old copy keeps `make demo` from reinstalling the venv
    os.utime(path / "pyproject.toml", (0, 0))
    return path


@pytest.fixture(scope="session")
def sessions(tmp_path_factory):
    """``sessions(doc)``: that document's session, created on first use; its working directory is deleted
    at the end unless one of its blocks failed."""
    made: dict[str, DocSession] = {}

    def get(doc: str) -> DocSession:
        if doc not in made:
            workdir = tmp_path_factory.mktemp(doc.replace("/", "_").replace(".md", ""))
            made[doc] = DocSession(doc, make_workdir(workdir))
        return made[doc]

    yield get
    for session in made.values():  # MiniLM copies are ~90 MB each: keep a working directory only to debug it
        if all(outcome.ok for outcome in session.outcomes.values()):
            shutil.rmtree(session.workdir, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shell_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OFFLINE)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(VENV_BIN.parent)
    env["VENV"] = str(VENV_BIN.parent)  # the Makefile's $(VENV): the installed venv, not a new one
    env["MPLBACKEND"] = "Agg"
    env["PET_MASTER_PORT"] = str(free_port())  # torchrun's --master-port: no clash with other runs
    return env


@contextmanager
def alarm(seconds: int, what: str):
    def on_alarm(signum, frame):
        raise TimeoutError(f"{what} still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def run_python(block: Block, session: DocSession, monkeypatch) -> Outcome:
    code = compile("\n" * block.line + substituted(block), str(ROOT / block.doc), "exec")
    buf = StringIO()
    with monkeypatch.context() as mp:
        mp.chdir(session.workdir)
        for key, value in {**OFFLINE, "MPLBACKEND": "Agg"}.items():
            mp.setenv(key, value)
        mp.setenv("PATH", f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
        try:
            with alarm(PYTHON_TIMEOUT_S, block.id), redirect_stdout(buf), redirect_stderr(buf):
                exec(code, session.namespace)
            ok = True
        except (Exception, SystemExit):  # noqa: BLE001 - reported with its traceback (Ctrl-C still stops pytest)
            buf.write(traceback.format_exc())
            ok = False
    return Outcome(ok, buf.getvalue())


def _run_bash(script: str, session: DocSession, timeout: float) -> tuple[int, str]:
    proc = subprocess.Popen(["bash", "-c", script], cwd=session.workdir, env=shell_env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the block's own process group (torchrun workers, make children)
        out, _ = proc.communicate()
        return -1, out + f"\n[timed out after {timeout:.0f} s]"
    return proc.returncode, out


def run_shell(block: Block, session: DocSession) -> Outcome:
    rc, out = _run_bash("set -eo pipefail\nPS4='+ [${SECONDS}s] '\nset -x\n" + substituted(block), session,
                        SHELL_TIMEOUT_S)
    return Outcome(rc == 0, out + f"\n[exit status {rc}]")


def run_console(block: Block, session: DocSession) -> Outcome:
    """Run the ``$`` commands; each shown output line must appear (in order) in what they print. A command
    may exit non-zero only when the block shows output (an error message is the point of the example)."""
    commands, expected = console_commands(substituted(block))
    outputs, failed = [], []
    for command in commands:
        rc, out = _run_bash(command, session, SHELL_TIMEOUT_S)
        outputs.append(f"$ {command}\n{out}[exit status {rc}]\n")
        if rc != 0:
            failed.append(command)
    text = "".join(outputs)
    problems = [f"command failed and the block shows no output: {c}" for c in failed if not expected]
    pos = 0
    for line in expected:
        m = output_pattern(line).search(text, pos)
        if m is None:
            problems.append(f"shown output not printed (in this order): {line!r}")
        else:
            pos = m.end()
    return Outcome(not problems, text + "".join(f"\n{p}" for p in problems))


def run_yaml(block: Block, session: DocSession) -> Outcome:
    """A recipe must load and validate (``attnlab.config.load_config``); it is not trained."""
    from attnlab.config import load_config

    path = session.workdir / f"recipe_L{block.line}.yaml"
    path.write_text(substituted(block), encoding="utf-8")
    try:
        cfg = load_config(path)
        return Outcome(True, repr(cfg))
    except Exception:  # noqa: BLE001
        return Outcome(False, traceback.format_exc())


def run_block(block: Block, session: DocSession, monkeypatch) -> Outcome:
    if block.kind == "python":
        return run_python(block, session, monkeypatch)
    if block.kind == "shell":
        return run_shell(block, session)
    if block.kind == "console":
        return run_console(block, session)
    return run_yaml(block, session)


# --- the tests ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("block", list(_params()))
def test_example(block: Block, sessions, monkeypatch):
    if block.not_run:
        pytest.skip(f"not-run: {block.not_run}")
    if block.kind in ("shell", "console") and re.search(r"(^|[\s;&|])make\b", block.code) \
            and not (VENV_BIN.parent / ".attnlab-installed").is_file():
        pytest.skip("this venv was not made by `make install` (no .attnlab-installed stamp): `make` would "
                    "install into it from the test's temporary copy of the repository")
    session = sessions(block.doc)
    # a Python block continues the document's earlier Python blocks (their variables): those run first,
    # once each, even when only this block was selected; shell blocks are self-contained
    earlier_failed = []
    for prev in BLOCKS:
        if block.kind != "python" or prev.kind != "python" or prev.doc != block.doc or prev.line >= block.line:
            continue
        if prev.not_run or slow_reason(prev):
            continue
        if prev.line not in session.outcomes:
            session.outcomes[prev.line] = run_block(prev, session, monkeypatch)
        if not session.outcomes[prev.line].ok:
            earlier_failed.append(prev.id)
    if block.line not in session.outcomes:
        session.outcomes[block.line] = run_block(block, session, monkeypatch)
    outcome = session.outcomes[block.line]
    print(outcome.output)
    if not outcome.ok:
        note = f" (earlier blocks of this file failed: {', '.join(earlier_failed)})" if earlier_failed else ""
        lines = outcome.output.rstrip().splitlines()
        traced = [line for line in lines if line.startswith("+ ") or line.startswith("$ ")]
        where = f"\nlast command: {traced[-1][2:]}" if traced else ""
        tail = "\n".join(lines[-40:])
        pytest.fail(f"{block.id} ({block.lang}) failed{note} in {session.workdir}{where}\n{tail}", pytrace=False)


def test_blocks_found():
    """The collector sees the README's examples (a broken fence parser would silently test nothing)."""
    readme = [b for b in BLOCKS if b.doc == "README.md"]
    assert {"python", "shell"} <= {b.kind for b in readme}, [b.id for b in readme]


def test_markers_well_formed():
    """Every `<!-- not-run: reason -->` sits right before a runnable fence and gives a reason; fences close."""
    assert not PROBLEMS, "\n".join(PROBLEMS)


def test_substitutions_still_match():
    """A substitution that no longer matches its document or config file is stale: update the table."""
    stale = []
    for sub in SUBSTITUTIONS:
        if sub.where.startswith("configs/"):
            hits = (ROOT / sub.where).read_text(encoding="utf-8").count(sub.old)
        else:
            hits = sum(b.code.count(sub.old) for b in BLOCKS if b.doc == sub.where and not b.not_run)
        if hits == 0:
            stale.append(f"{sub.where}: {sub.old!r} -> {sub.new!r}")
        assert sub.why.strip(), f"substitution {sub.old!r} needs a reason"
    for start in SLOW:
        if not any(b.code.lstrip().startswith(start) for b in BLOCKS):
            stale.append(f"SLOW: no block starts with {start!r}")
    assert not stale, "entries that match nothing:\n" + "\n".join(stale)


@pytest.mark.parametrize("doc", DOCS, ids=[d.relative_to(ROOT).as_posix() for d in DOCS])
def test_prose_references_exist(doc: Path):
    """Paths the text names (`attnlab/train/trainer.py`, `configs/...`, links into docs/) exist, and dotted
    names (`attnlab.native.native_status`) resolve: a moved module or file shows up here, not in a user's shell."""
    missing = []
    for line, kind, text in prose_references(doc):
        ok = path_exists(text, doc, ROOT) if kind == "path" else name_resolves(text)
        if not ok:
            missing.append(f"{doc.relative_to(ROOT).as_posix()}:L{line}: {kind} {text}")
    assert not missing, "\n".join(missing)
