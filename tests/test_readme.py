"""Every command in README.md runs as written, on tiny local data.

The README's ```bash blocks are a walk-through: convert, compare, fine-tune, evaluate, score,
predict, export, bench. `readme_commands()` reads their lines; COVERAGE maps each line, by its
signature (subcommand, task, flag names), to the check that runs it, so a README line the table
does not know fails `test_every_readme_command_is_covered` until someone adds its check.

The walk-through runs in README order through `cli.main` (the call the `mobilebert` script
makes) in a temporary working directory holding the README's relative paths: tiny
train-v1.1.json / dev-v1.1.json / ..., glue_data/MNLI/..., glue_data/RTE/... The changes to the
lines are listed here and nowhere else: the hub id google/mobilebert-uncased becomes a tiny
random HF MobileBertForPreTraining checkpoint (the real one's architecture), the preset ib-bert
a 2-layer config in its layout (hub/tiny-ib-bert.json), fine-tuning and pretraining get
--max-steps (3 steps), bench gets --runs 1 --warmup 0 --pause 0; corpus.txt / heldout.txt are
small BERT-format corpora in the tiny vocabulary.

Not run here: the set-up lines (CI runs them), `mobilebert quickstart` (tests/test_quickstart.py
runs it) and the 4-GPU launch line, whose flags are parsed by Paddle's launcher and the CLI
instead (tests/test_distributed.py runs a 2-process launch of the same trainer).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import pytest
from tiny_tasks import VOCAB, write_colour_pairs, write_marker_squad, write_mnli_dev

REPO_ROOT = Path(__file__).resolve().parents[1]
README = REPO_ROOT / "README.md"
HUB_ID = "google/mobilebert-uncased"
SETUP_PREFIXES = ("pip install", "python -m pytest")
LAUNCH = "python -m paddle.distributed.launch"
SPEED_FLAGS = {"finetune": ["--max-steps", "3"], "bench": ["--runs", "1", "--warmup", "0", "--pause", "0"],
               "pretrain": ["--max-steps", "3", "--batch-size", "8", "--warmup-steps", "1", "--eval-steps", "3"],
               "distill": ["--transfer-steps", "4", "--distill-steps", "2", "--batch-size", "8", "--warmup-steps", "1", "--logging-steps", "2",
                           "--eval-steps", "6"]}
# written by write_tiny_presets: ib-bert's layout and mobilebert's, 2 layers, equal where distillation needs it
TINY_PRESETS = {"ib-bert": "hub/tiny-ib-bert.json", "mobilebert": "hub/tiny-mobilebert.json"}


# --------------------------------------------------------------------------------------------
# Reading the README
# --------------------------------------------------------------------------------------------

def fenced_blocks(language: str, text: str | None = None) -> list[str]:
    text = README.read_text(encoding="utf-8") if text is None else text
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)


def readme_commands() -> list[str]:
    """Every command line of the bash blocks, comments dropped, in README order."""
    commands = []
    for block in fenced_blocks("bash"):
        for line in block.splitlines():
            command = strip_comment(line)
            if command and not command.startswith(SETUP_PREFIXES):
                commands.append(command)
    return commands


def strip_comment(line: str) -> str:
    """The line without a trailing `  # ...` comment (a '#' inside quotes is kept)."""
    quote = None
    for index, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1].isspace()):
            return line[:index].strip()
    return line.strip()


def inline_commands() -> list[str]:
    """Inline `code` spans in the prose and tables that are commands (two words or more)."""
    spans = re.findall(r"`([^`\n]+)`", README.read_text(encoding="utf-8"))
    return [span for span in spans if re.match(r"(mobilebert|python -m|visualdl|pip) \S", span)]


def signature(command: str) -> str:
    """'finetune squad1 --dev --model --output --train': subcommand, task, flag names."""
    from mobilebert_paddle.tools.evaluate import TASK_NAMES

    tokens = shlex.split(command.replace("$(which mobilebert)", "mobilebert"))
    prefix = ""
    if command.startswith(LAUNCH):
        prefix, tokens = "launch ", tokens[tokens.index("mobilebert"):]
    assert tokens[0] == "mobilebert", command
    parts = [tokens[1]] + ([tokens[2]] if len(tokens) > 2 and tokens[2] in TASK_NAMES else [])
    parts += sorted({token for token in tokens if token.startswith("--")})
    parts += ["..."] if "..." in tokens else []
    return prefix + " ".join(parts)


def cli_argv(command: str, earlier: list[str]) -> list[str]:
    """The argv `cli.main` gets for a README line: the hub id swapped for the tiny checkpoint,
    `...` filled in from the first earlier line with the same subcommand and task, speed flags added."""
    tokens = shlex.split(command)[1:]
    if "..." in tokens:
        cut = tokens.index("...")
        given = [token for token in tokens[cut + 1:] if token.startswith("--")]
        template = next(shlex.split(line)[1:] for line in earlier if shlex.split(line)[1:cut + 1] == tokens[:cut])
        tokens = tokens[:cut] + drop_flags(template[cut:], given) + tokens[cut + 1:]
    tokens = [TINY_HUB_DIR if token == HUB_ID else token for token in tokens]
    tokens = [TINY_PRESETS.get(token, token) if index and tokens[index - 1] in ("--config", "--student") else token
              for index, token in enumerate(tokens)]
    return tokens + SPEED_FLAGS.get(tokens[0], [])


def drop_flags(tokens: list[str], flags: list[str]) -> list[str]:
    """`tokens` without the given flags and their values."""
    kept, skipping = [], False
    for token in tokens:
        if token.startswith("--"):
            skipping = token in flags
        if not skipping:
            kept.append(token)
    return kept


# --------------------------------------------------------------------------------------------
# The walk-through
# --------------------------------------------------------------------------------------------

TINY_HUB_DIR = "hub/google-mobilebert-uncased"   # inside the working directory


class Result(NamedTuple):
    argv: list[str]
    code: int
    summary: dict | None
    stderr: str
    seconds: float


def run_cli_in_process(argv: list[str]) -> Result:
    from mobilebert_paddle.cli import main

    out, err = io.StringIO(), io.StringIO()
    started = time.time()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit_:   # --help
            code = exit_.code
    summary = json.loads(out.getvalue()) if out.getvalue().strip().startswith("{") else None
    return Result(argv, code, summary, err.getvalue(), time.time() - started)


def write_tiny_data(root: Path) -> None:
    """The README's relative data paths, with tiny learnable data in the official formats."""
    # SQuAD rows are 384 tokens (the recipe's length): few questions keep the 3 steps short.
    write_marker_squad(root / "train-v1.1.json", 16, seed=1)
    write_marker_squad(root / "dev-v1.1.json", 8, seed=2)
    write_marker_squad(root / "train-v2.0.json", 16, seed=3, unanswerable_share=0.3)
    write_marker_squad(root / "dev-v2.0.json", 8, seed=4, unanswerable_share=0.3)
    (root / "glue_data" / "MNLI").mkdir(parents=True)
    write_mnli_dev(root / "glue_data" / "MNLI" / "train.tsv", 48, seed=5)   # dev layout: 16 columns, label last
    write_mnli_dev(root / "glue_data" / "MNLI" / "dev_matched.tsv", 12, seed=6)
    write_mnli_dev(root / "glue_data" / "MNLI" / "dev_mismatched.tsv", 12, seed=7)
    (root / "glue_data" / "RTE").mkdir(parents=True)
    write_colour_pairs(root / "glue_data" / "RTE" / "train.tsv", 48, seed=8)
    write_colour_pairs(root / "glue_data" / "RTE" / "dev.tsv", 12, seed=9)
    write_tiny_corpus(root / "corpus.txt", 40, seed=10)
    write_tiny_corpus(root / "heldout.txt", 10, seed=11)
    write_tiny_presets(root)


