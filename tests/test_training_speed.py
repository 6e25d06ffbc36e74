"""benchmarks/training_speed.py (the README's training-speed table) on the tiny cases: it runs,
and before timing, our Trainer step's loss and its PyTorch twin's agree on the same batch and
weights (pretraining, distillation stage 1 and stage 2, at BERT's 30,522-piece vocabulary).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_tasks import subprocess_env

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "training_speed.py"


@pytest.mark.slow
def test_training_speed_benchmark_checks_losses_against_pytorch(tmp_path):
    completed = subprocess.run([sys.executable, str(SCRIPT), "--output", str(tmp_path), "--cases", "pretrain-tiny,distill",
                                "--rounds", "1", "--warmup", "0", "--threads", "1"],
                               capture_output=True, text=True, env=subprocess_env(), timeout=900)
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads((tmp_path / "training_speed.json").read_text())
    timed = [result for result in report["results"] if "paths" in result]
    assert [result["case"] for result in timed] == [
        "pretrain IB-BERT-layout tiny teacher (LAMB)", "pretrain tiny MobileBERT student (LAMB)",
        "distill stage 1 (last phase), tiny", "distill stage 2, tiny"]
    for result in timed:
        assert result["loss_check"]["relative_difference"] <= 1e-6, result
        assert result["paths"]["ours"]["median_ms"] > 0 and result["paths"]["PyTorch"]["ratio_to_torch"] == 1.0
    ratios = [result for result in report["results"] if "ratio" in result]
    assert [result["case"] for result in ratios] == ["distill stage 2 / stage 1 (ours), tiny"] and ratios[0]["ratio"] > 0
    assert report["machine"]["threads"] == 1 and report["machine"]["cores"] >= 1
    assert "| distill stage 2, tiny | 32x64 |" in completed.stdout
