"""Every numeric option of every subcommand is checked while parsing: out of range, NaN, infinity or text is one
line on stderr and exit code 2, before anything loads. The options come from the parser itself, so an option
added later is covered without touching this file."""

from __future__ import annotations

import argparse
import math
import re
import subprocess
import sys

import pytest

from attnlab.cli import build_parser
from attnlab.cli.numbers import Number, finite_float, non_negative_int, positive_int, probability

PROBES = ["0", "-1", "nan", "inf", "abc"]


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    return dict(build_parser()._subparsers._group_actions[0].choices)


def _typed_options() -> list[tuple[str, str]]:
    """``(subcommand, option)`` for every option listed in ``--help`` that takes a typed value."""
    return [(name, action.option_strings[-1]) for name, sub in _subparsers().items() for action in sub._actions
            if action.option_strings and action.type is not None and action.help != argparse.SUPPRESS]


def _action(sub: argparse.ArgumentParser, option: str) -> argparse.Action:
    return next(a for a in sub._actions if option in a.option_strings)


def _required(sub: argparse.ArgumentParser) -> list[str]:
    """Placeholder values for the positionals and required options (parsing only; nothing runs)."""
    argv = []
    for a in sub._actions:
        value = str(a.choices[0]) if a.choices else "X"
        if not a.option_strings and a.nargs is None:
            argv.append(value)
        elif a.option_strings and a.required:
            argv += [a.option_strings[-1], value]
    return argv


def _expected(kind: Number, text: str) -> float | None:
    """The value ``text`` must parse to under the option's declared bounds, or ``None`` if it must be refused."""
    try:
        value = kind.kind(text)
    except ValueError:
        return None
    if not math.isfinite(value):
        return None
    if kind.min is not None and (value < kind.min or (kind.min_open and value == kind.min)):
        return None
    if kind.max is not None and (value > kind.max or (kind.max_open and value == kind.max)):
        return None
    return value


def test_the_numeric_options_are_found():
    options = set(_typed_options())
    assert {("eval", "--max-batches"), ("eval", "--batch-size"), ("generate", "--temperature"),
            ("generate", "--num-samples"), ("generate", "--top-k"), ("generate", "--top-p"),
            ("embed", "--batch-size"), ("embed", "--workers"), ("compare", "--samples")} <= options


@pytest.mark.parametrize("command, option", _typed_options())
def test_every_numeric_option_checks_its_range(command, option, capsys):
    sub = _subparsers()[command]
    action = _action(sub, option)
    assert isinstance(action.type, Number), f"{command} {option}: use a type from attnlab.cli.numbers"
    assert option in sub.format_help()
    for text in PROBES:
        parser = build_parser()
        argv = [command, *_required(sub), option, text]
        expected = _expected(action.type, text)
        if expected is not None:  # a valid value (0 for a count that may be 0, -1 for a seed) is accepted
            args, _ = parser.parse_known_args(argv)
            assert getattr(args, action.dest) == expected, (argv, text)
            continue
        with pytest.raises(SystemExit) as exit_:
            parser.parse_known_args(argv)
        err = capsys.readouterr().err
        assert exit_.value.code == 2, argv
        assert err.count("\n") == 1 and err.startswith(f"attnlab {command}: error: argument {option}"), err
        assert f"got {text!r}" in err and "Traceback" not in err


@pytest.mark.parametrize("kind, text, message", [
    (positive_int, "0", "expected an integer >= 1, got '0'"),
    (non_negative_int, "-1", "expected an integer >= 0, got '-1'"),
    (finite_float(min=0), "nan", "expected a finite number >= 0, got 'nan'"),
    (finite_float(min=0), "1e999", "expected a finite number >= 0, got '1e999'"),
    (probability, "0", "expected a finite number in (0, 1], got '0'"),
    (probability, "1.5", "expected a finite number in (0, 1], got '1.5'"),
    (finite_float(max=2, max_open=True), "2", "expected a finite number < 2, got '2'"),
])
def test_messages_say_what_is_accepted(kind, text, message):
    with pytest.raises(argparse.ArgumentTypeError, match=f"^{re.escape(message)}$"):
        kind(text)
    assert probability("1") == 1.0 and positive_int(" 3 ") == 3 and non_negative_int("0") == 0


@pytest.mark.parametrize("argv, fragment", [
    (["eval", "RUN", "--max-batches", "-1"], "argument --max-batches: expected an integer >= 1, got '-1'"),
    (["generate", "RUN", "--num-samples", "0"], "argument --num-samples: expected an integer >= 1, got '0'"),
])
def test_the_program_prints_one_line_and_exits_2(argv, fragment):
    proc = subprocess.run([sys.executable, "-m", "attnlab.cli", *argv], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and fragment in proc.stderr, proc.stderr