def write_tiny_corpus(path: Path, documents: int, seed: int) -> None:
    """BERT's pretraining input: one sentence a line, a blank line between documents."""
    import random

    rng = random.Random(seed)
    words = [word for word in VOCAB if word.startswith("w")]
    text = "\n\n".join("\n".join(f"the {rng.choice(words)} is {rng.choice(['red', 'blue'])} ." for _ in range(5))
                        for _ in range(documents))
    path.write_text(text + "\n", encoding="utf-8")


def write_tiny_presets(root: Path) -> None:
    """Google's IB-BERT layout (the ib-bert preset) at 2 layers, 32 wide between blocks, 64 inside;
    MobileBERT's (the mobilebert preset) at 2 layers, 32 between blocks, 16 inside: a student for it."""
    from mobilebert_paddle.model.config import PRESETS

    shared = {"vocab_size": len(VOCAB), "hidden_size": 32, "embedding_size": 16, "num_hidden_layers": 2,
              "num_attention_heads": 2, "max_position_embeddings": 512}
    configs = {"ib-bert": {**PRESETS["ib-bert"], **shared, "intra_bottleneck_size": 64, "intermediate_size": 128},
               "mobilebert": {**PRESETS["mobilebert"], **shared, "intra_bottleneck_size": 16, "intermediate_size": 16}}
    for name, config in configs.items():
        path = root / TINY_PRESETS[name]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(config), encoding="utf-8")


