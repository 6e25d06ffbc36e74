"""Faults during a run, through the real CLI (subprocesses): one line each, nothing lost.

Classes covered: a second run on a locked run dir; SIGTERM; --resume with changed flags; a
damaged last/; a full disk (RLIMIT_FSIZE makes every write past a size fail with EFBIG, as a
full disk fails with ENOSPC) for checkpoints, exports and evaluations; file modes of what a
run writes; log lines held back when the error follows them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from tiny_tasks import make_tiny_model_dir, model_weights, subprocess_env, write_colour_pairs, write_marker_squad

from mobilebert_paddle import cli
from mobilebert_paddle.core import errors
from mobilebert_paddle.training import checkpoint as train

# Every case through the real CLI in a subprocess: the slow tier.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("runs")
    base = make_tiny_model_dir(root / "base", attention_probs_dropout_prob=0.1)   # dropout: the RNG state matters
    return {"root": root, "base": base, "train": write_colour_pairs(root / "train.tsv", 256, 1),
            "dev": write_colour_pairs(root / "dev.tsv", 32, 2), "squad": write_marker_squad(root / "squad.json", 6, 0)}


def finetune_argv(inputs: dict, output: Path, *extra) -> list[str]:
    return ["finetune", "rte", "--model", inputs["base"], "--train", inputs["train"], "--dev", inputs["dev"],
            "--output", output, "--max-seq-length", 16, "--batch-size", 16, "--max-steps", 24, "--learning-rate",
            1e-3, "--save-steps", 4, "--eval-steps", 12, "--logging-steps", 2, "--device", "cpu", *extra]


def limited_file_size(limit: int):
    """preexec_fn: writes past `limit` bytes fail with EFBIG instead of killing the process."""
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def run_cli(argv, env=None, **options) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mobilebert_paddle", *map(str, argv)], capture_output=True,
                          text=True, env=env or subprocess_env(), timeout=300, **options)


# The real CLI with a second's pause in each training step (the numbers are unchanged), so that
# other commands can be tried while it runs.
SLOW_STEPS = (
    "import sys, time\n"
    "from mobilebert_paddle import cli\n"
    "from mobilebert_paddle.training import trainer\n"
    "step = trainer.Trainer.train_step\n"
    "trainer.Trainer.train_step = lambda self, *args: (time.sleep(1.0), step(self, *args))[1]\n"
    "raise SystemExit(cli.main(sys.argv[1:]))\n")


def start_slow_cli(argv) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", SLOW_STEPS, *map(str, argv)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=subprocess_env())


def user_environment() -> dict:
    """As a user runs it: Paddle's thread advice and Python warnings are not silenced."""
    return {key: value for key, value in os.environ.items() if key not in ("OMP_NUM_THREADS", "PYTHONWARNINGS")}


def snapshot(path: Path) -> dict:
    """{relative path: sha256 or 'dir'} of everything under `path` (hidden entries included)."""
    return {str(item.relative_to(path)): "dir" if item.is_dir() else hashlib.sha256(item.read_bytes()).hexdigest()
            for item in sorted(path.rglob("*"))}


def assert_one_line_error(completed: subprocess.CompletedProcess, command: str, *fragments: str,
                          only_line: bool = True) -> str:
    """Exit 2, no traceback, and the error as one line (the only stderr line for a refused input;
    the last one for a fault in the middle of a run, after the run's own log)."""
    lines = completed.stderr.splitlines()
    assert completed.returncode == 2 and "Traceback" not in completed.stderr, completed.stderr[-3000:]
    assert completed.stdout == ""
    if only_line:
        assert len(lines) == 1, completed.stderr
    assert lines[-1].startswith(f"mobilebert {command}: error: "), completed.stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]
    return lines[-1]


def wait_for(path: Path, process: subprocess.Popen, seconds: float = 240) -> None:
    deadline = time.time() + seconds
    while not path.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert path.exists(), process.stderr.read() if process.poll() is not None else f"no {path} after {seconds} s"


@pytest.fixture(scope="module")
def reference(inputs) -> Path:
    """The 24-step run, uninterrupted."""
    run = inputs["root"] / "reference"
    completed = run_cli(finetune_argv(inputs, run))
    assert completed.returncode == 0, completed.stderr[-3000:]
    return run


