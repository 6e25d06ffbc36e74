"""Every numeric flag of every command is finite and in range, refused while parsing.

The flags are found by introspecting the real parsers (cli.build_parser), not listed by hand:
a flag added tomorrow with `type=int` fails test_every_numeric_flag_uses_a_flags_type, and one
with a flags type gets its NaN / inf / out-of-range values tried here automatically.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from mobilebert_paddle import cli
from mobilebert_paddle.core import flags


def command_parser(name: str) -> argparse.ArgumentParser:
    parser = cli.build_parser(name)
    subparsers = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    return subparsers.choices[name]


def numeric_flags() -> list[tuple[str, argparse.Action]]:
    found = []
    for name in cli.COMMANDS:
        for action in command_parser(name)._actions:
            if action.option_strings and getattr(action.type, "bounds", None) is not None:
                found.append((name, action))
    return found


def bad_values(action: argparse.Action) -> list[str]:
    """NaN, infinities, a word, and a value just beyond each bound."""
    bounds = action.type.bounds
    is_integer = action.type.__name__ in ("an integer", "integers")
    values = ["nan", "inf", "-inf", "many"] + (["1.5"] if is_integer else [])
    step = 1 if is_integer else 1e-9
    if bounds["minimum"] is not None:
        values.append(str(bounds["minimum"] - step if is_integer else bounds["minimum"] - max(1e-6, abs(bounds["minimum"]) * 1e-3)))
    if bounds["maximum"] is not None:
        values.append(str(bounds["maximum"] + step if is_integer else bounds["maximum"] * 1.001 + 1e-6))
    for name in ("above", "below"):
        if bounds[name] is not None:
            values.append(str(bounds[name]))
    return values


def minimal_argv(name: str, output: str) -> list[str]:
    """The command with its required arguments filled in (values that parse; nothing runs)."""
    argv = [name]
    for action in command_parser(name)._actions:
        if not action.option_strings and action.dest not in ("help",):
            argv.append(action.choices[0] if action.choices else "x")
        elif action.required:
            argv += [action.option_strings[0], output if action.dest == "output" else "x"]
    return argv


CASES = [pytest.param(name, action.option_strings[0], value, id=f"{name}{action.option_strings[0]}={value}")
         for name, action in numeric_flags() for value in bad_values(action)]


def test_every_numeric_flag_uses_a_flags_type():
    plain = [f"{name} {action.option_strings[0]}" for name in cli.COMMANDS for action in command_parser(name)._actions
             if action.type in (int, float)]
    assert plain == []
    commands = {name for name, _ in numeric_flags()}
    assert commands >= {"quickstart", "finetune", "evaluate", "predict", "export", "bench", "compare", "squad-eval"}


def test_every_default_is_in_range():
    for name, action in numeric_flags():
        if action.default is not None and not isinstance(action.default, str):
            assert action.type(str(action.default)) == action.default, (name, action.option_strings[0])


def test_gradient_clipping_defaults_follow_each_recipe():
    """Google clips at a global norm of 1.0 in pretraining and distillation (optimization.py);
    the fine-tuning recipe (MobileBert_paddle's) did not clip."""
    defaults = {name: next(action.default for action in command_parser(name)._actions
                           if action.dest == "max_grad_norm") for name in ("pretrain", "distill", "finetune")}
    assert defaults == {"pretrain": 1.0, "distill": 1.0, "finetune": 0.0}


@pytest.mark.parametrize("name, flag, value", CASES)
def test_bad_numeric_value_is_one_line_before_anything_runs(name, flag, value, tmp_path, capsys):
    output = tmp_path / "out"
    with pytest.raises(SystemExit) as stop:
        cli.main([*minimal_argv(name, str(output)), f"{flag}={value}"])
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert stop.value.code == 2 and captured.out == ""
    assert len(lines) == 1 and lines[0].startswith(f"mobilebert {name}: error: argument {flag}: must be "), captured.err
    assert not output.exists()


@pytest.mark.parametrize("text, expected", [("1e-3", 1e-3), ("0", 0.0), ("-2.5", -2.5)])
def test_number_accepts_finite_values(text, expected):
    assert flags.number()(text) == expected


def test_bounds_are_inclusive_or_exclusive_as_named():
    beta = flags.number(minimum=0, below=1)
    assert beta("0") == 0.0 and beta("0.999") == 0.999
    with pytest.raises(argparse.ArgumentTypeError, match=r"must be a finite number >= 0 and < 1, got 1"):
        beta("1")
    assert flags.integers(minimum=1)("1, 8,") == [1, 8]
    with pytest.raises(argparse.ArgumentTypeError):
        flags.integers(minimum=1)(",")
    assert flags.seed()(str(flags.SEED_MAX)) == flags.SEED_MAX
    assert math.isfinite(flags.number(above=0)("1e300"))


@pytest.mark.slow
def test_through_the_real_cli_each_command_refuses_nan_in_one_line(tmp_path):
    """One subprocess per command (the user's environment): exit 2, one stderr line, nothing written."""
    first_flag = {}
    for name, action in numeric_flags():
        first_flag.setdefault(name, action.option_strings[0])

    def run(name: str) -> subprocess.CompletedProcess:
        argv = [*minimal_argv(name, str(tmp_path / name)), first_flag[name], "nan"]
        return subprocess.run([sys.executable, "-m", "mobilebert_paddle", *argv], capture_output=True, text=True,
                              timeout=120, cwd=tmp_path)

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = dict(zip(first_flag, pool.map(run, first_flag)))
    for name, completed in results.items():
        lines = completed.stderr.splitlines()
        assert completed.returncode == 2 and completed.stdout == "", (name, completed.stderr)
        assert len(lines) == 1 and f"argument {first_flag[name]}: must be" in lines[0], (name, completed.stderr)
        assert not (tmp_path / name).exists()
