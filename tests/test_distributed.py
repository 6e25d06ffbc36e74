"""Data parallel: 2 CPU processes (gloo, started by paddle.distributed.launch) train the same
model as 1 process with the same global batch.

Why the comparison has two parts. A global batch of 16 split 8 + 8 over two processes sums
each half's gradient separately, so the rounding differs from one 16-row sum; Adam then
turns rounding-level gradient differences into lr-sized steps for any weight whose gradient
is ~0. So: (1) 2 processes must equal, bit for bit, 1 process that splits the same batch the
same way (--gradient-accumulation-steps 2): everything DataParallel, the sampler and the loss
scaling add is exact; (2) against 1 process without the split the weights agree to
max|a - b| / max|b| <= 1e-5 over the model. Attention key biases are left out of (2): softmax
over keys ignores a constant, so their gradient is exactly zero and their values are pure
rounding noise (|value| < 1e-4) that Adam normalises into steps.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tiny_tasks import make_tiny_model_dir, max_relative_difference, model_weights, subprocess_env, write_colour_pairs

# Every case through the real CLI in a subprocess: the slow tier.
pytestmark = pytest.mark.slow

LAUNCH_ENTRY = "from mobilebert_paddle.cli import main\nraise SystemExit(main())\n"


def finetune(argv: list, output: Path, processes: int = 1, log_dir: Path | None = None) -> subprocess.CompletedProcess:
    if processes == 1:
        command = [sys.executable, "-m", "mobilebert_paddle"]
    else:   # --train-file: launch's own parser would take --train for its --trainers
        entry = output.parent / "launch_entry.py"
        entry.write_text(LAUNCH_ENTRY)
        command = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", str(processes),
                   "--log_dir", str(log_dir), str(entry)]
    return subprocess.run(command + [str(arg) for arg in argv] + ["--output", str(output)], capture_output=True,
                          text=True, env=subprocess_env(), timeout=600)


def metric_lines(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_gloo_processes_train_like_one_process_with_the_same_global_batch(tmp_path):
    base = make_tiny_model_dir(tmp_path / "base")      # no dropout: the processes' RNG streams differ
    train_file = write_colour_pairs(tmp_path / "train.tsv", 120, seed=1)     # 7.5 batches: a short last one
    dev_file = write_colour_pairs(tmp_path / "dev.tsv", 32, seed=2)
    argv = ["finetune", "rte", "--model", base, "--train-file", train_file, "--dev", dev_file,
            "--max-seq-length", 16, "--batch-size", 16, "--max-steps", 10, "--learning-rate", 8e-5,
            "--eval-steps", 5, "--logging-steps", 1, "--device", "cpu"]
    one = finetune(argv, tmp_path / "one")
    split = finetune(argv + ["--gradient-accumulation-steps", 2], tmp_path / "split")
    two = finetune(argv, tmp_path / "two", processes=2, log_dir=tmp_path / "launch-logs")
    for completed in (one, split, two):
        assert completed.returncode == 0, completed.stderr[-3000:]

    summary = json.loads(two.stdout[two.stdout.index("{"):two.stdout.rindex("}") + 1])
    assert summary["world_size"] == 2 and summary["steps"] == 10

    two_weights, split_weights = model_weights(tmp_path / "two" / "last"), model_weights(tmp_path / "split" / "last")
    assert all(np.array_equal(two_weights[key], split_weights[key]) for key in two_weights)
    one_weights = model_weights(tmp_path / "one" / "last")
    assert max_relative_difference(two_weights, one_weights, skip=("attention.self.key.bias",)) <= 1e-5
    assert max(np.abs(one_weights[key]).max() for key in one_weights if key.endswith("key.bias")) < 1e-4

    one_lines, two_lines = metric_lines(tmp_path / "one"), metric_lines(tmp_path / "two")
    assert [(line["kind"], line["step"]) for line in two_lines] == [(line["kind"], line["step"]) for line in one_lines]
    for first, second in zip(one_lines, two_lines):
        if first["kind"] == "train":
            assert second["loss"] == pytest.approx(first["loss"], rel=1e-5)

    # Only rank 0 wrote: one VisualDL file, one summary (rank 1's log has none).
    assert len(list((tmp_path / "two" / "vdl").iterdir())) == 1
    worker_one = (tmp_path / "launch-logs" / "workerlog.1").read_text()
    assert '"world_size"' not in worker_one and "Traceback" not in worker_one