def assert_same_run(run: Path, reference: Path) -> None:
    resumed, uninterrupted = model_weights(run / "last"), model_weights(reference / "last")
    assert all(np.array_equal(resumed[key], uninterrupted[key]) for key in uninterrupted)       # bit-identical
    lines = [(run / "metrics.jsonl").read_text().splitlines(), (reference / "metrics.jsonl").read_text().splitlines()]
    assert [json.loads(line) for line in lines[0]] == [json.loads(line) for line in lines[1]]


# --------------------------------------------------------------------------------------------
# One run per run dir; SIGTERM
# --------------------------------------------------------------------------------------------

def test_second_run_on_a_busy_run_dir_is_refused_and_sigterm_says_where_it_stopped(inputs, reference):
    run = inputs["root"] / "busy"
    first = start_slow_cli(finetune_argv(inputs, run))
    wait_for(run / "last" / train.CHECKPOINT_STATE, first)
    with ThreadPoolExecutor(max_workers=2) as pool:
        seconds = list(pool.map(lambda flag: run_cli(finetune_argv(inputs, run, flag), env=user_environment()),
                                ("--overwrite", "--resume")))
    assert first.poll() is None, "the first run ended before the others were tried: slow it down more"
    for second in seconds:
        assert_one_line_error(second, "finetune", f"{run}: run directory in use by process {first.pid}")
    first.send_signal(signal.SIGTERM)
    _, stderr = first.communicate(timeout=120)
    assert first.returncode == 143, stderr[-3000:]
    assert "Traceback" not in stderr
    last_line = stderr.splitlines()[-1]
    held = json.loads((run / "last" / train.CHECKPOINT_STATE).read_text())["state"]["step"]
    assert last_line.startswith("mobilebert finetune: interrupted by SIGTERM at step "), stderr[-3000:]
    assert last_line.endswith(f"; last/ holds step {held}: --resume continues"), last_line
    assert not list(run.glob(".*.tmp")) and not list(run.glob("*.old"))
    resumed = run_cli(finetune_argv(inputs, run, "--resume"))          # the lock died with the first run
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads(resumed.stdout)["resumed_from_step"] == held
    assert_same_run(run, reference)


# --------------------------------------------------------------------------------------------
# --resume must continue the same run
# --------------------------------------------------------------------------------------------

def test_resume_with_changed_flags_is_refused_naming_each(inputs, reference):
    before = snapshot(reference)
    completed = run_cli(finetune_argv(inputs, reference, "--resume", "--learning-rate", 2e-3, "--max-seq-length", 20,
                                      "--eval-steps", 6), env=user_environment())
    assert_one_line_error(completed, "finetune", "cannot resume with a changed run",
                          "--learning-rate was 0.001, now 0.002", "--max-seq-length was 16, now 20")
    assert "--eval-steps" not in completed.stderr.split("(")[0]       # may change on resume
    assert snapshot(reference) == before


def finetune_flags() -> list[argparse.Action]:
    parser = cli.build_parser("finetune")
    subparsers = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    return [action for action in subparsers.choices["finetune"]._actions if action.option_strings
            and action.dest != "help"]


def changed_value(action: argparse.Action, value):
    if action.choices:
        return next(choice for choice in action.choices if choice != value)
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1 if value < 0.5 else value / 2
    return None if value is not None else 1


@pytest.mark.parametrize("action", finetune_flags(), ids=lambda action: action.option_strings[0])
def test_every_flag_either_may_change_on_resume_or_is_named_when_changed(action):
    """By class: any finetune flag (today's and tomorrow's) is in RESUMABLE_FLAGS or refused by name."""
    config = cli.parse_command_args("finetune", ["rte", "--model", "m", "--output", "o", "--min-lr", "1e-6",
                                                 "--decay-ratio", "0.9", "--eval-steps", "0"])
    identity = {"task": "rte", "train_rows": 8, "total_steps": 3, "steps_per_epoch": 1}
    saved = {**identity, "flags": train.run_flags(config)}
    setattr(config, action.dest, changed_value(action, getattr(config, action.dest)))
    if action.dest in train.RESUMABLE_FLAGS:
        train.check_same_run(saved, {**identity, "flags": train.run_flags(config)}, Path("run/last"))
        assert action.dest.replace("_", "-") in train.RESUMABLE_HELP or action.dest in ("resume", "overwrite", "output",
                                                                                          "model", "train", "dev",
                                                                                          "data_dir", "data")
    else:
        with pytest.raises(errors.UserInputError, match=f"--{action.dest.replace('_', '-')} was "):
            train.check_same_run(saved, {**identity, "flags": train.run_flags(config)}, Path("run/last"))