def write_tiny_hub_checkpoint(directory: Path):
    """A random HF MobileBertForPreTraining (the architecture of google/mobilebert-uncased) in
    HF's own layout, with the vocabulary of the tiny tasks and room for 384-token rows."""
    from reference import make_hf_model, save_hf

    model = make_hf_model("MobileBertForPreTraining", vocab_size=len(VOCAB), max_position_embeddings=512)
    save_hf(model, directory, vocab_tokens=VOCAB)
    return model


@pytest.fixture(scope="module")
def walkthrough(tmp_path_factory) -> dict:
    """Run the README's command lines in order in a fresh working directory:
    {"results": {README line: Result}, "root": Path, "hf_model": the torch model behind the hub id}."""
    root = tmp_path_factory.mktemp("readme")
    write_tiny_data(root)
    hf_model = write_tiny_hub_checkpoint(root / TINY_HUB_DIR)
    results, earlier = {}, []
    previous = os.getcwd()
    os.chdir(root)
    try:
        for command in readme_commands():
            if COVERAGE.get(signature(command), NOT_RUN).runs_in_walkthrough:   # unknown: the coverage test fails
                results[command] = run_cli_in_process(cli_argv(command, earlier))
            earlier.append(command)
    finally:
        os.chdir(previous)
    return {"results": results, "root": root, "hf_model": hf_model}


# --------------------------------------------------------------------------------------------
# Checks, one per kind of README line
# --------------------------------------------------------------------------------------------

def check_convert_to_paddle(result: Result, root: Path, walkthrough: dict) -> None:
    from mobilebert_paddle.model.modeldir import read_safetensors_metadata

    destination = root / result.argv[2]
    assert result.summary["architecture"] == "MobileBertForPreTraining"
    assert read_safetensors_metadata(destination / "model.safetensors") == {"format": "paddle"}
    assert (destination / "vocab.txt").read_text().split() == VOCAB


def check_convert_to_hf(result: Result, root: Path, walkthrough: dict) -> None:
    """'transformers loads it': every weight, equal to the checkpoint the walk-through started from."""
    import transformers

    loaded, info = transformers.MobileBertForPreTraining.from_pretrained(root / result.argv[2],
                                                                         output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    original = walkthrough["hf_model"].state_dict()
    for key, value in loaded.state_dict().items():
        assert np.array_equal(value.numpy(), original[key].numpy()), key


def check_compare(result: Result, root: Path, walkthrough: dict) -> None:
    summary = result.summary
    assert summary["passed"] and summary["max_relative_error"] <= 1e-5
    assert summary["layers"] and summary["architecture"] == "MobileBertForPreTraining"


def check_finetune(result: Result, root: Path, walkthrough: dict) -> None:
    summary, run = result.summary, root / result.argv[result.argv.index("--output") + 1]
    assert summary["steps"] == summary["total_steps"] == 3
    assert (run / "best" / "config.json").is_file() and (run / "last" / "model.safetensors").is_file()
    assert (run / "train_config.json").is_file() and (run / "metrics.jsonl").read_text().strip()
    assert summary["best_metrics"] and summary["main_metric"]


def check_resume(result: Result, root: Path, walkthrough: dict) -> None:
    """The run was complete, so resuming restores it and stops at once."""
    assert result.summary["resumed_from_step"] == result.summary["total_steps"] == result.summary["steps"] == 3
    assert "--resume" in result.argv and "--train" in result.argv   # `...` was filled in


def check_evaluate_squad2(result: Result, root: Path, walkthrough: dict) -> None:
    metrics = result.summary["metrics"]
    assert {"exact", "f1", "HasAns_exact", "NoAns_exact", "best_exact", "best_f1"} <= set(metrics)
    output = root / result.argv[result.argv.index("--output") + 1]
    assert json.loads((output / "metrics.json").read_text())["exact"] == metrics["exact"]
    assert (output / "predictions.json").is_file() and (output / "null_odds.json").is_file()


def check_evaluate_mnli(result: Result, root: Path, walkthrough: dict) -> None:
    """Both files given, each scored on its own (MNLI-m / MNLI-mm)."""
    assert result.summary["examples"] == {"matched": 12, "mismatched": 12}
    metrics = result.summary["metrics"]
    assert 0 <= metrics["matched_accuracy"] <= 1 and 0 <= metrics["mismatched_accuracy"] <= 1


def check_squad_eval(result: Result, root: Path, walkthrough: dict) -> None:
    """The official script's keys, and the scores training recorded for the same predictions."""
    scores = result.summary
    assert {"exact", "f1", "total", "HasAns_exact", "NoAns_exact", "best_exact", "best_exact_thresh"} <= set(scores)
    recorded = json.loads((root / "runs" / "squad2" / "best" / "metrics.json").read_text())
    assert scores["exact"] == pytest.approx(recorded["exact"]) and scores["f1"] == pytest.approx(recorded["f1"])


def check_predict_answer(result: Result, root: Path, walkthrough: dict) -> None:
    context = result.argv[result.argv.index("--context") + 1]
    candidates = result.summary["candidates"]
    assert 1 <= len(candidates) <= 3
    # Barely trained, the model may rank no valid span in the n-best: HF's run_qa answers "empty" then.
    assert all(candidate["text"] in context or candidate["text"] == "empty" for candidate in candidates)
    assert result.summary["answer"] == candidates[0]["text"]


def check_predict_pair(result: Result, root: Path, walkthrough: dict) -> None:
    labels = result.summary["labels"]
    assert result.summary["label"] in {"entailment", "neutral", "contradiction"}
    assert sum(label["probability"] for label in labels) == pytest.approx(1.0, abs=1e-5)


def check_export(result: Result, root: Path, walkthrough: dict) -> None:
    output = root / result.argv[result.argv.index("--output") + 1]
    model_file = {"onnx": "model.onnx", "openvino": "model.xml"}[result.argv[result.argv.index("--format") + 1]]
    assert (output / model_file).is_file()
    if "--quantize" in result.argv:
        assert result.summary["quantization"] == result.argv[result.argv.index("--quantize") + 1]


def check_evaluate_exported(result: Result, root: Path, walkthrough: dict) -> None:
    """The ONNX export, and the model dir on OpenVINO, score the dev set as the eager model did
    during training."""
    recorded = json.loads((root / "runs" / "squad1" / "best" / "metrics.json").read_text())
    assert result.summary["backend"] == result.argv[result.argv.index("--backend") + 1]
    assert result.summary["metrics"]["exact"] == pytest.approx(recorded["exact"])
    assert result.summary["metrics"]["f1"] == pytest.approx(recorded["f1"])


def check_pretrain_data(result: Result, root: Path, walkthrough: dict) -> None:
    output = root / result.argv[result.argv.index("--output") + 1]
    assert result.summary["rows"] > 0 and (output / "meta.json").is_file()
    assert (output / "vocab.txt").read_text().split() == VOCAB        # the tokenizer it was given


def check_pretrain(result: Result, root: Path, walkthrough: dict) -> None:
    run = root / result.argv[result.argv.index("--output") + 1]
    assert result.summary["steps"] == result.summary["total_steps"] == 3
    assert result.summary["main_metric"] == "masked_lm_accuracy"
    config = json.loads((run / "best" / "config.json").read_text())
    assert config["architectures"] == ["MobileBertForPreTraining"] and config["normalization_type"] == "layer_norm"
    assert {"masked_lm_accuracy", "masked_lm_loss", "next_sentence_accuracy"} <= set(result.summary["best_metrics"])


def check_evaluate_pretraining(result: Result, root: Path, walkthrough: dict) -> None:
    """The training-time evaluation of best/, reproduced by `evaluate` (the same fixed dev masks)."""
    recorded = json.loads((root / "runs" / "teacher" / "best" / "metrics.json").read_text())
    assert result.summary["metrics"]["masked_lm_accuracy"] == recorded["masked_lm_accuracy"]


def check_distill(result: Result, root: Path, walkthrough: dict) -> None:
    run = root / result.argv[result.argv.index("--output") + 1]
    assert result.summary["steps"] == result.summary["total_steps"] == 6
    config = json.loads((run / "best" / "config.json").read_text())
    assert config["architectures"] == ["MobileBertForPreTraining"] and config["normalization_type"] == "no_norm"
    stages = [line.get("stage") for line in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
              if line["kind"] == "train"]
    assert "transfer" in stages and "distill" in stages


def check_bench(result: Result, root: Path, walkthrough: dict) -> None:
    assert set(result.summary["shapes"]) == {"1x128", "1x384", "8x128", "8x384"}
    assert (root / "bench" / "bench.json").is_file()
    if "--peers" in result.argv:
        rows = result.summary["shapes"]["1x128"]["backends"]
        assert {"peer-hf-onnx-ort", "peer-hf-openvino", "peer-hf-openvino-int8"} <= set(rows)
        assert rows["openvino-fused-int8"]["best_peer"] == "peer-hf-openvino-int8"


class Coverage(NamedTuple):
    check: Callable | None
    runs_in_walkthrough: bool = True
    elsewhere: str = ""          # the test that covers a line this file does not run


COVERAGE = {
    "convert": Coverage(check_convert_to_paddle),
    "convert --to": Coverage(check_convert_to_hf),
    "compare --layers": Coverage(check_compare),
    "finetune squad1 --dev --model --output --train": Coverage(check_finetune),
    "finetune squad2 --dev --model --output --train": Coverage(check_finetune),
    "finetune mnli --data-dir --model --output": Coverage(check_finetune),
    "finetune rte --data-dir --model --output": Coverage(check_finetune),
    "finetune squad1 --output --resume ...": Coverage(check_resume),
    "launch finetune mnli --data-dir --model --output": Coverage(None, False, "test_multi_gpu_line_parses"),
    "evaluate squad2 --data --model --output": Coverage(check_evaluate_squad2),
    "evaluate mnli --data --model --output": Coverage(check_evaluate_mnli),
    "squad-eval --na-prob-file": Coverage(check_squad_eval),
    "predict --context --model --question --top-k": Coverage(check_predict_answer),
    "predict --model --text --text-pair": Coverage(check_predict_pair),
    "export --format --model --output": Coverage(check_export),
    "evaluate squad1 --backend --data --model --output": Coverage(check_evaluate_exported),
    "bench --batch --model --seq": Coverage(check_bench),
    "pretrain-data --output --tokenizer": Coverage(check_pretrain_data),
    "pretrain --config --data --dev --output": Coverage(check_pretrain),
    "evaluate pretraining --data --model --output": Coverage(check_evaluate_pretraining),
    "distill --data --dev --output --student --teacher": Coverage(check_distill),
    "export --calibration-data --format --fuse --model --output --quantize": Coverage(check_export),
    "bench --backends --batch --model --peers --seq": Coverage(check_bench),
    "quickstart --output": Coverage(None, False, "tests/test_quickstart.py"),
    # LiteRT (the litert extra, which CI installs in a second environment: tests/test_litert.py runs there)
    "export --format --model --output --seq-lengths": Coverage(None, False, "tests/test_litert.py"),
    "export --format --model --output --quantize --seq-lengths": Coverage(None, False, "tests/test_litert.py"),
    "evaluate squad1 --backend --data --max-seq-length --model --output":
        Coverage(None, False, "tests/test_evaluation.py (test_evaluate_on_litert_scores_as_eager)"),
    "predict --backend --model --text": Coverage(None, False, "tests/test_litert.py"),
    "bench --backends --batch --model --seq": Coverage(None, False, "tests/test_litert.py"),
}

NOT_RUN = Coverage(None, False)

# Inline `code` commands in the prose: each is a bash-block line above or covered here.
INLINE_COVERAGE = {
    "mobilebert finetune --help": "test_finetune_help_lists_the_recipe",
    "mobilebert quickstart": "tests/test_quickstart.py",
    "python -m mobilebert_paddle ...": "tests/test_cli_errors.py (every case runs `python -m mobilebert_paddle`)",
    "visualdl --logdir runs/squad1/vdl": "test_visualdl_logdir_holds_the_runs_scalars",
    "pip install -e .": "set-up (CI)",
    'python -m pytest -q -m "not slow"': "the fast tier (the same tests CI runs, minus the slow ones)",
    "python -m pytest -rs": "the test command itself, with the skip report (CI)",
}


# --------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------

def test_every_readme_command_is_covered():
    commands = readme_commands()
    assert len(commands) >= 15, commands          # the parser found the walk-through
    unknown = [command for command in commands if signature(command) not in COVERAGE]
    assert not unknown, f"README lines without a test (add them to COVERAGE): {unknown}"
    stale = set(COVERAGE) - {signature(command) for command in commands}
    assert not stale, f"COVERAGE entries for lines no longer in the README: {stale}"
    spaced = {" ".join(command.split()) for command in commands}
    inline = [span for span in inline_commands()
              if " ".join(span.split()) not in spaced and span not in INLINE_COVERAGE]
    assert not inline, f"inline README commands without a test: {inline}"


def test_lines_covered_elsewhere_have_their_test_files():
    elsewhere = [entry.elsewhere for entry in COVERAGE.values()] + list(INLINE_COVERAGE.values())
    missing = [name.split(" ")[0] for name in elsewhere
               if name.startswith("tests/") and not (REPO_ROOT / name.split(" ")[0]).is_file()]
    assert not missing, f"README lines are said to be covered by test files that do not exist: {missing}"


@pytest.mark.slow
@pytest.mark.parametrize("command", [command for command in readme_commands()
                                     if COVERAGE.get(signature(command), NOT_RUN).runs_in_walkthrough])
def test_readme_command_runs(command, walkthrough):
    result = walkthrough["results"][command]
    assert result.code == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    COVERAGE[signature(command)].check(result, walkthrough["root"], walkthrough)


def test_multi_gpu_line_parses():
    """Paddle's launcher reads its own flags and passes the finetune flags through untouched
    (its parser takes abbreviations: --train would become its --trainers), and the CLI accepts them."""
    from paddle.distributed.launch.context.args_envs import parse_args

    from mobilebert_paddle.cli import parse_command_args

    (line,) = [command for command in readme_commands() if command.startswith(LAUNCH)]
    script = shutil.which("mobilebert")
    assert script, "the `mobilebert` console script is not on PATH (pip install -e .)"
    tokens = shlex.split(line.replace("$(which mobilebert)", shlex.quote(script)))
    launcher_argv = tokens[len(shlex.split(LAUNCH)):]
    saved = sys.argv
    sys.argv = ["launch", *launcher_argv]
    try:
        launch_args, unknown = parse_args()
    finally:
        sys.argv = saved
    finetune_argv = tokens[tokens.index(script) + 1:]
    assert not unknown and launch_args.devices == "0,1,2,3" and launch_args.training_script == script
    assert launch_args.training_script_args == finetune_argv
    args = parse_command_args("finetune", finetune_argv[1:])
    assert (args.task, args.model, args.data_dir, args.output) == ("mnli", HUB_ID, "glue_data/MNLI", "runs/mnli")


def test_console_script_runs_under_the_launcher_interpreter():
    """The launcher starts `python <script> ...`: the console script must be runnable that way."""
    import subprocess

    script = shutil.which("mobilebert")
    completed = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0 and "finetune" in completed.stdout + completed.stderr


@pytest.mark.slow
def test_python_snippet_runs_on_a_fine_tuned_qa_model(walkthrough):
    """The README's Python block, verbatim, in the walk-through's directory (runs/squad1/best)."""
    (snippet,) = fenced_blocks("python")
    namespace: dict = {"__name__": "readme_snippet"}
    previous = os.getcwd()
    os.chdir(walkthrough["root"])
    try:
        exec(compile(snippet, "README.md python block", "exec"), namespace)
    finally:
        os.chdir(previous)
    rows, width = namespace["batch"]["input_ids"].shape
    start, end = namespace["start_logits"].numpy(), namespace["end_logits"].numpy()
    assert start.shape == end.shape == (rows, width) == (1, width)
    assert np.isfinite(start).all() and np.isfinite(end).all()


def test_finetune_help_lists_the_recipe(capsys):
    """`mobilebert finetune --help` shows the recipe values the README states."""
    from mobilebert_paddle.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["finetune", "--help"])
    help_text = capsys.readouterr().out
    assert exit_.value.code == 0
    for default in ("(default: 8e-05)", "(default: 64)", "(default: 6.0)", "(default: 0.98)", "(default: 42)",
                    "min_lr 1e-06", "decay_ratio 0.7", "max_seq_length 384", "max_seq_length 128"):
        assert default in " ".join(help_text.split()), default


def test_visualdl_logdir_holds_the_runs_scalars(walkthrough):
    """`visualdl --logdir runs/squad1/vdl` reads the VisualDL logs the run wrote (the resumed
    run added a second file)."""
    from visualdl import LogReader

    logs = sorted((walkthrough["root"] / "runs" / "squad1" / "vdl").glob("vdlrecords.*.log"))
    tags = {tag for log in logs for tag in LogReader(file_path=str(log)).get_tags().get("scalar", [])}
    assert "eval/f1" in tags and "eval/exact" in tags, tags    # 3 steps: no train line (--logging-steps 30)