# --------------------------------------------------------------------------------------------
# A damaged last/
# --------------------------------------------------------------------------------------------

def damage_state(transform):
    def damage(last: Path) -> None:
        path = last / train.CHECKPOINT_STATE
        path.write_text(json.dumps(transform(json.loads(path.read_text()))))
    return damage


def short_python_rng(checkpoint: dict) -> dict:
    checkpoint["rng"][0]["python"][1] = checkpoint["rng"][0]["python"][1][:10]
    return checkpoint


def junk_paddle_rng(checkpoint: dict) -> dict:
    checkpoint["rng"][0]["paddle"] = [[1, 2]]
    return checkpoint


def truncate(name: str):
    def damage(last: Path) -> None:
        data = (last / name).read_bytes()
        (last / name).write_bytes(data[:len(data) // 3])
    return damage


DAMAGES = {
    "state-empty-object": (damage_state(lambda checkpoint: {}), train.CHECKPOINT_STATE),
    "state-missing": (lambda last: (last / train.CHECKPOINT_STATE).unlink(), train.CHECKPOINT_STATE),
    "state-no-step": (damage_state(lambda checkpoint: {**checkpoint, "state": {"best_value": 1}}), train.CHECKPOINT_STATE),
    "rng-short-python": (damage_state(short_python_rng), train.CHECKPOINT_STATE),
    "rng-junk-paddle": (damage_state(junk_paddle_rng), train.CHECKPOINT_STATE),
    "rng-empty": (damage_state(lambda checkpoint: {**checkpoint, "rng": []}), train.CHECKPOINT_STATE),
    "optimizer-missing": (lambda last: (last / train.OPTIMIZER_STATE).unlink(), train.OPTIMIZER_STATE),
    "optimizer-truncated": (truncate(train.OPTIMIZER_STATE), train.OPTIMIZER_STATE),
}


def test_damaged_checkpoint_is_one_line_naming_the_file(inputs, reference):
    runs = {}
    for name, (damage, _) in DAMAGES.items():
        runs[name] = Path(shutil.copytree(reference, inputs["root"] / "damaged" / name))
        damage(runs[name] / "last")
    before = {name: snapshot(run) for name, run in runs.items()}
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = dict(zip(runs, pool.map(lambda run: run_cli(finetune_argv(inputs, run, "--resume"),
                                                              env=user_environment()), runs.values())))
    for name, completed in results.items():
        damaged_file = runs[name] / "last" / DAMAGES[name][1]
        assert_one_line_error(completed, "finetune", f"{damaged_file}: damaged checkpoint", "--overwrite")
        assert snapshot(runs[name]) == before[name], name


# --------------------------------------------------------------------------------------------
# A full disk
# --------------------------------------------------------------------------------------------

def test_full_disk_at_a_checkpoint_keeps_the_previous_one(inputs, reference):
    run = inputs["root"] / "disk-full"
    shutil.copytree(reference, run)
    state = json.loads((run / "last" / train.CHECKPOINT_STATE).read_text())
    state["state"]["step"] = 20
    # Resume from a step-20 copy of the final checkpoint: its next checkpoint (step 24) cannot be written.
    checkpoint = run / "last"
    (checkpoint / train.CHECKPOINT_STATE).write_text(json.dumps(state))
    before = snapshot(checkpoint)
    limit = 50_000      # the tiny model's weights are ~190 KB; metrics.jsonl and the logs stay far below
    completed = run_cli(finetune_argv(inputs, run, "--resume"), preexec_fn=limited_file_size(limit))
    line = assert_one_line_error(completed, "finetune", f"{checkpoint}: cannot write the step 24 checkpoint",
                                 "File too large", "last/ holds step 20: --resume continues", only_line=False)
    assert "Traceback" not in completed.stderr and line == completed.stderr.splitlines()[-1]
    assert snapshot(checkpoint) == before
    assert not list(run.glob(".*.tmp")) and not (run / "last.old").exists()


def test_full_disk_during_export_leaves_nothing_half_written(inputs, tmp_path):
    from mobilebert_paddle.model.network import MobileBertForQuestionAnswering

    model = tmp_path / "qa"
    MobileBertForQuestionAnswering.from_pretrained(inputs["base"]).save_pretrained(model, tokenizer=None)
    for name in ("vocab.txt", "tokenizer_config.json"):
        (model / name).write_bytes((inputs["base"] / name).read_bytes())
    earlier = tmp_path / "earlier"
    assert run_cli(["export", "--model", model, "--output", earlier, "--format", "paddle"]).returncode == 0
    before = snapshot(earlier)
    # 100 KB cuts Paddle's model.json (which jit.save does not report), 150 KB its .pdiparams,
    # 200 KB our own model.onnx: each must be one line, and no output (or the earlier one, whole).
    for limit in (100_000, 150_000, 200_000):
        for output, kept in ((tmp_path / f"new-{limit}", "nothing was written"), (earlier, "the earlier export is kept")):
            completed = run_cli(["export", "--model", model, "--output", output, "--format", "onnx"],
                                preexec_fn=limited_file_size(limit))
            assert_one_line_error(completed, "export", f"{output}: cannot write the export", kept, only_line=False)
        assert not (tmp_path / f"new-{limit}").exists()
        assert snapshot(earlier) == before
        assert sorted(path.name for path in tmp_path.iterdir()) == ["earlier", "qa"]


def test_full_disk_during_evaluate_keeps_the_earlier_results_whole(inputs, tmp_path):
    from mobilebert_paddle.model.network import MobileBertForQuestionAnswering

    model = tmp_path / "qa"
    MobileBertForQuestionAnswering.from_pretrained(inputs["base"]).save_pretrained(model)
    for name in ("vocab.txt", "tokenizer_config.json"):
        (model / name).write_bytes((inputs["base"] / name).read_bytes())
    results = tmp_path / "eval"
    argv = ["evaluate", "squad1", "--model", model, "--data", inputs["squad"], "--output", results,
            "--max-seq-length", 32, "--doc-stride", 8, "--max-query-length", 8]
    assert run_cli(argv).returncode == 0
    before = snapshot(results)
    assert min(path.stat().st_size for path in results.iterdir()) > 100
    completed = run_cli(argv + ["--n-best-size", 5], preexec_fn=limited_file_size(100))   # other n-best lists
    assert_one_line_error(completed, "evaluate", f"{results}: cannot write the evaluation", "File too large",
                          "the earlier evaluation is kept", only_line=False)
    assert snapshot(results) == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["eval", "qa"]
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("keep me\n")
    refused = run_cli([*argv[:-6], "--output", foreign], env=user_environment())
    assert_one_line_error(refused, "evaluate", "holds files no evaluation writes (mine.txt)")
    assert (foreign / "mine.txt").read_text() == "keep me\n"


# --------------------------------------------------------------------------------------------
# File modes; one line after log lines
# --------------------------------------------------------------------------------------------

def test_modes_under_umask_022(inputs, tmp_path):
    run = tmp_path / "umask"
    argv = finetune_argv(inputs, run)
    argv[argv.index("--max-steps") + 1] = 4
    completed = run_cli(argv, preexec_fn=lambda: os.umask(0o022))
    assert completed.returncode == 0, completed.stderr[-3000:]
    for directory in (run / "last", run / "best"):
        modes = {path.name: oct(path.stat().st_mode & 0o777) for path in directory.iterdir()}
        assert "optimizer.safetensors" in modes or directory.name == "best"
        assert set(modes.values()) == {"0o644"}, modes


def test_an_error_after_log_lines_is_still_one_line(inputs, tmp_path):
    """Reading SQuAD data warns about answers not at their answer_start and logs the rows it made;
    the error (too few rows) follows those lines. The user sees the error alone."""
    data = json.loads(inputs["squad"].read_text())
    for paragraph in data["data"][0]["paragraphs"][1:]:          # 5 of 6 answers misplaced: a warning
        for answer in paragraph["qas"][0]["answers"]:
            answer["answer_start"] = len(paragraph["context"]) - 1
    misplaced = tmp_path / "misplaced.json"
    misplaced.write_text(json.dumps(data))
    output = tmp_path / "out"
    completed = run_cli(["finetune", "squad1", "--model", inputs["base"], "--train", misplaced, "--output", output,
                         "--max-seq-length", 32, "--doc-stride", 8, "--max-query-length", 8,
                         "--gradient-accumulation-steps", 4], env=user_environment())   # 1 row: no batch of 4 parts
    assert_one_line_error(completed, "finetune", "training rows make no batch")
    assert not output.exists()
