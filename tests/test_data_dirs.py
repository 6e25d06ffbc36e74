"""Hostile and careless use of the pretraining commands, through the real CLI (issue 18).

pretrain-data, pretrain, distill and `evaluate pretraining` read a DATA_DIR (meta.json, token
shards, the tokenizer), model dirs and config files, and replace directories. Each row of CASES
runs `python -m mobilebert_paddle ARGV` in a subprocess under an address-space limit (`ulimit -v`,
so that a runaway allocation fails fast instead of swapping) and must give exactly one stderr
line `mobilebert CMD: error: ...` naming what is wrong, exit code 2, no traceback, no stdout;
a fresh output must not appear and nothing under the inputs root may change (no input deleted,
no staging directory left). The inputs are built with the CLI itself (pretrain-data, pretrain),
and hostile variants by editing what the README documents a DATA_DIR holds (meta.json and
.npy shards), so the tests do not depend on the package's internal layout.

The faults that are not one bad input (a kill at a stage boundary, SIGTERM, --resume after a
config file changed, a killed pretrain-data, a full disk, the warmup default, bench on a model
transformers cannot build) have their own tests below, also through the CLI.
"""

from __future__ import annotations

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
from typing import NamedTuple

import numpy as np
import pytest
from tiny_tasks import VOCAB, snapshot, write_colour_pairs

# Every case through the real CLI in a subprocess, and kill -9 / resume runs: the slow tier.
pytestmark = pytest.mark.slow

PARALLEL = 4
TIMEOUT = 240
ADDRESS_SPACE = 3 << 30          # `ulimit -v` of every case: Paddle needs ~1.5 GB of address space here
SEQ = 32                         # tokens a row of the training data
STEPS = ["--max-steps", "2", "--batch-size", "8", "--device", "cpu"]
TINY = dict(vocab_size=len(VOCAB), hidden_size=64, embedding_size=32, intra_bottleneck_size=32, intermediate_size=64,
            num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=64, num_feedforward_networks=1,
            attention_probs_dropout_prob=0.0, hidden_dropout_prob=0.0, initializer_range=0.2)
# Google's IB-BERT layout (queries and keys read the H-wide block input), tiny: transformers cannot build it.
IB_LAYOUT = dict(TINY, intra_bottleneck_size=128, use_bottleneck_attention=False, key_query_shared_bottleneck=False,
                 normalization_type="layer_norm")


class Case(NamedTuple):
    id: str
    argv: tuple            # arguments; "{name}" items are filled from the built inputs
    fragments: tuple       # each must appear in the one error line


def case(case_id: str, argv: str, *fragments: str) -> Case:
    return Case(case_id, tuple(argv.split()), fragments)


PRETRAIN = "pretrain --config {config} --output {out} " + " ".join(STEPS)
DISTILL = ("distill --teacher {teacher} --student {config} --output {out} --transfer-steps 2 --distill-steps 2 "
           "--batch-size 8 --device cpu")
EVALUATE = "evaluate pretraining --model {teacher} --output {out} --device cpu"

CASES = [
    # 1. an input inside the directory the command replaces: refused before any work ---------------
    case("distill-teacher-inside-output", "distill --teacher {run_a}/best --student {config} --data {data} "
         "--output {run_a} --overwrite --transfer-steps 2 --distill-steps 2 --batch-size 8 --device cpu",
         "holds --teacher"),
    case("pretrain-init-from-inside-output", "pretrain --init-from {run_b}/best --data {data} --output {run_b} "
         "--overwrite " + " ".join(STEPS), "holds --init-from"),
    case("pretrain-data-inside-output", "pretrain --config {config} --data {run_c}/data --output {run_c} --overwrite "
         + " ".join(STEPS), "holds --data"),
    case("pretrain-init-from-via-symlinked-output", "pretrain --init-from {run_d}/best --data {data} "
         "--output {link_to_run_d} --overwrite " + " ".join(STEPS), "holds --init-from"),
    case("pretrain-data-corpus-inside-output", "pretrain-data {data_e}/corpus.txt --tokenizer {tokenizer} "
         "--output {data_e} --overwrite", "holds the input file"),
    case("pretrain-data-tokenizer-inside-output", "pretrain-data {corpus} --tokenizer {data_f}/tokenizer "
         "--output {data_f} --overwrite", "holds --tokenizer"),
    case("finetune-model-inside-output", "finetune rte --model {run_g}/best --train {tsv} --output {run_g} "
         "--overwrite --max-steps 1 --batch-size 4 --max-seq-length 16 --device cpu", "holds --model"),
    case("evaluate-model-inside-output", "evaluate pretraining --model {eval_h}/model --data {data} "
         "--output {eval_h}", "holds --model"),
    case("export-calibration-inside-output", "export --model {teacher} --format openvino --quantize int8-static "
         "--calibration-data {export_i}/dev.json --output {export_i}", "holds --calibration-data"),
    # 4. memory and hangs: each ends within seconds under the address-space limit ---------------------
    case("pretrain-max-predictions-beyond-row", PRETRAIN + " --data {data} --max-predictions-per-seq 100000",
         "--max-predictions-per-seq 100000", str(SEQ)),
    case("pretrain-config-beyond-memory", "pretrain --config {config_4000_layers} --data {data} --output {out} "
         + " ".join(STEPS), "{config_4000_layers}", "parameters"),
    case("pretrain-meta-num-rows-1e9", PRETRAIN + " --data {meta_num_rows_1e9}", "num_rows 1000000000",
         "shard"),
    case("pretrain-meta-num-rows-1e5", PRETRAIN + " --data {meta_num_rows_1e5}", "num_rows 100000"),
    case("pretrain-batch-beyond-rows", PRETRAIN.replace("--batch-size 8", "--batch-size 100000") + " --data {data}",
         "--batch-size 100000", "rows"),
    case("pretrain-meta-vocab-size-1e12", PRETRAIN + " --data {meta_vocab_size_1e12}", "vocab_size"),
    # 5. a DATA_DIR is untrusted input: meta.json types and bounds, shard paths and contents ----------
    case("pretrain-meta-num-rows-string", PRETRAIN + " --data {meta_num_rows_lots}", "meta.json", "num_rows"),
    case("pretrain-meta-shards-string", PRETRAIN + " --data {meta_shards_x}", "meta.json", "shards"),
    case("pretrain-meta-shard-without-name", PRETRAIN + " --data {meta_shard_no_name}", "meta.json", "name"),
    case("pretrain-meta-special-ids-list", PRETRAIN + " --data {meta_special_ids_list}", "meta.json", "special_ids"),
    case("pretrain-meta-special-id-beyond-vocab", PRETRAIN + " --data {meta_mask_id_beyond}", "meta.json", "mask"),
    case("pretrain-meta-max-seq-length-string", PRETRAIN + " --data {meta_max_seq_length_string}", "max_seq_length"),
    case("pretrain-meta-rows-disagree", PRETRAIN + " --data {meta_shard_rows_negative}", "meta.json", "rows"),
    case("pretrain-shard-name-dotdot", PRETRAIN + " --data {shard_dotdot}", "outside"),
    case("pretrain-shard-name-absolute", PRETRAIN + " --data {shard_absolute}", "outside"),
    case("pretrain-shard-ids-beyond-vocab", PRETRAIN + " --data {ids_beyond_vocab}", "input_ids.npy", "59"),
    case("pretrain-shard-float-ids", PRETRAIN + " --data {ids_float}", "input_ids.npy", "float32"),
    case("pretrain-shard-length-0", PRETRAIN + " --data {length_0}", "lengths.npy"),
    case("pretrain-shard-length-beyond-row", PRETRAIN + " --data {length_beyond}", "lengths.npy", str(SEQ)),
    case("pretrain-shard-segment-beyond-length", PRETRAIN + " --data {segment_beyond}", "segment_a_lengths.npy"),
    case("pretrain-shard-nsp-label-2", PRETRAIN + " --data {label_2}", "next_sentence_labels.npy"),
    case("pretrain-vocab-not-utf8", PRETRAIN + " --data {vocab_latin1}", "vocab.txt", "UTF-8"),
    case("distill-shard-ids-beyond-vocab", DISTILL + " --data {ids_beyond_vocab}", "input_ids.npy"),
    case("distill-meta-shard-dotdot", DISTILL + " --data {shard_dotdot}", "outside"),
    case("evaluate-shard-ids-beyond-vocab", EVALUATE + " --data {ids_beyond_vocab}", "input_ids.npy"),
    case("evaluate-meta-num-rows-string", EVALUATE + " --data {meta_num_rows_lots}", "num_rows"),
    # 6. model and data agree (vocabulary and lengths) before any work -------------------------------
    case("evaluate-data-of-a-larger-vocabulary", EVALUATE + " --data {data_big_vocab}", "vocabulary"),
    case("evaluate-data-of-another-vocabulary", EVALUATE + " --data {data_other_vocab}", "vocabulary"),
    case("evaluate-rows-beyond-positions", EVALUATE + " --data {data_long}", "max_position_embeddings"),
    case("pretrain-dev-of-a-larger-vocabulary", PRETRAIN + " --data {data} --dev {data_big_vocab}", "--dev",
         "vocabulary"),
    case("pretrain-dev-of-another-vocabulary", PRETRAIN + " --data {data} --dev {data_other_vocab}", "--dev",
         "vocabulary"),
    case("pretrain-dev-rows-beyond-positions", PRETRAIN + " --data {data} --dev {data_long}", "--dev",
         "max_position_embeddings"),
    case("distill-dev-of-another-vocabulary", DISTILL + " --data {data} --dev {data_other_vocab}", "--dev",
         "vocabulary"),
    # 8. the rest ----------------------------------------------------------------------------------------
    case("pretrain-data-tokenizer-ids-with-a-gap", "pretrain-data {corpus} --tokenizer {tokenizer_gap} "
         "--output {out}", "tokenizer.json", "0.."),
    case("pretrain-data-tokenizer-id-overflow", "pretrain-data {corpus} --tokenizer {tokenizer_huge_id} "
         "--output {out}", "tokenizer.json"),
    case("evaluate-pretraining-max-seq-length", EVALUATE + " --data {data} --max-seq-length 512",
         "--max-seq-length"),
    case("pretrain-resume-state-beyond-total", PRETRAIN + " --data {data} --output {run_state_1e6} --resume",
         "step 1000000"),
    # 9. warmup longer than the run --------------------------------------------------------------------
    case("pretrain-warmup-beyond-steps", PRETRAIN + " --data {data} --warmup-steps 10", "--warmup-steps 10",
         "2 steps"),
    case("distill-warmup-beyond-stage-2", DISTILL + " --data {data} --warmup-steps 2", "--warmup-steps 2"),
]


# --------------------------------------------------------------------------------------------
# Inputs, built with the CLI (in this process) and edited as the README documents them
# --------------------------------------------------------------------------------------------

def cli(*argv) -> None:
    from mobilebert_paddle.cli import main

    assert main([str(arg) for arg in argv]) == 0, argv


def write_corpus(path: Path, words: list[str], documents: int = 30, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(documents):
        for _ in range(rng.integers(2, 7)):
            lines.append(" ".join(rng.choice(words, size=rng.integers(3, 10))))
        lines.append("")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_tokenizer(directory: Path, tokens: list[str]) -> Path:
    directory.mkdir(parents=True)
    (directory / "vocab.txt").write_text("".join(token + "\n" for token in tokens), encoding="utf-8")
    return directory


def edit_meta(source: Path, target: Path, **changes) -> Path:
    shutil.copytree(source, target)
    meta = json.loads((target / "meta.json").read_text())
    meta.update(changes)
    (target / "meta.json").write_text(json.dumps(meta))
    return target


def edit_array(source: Path, target: Path, array: str, edit) -> Path:
    """A copy of DATA_DIR `source` whose shard-00000.{array}.npy is edit(the array)."""
    shutil.copytree(source, target)
    path = target / f"shard-00000.{array}.npy"
    np.save(path, edit(np.load(path)))
    return target


def build_data_inputs(root: Path, paths: dict) -> None:
    words = VOCAB[5:]
    paths["tokenizer"] = write_tokenizer(root / "tokenizer", VOCAB)
    paths["corpus"] = write_corpus(root / "corpus.txt", words)
    paths["data"] = root / "data"
    cli("pretrain-data", paths["corpus"], "--tokenizer", paths["tokenizer"], "--output", paths["data"],
        "--max-seq-length", SEQ)
    paths["config"] = root / "tiny.json"
    paths["config"].write_text(json.dumps(TINY))
    cli("pretrain", "--config", paths["config"], "--data", paths["data"], "--output", root / "run", *STEPS)
    paths["teacher"] = root / "run" / "best"
    # Other tokenizers: a larger vocabulary whose extra words the corpus uses, one of the same size in another
    # order, and rows longer than the model's 64 positions.
    extra = [f"x{index}" for index in range(30)]
    big = write_tokenizer(root / "tokenizer_big", VOCAB + extra)
    cli("pretrain-data", write_corpus(root / "corpus_big.txt", extra, seed=1), "--tokenizer", big, "--output",
        root / "data_big_vocab", "--max-seq-length", SEQ)
    other = write_tokenizer(root / "tokenizer_other", VOCAB[:5] + VOCAB[5:][::-1])
    cli("pretrain-data", paths["corpus"], "--tokenizer", other, "--output", root / "data_other_vocab",
        "--max-seq-length", SEQ)
    long_corpus = root / "corpus_long.txt"
    long_corpus.write_text("\n".join(" ".join(words) for _ in range(6)) + "\n\n" + paths["corpus"].read_text())
    cli("pretrain-data", long_corpus, "--tokenizer", paths["tokenizer"], "--output", root / "data_long",
        "--max-seq-length", 128, "--short-seq-prob", 0)
    for name in ("data_big_vocab", "data_other_vocab", "data_long"):
        paths[name] = root / name


def build_hostile_data(root: Path, paths: dict) -> None:
    data = paths["data"]
    meta = json.loads((data / "meta.json").read_text())
    shard = meta["shards"][0]
    for name, changes in {
        "meta_num_rows_1e9": dict(num_rows=10**9, shards=[{**shard, "rows": 10**9}]),
        "meta_num_rows_1e5": dict(num_rows=10**5),
        "meta_vocab_size_1e12": dict(vocab_size=10**12),
        "meta_num_rows_lots": dict(num_rows="lots"),
        "meta_shards_x": dict(shards="x"),
        "meta_shard_no_name": dict(shards=[{"rows": shard["rows"]}]),
        "meta_special_ids_list": dict(special_ids=[0, 1, 2, 3, 4]),
        "meta_mask_id_beyond": dict(special_ids={**meta["special_ids"], "mask": 10**6}),
        "meta_max_seq_length_string": dict(max_seq_length="32"),
        "meta_shard_rows_negative": dict(shards=[{**shard, "rows": -1}]),
        "shard_dotdot": dict(shards=[{**shard, "name": "../data/" + shard["name"]}]),
        "shard_absolute": dict(shards=[{**shard, "name": str(data / shard["name"])}]),
    }.items():
        paths[name] = edit_meta(data, root / name, **changes)

    def set_first(column: str, value):
        def edit(array):
            array = array.copy()
            if array.ndim == 2:
                array[0, 1] = value
            else:
                array[0] = value
            return array
        return edit

    for name, array, edit in (
        ("ids_beyond_vocab", "input_ids", set_first("input_ids", len(VOCAB))),
        ("ids_float", "input_ids", lambda ids: ids.astype(np.float32)),
        ("length_0", "lengths", set_first("lengths", 0)),
        ("length_beyond", "lengths", set_first("lengths", SEQ + 1)),
        ("segment_beyond", "segment_a_lengths", lambda lengths: lengths + SEQ),
        ("label_2", "next_sentence_labels", set_first("next_sentence_labels", 2)),
    ):
        paths[name] = edit_array(data, root / name, array, edit)
    latin1 = paths["vocab_latin1"] = shutil.copytree(data, root / "vocab_latin1")
    (latin1 / "vocab.txt").write_bytes((latin1 / "vocab.txt").read_bytes().replace(b"w1\n", b"w\xe91\n"))


def build_other_inputs(root: Path, paths: dict) -> None:
    # Directories a command would replace, each holding one of its inputs (one copy per case).
    for name in ("run_a", "run_b", "run_c", "run_d", "run_g"):
        shutil.copytree(root / "run", root / name)
        paths[name] = root / name
    shutil.copytree(paths["data"], root / "run_c" / "data")
    (root / "link_to_run_d").symlink_to(root / "run_d")
    paths["link_to_run_d"] = root / "link_to_run_d"
    for name in ("data_e", "data_f"):
        paths[name] = shutil.copytree(paths["data"], root / name)
    shutil.copy(paths["corpus"], root / "data_e" / "corpus.txt")
    shutil.copytree(paths["tokenizer"], root / "data_f" / "tokenizer")
    paths["eval_h"] = root / "eval_h"
    shutil.copytree(paths["teacher"], root / "eval_h" / "model")
    paths["tsv"] = write_colour_pairs(root / "train.tsv", 8, seed=0)
    paths["export_i"] = root / "export_i"
    paths["export_i"].mkdir()
    shutil.copy(paths["tsv"], paths["export_i"] / "dev.json")
    # A config whose parameters cannot fit in memory; a checkpoint at a step beyond its run.
    paths["config_4000_layers"] = root / "layers_4000.json"
    paths["config_4000_layers"].write_text(json.dumps(dict(TINY, num_hidden_layers=4000, hidden_size=2048,
                                                           intra_bottleneck_size=2048, intermediate_size=8192,
                                                           num_attention_heads=16)))
    state_run = paths["run_state_1e6"] = shutil.copytree(root / "run", root / "run_state_1e6")
    state_path = state_run / "last" / "trainer_state.json"
    state = json.loads(state_path.read_text())
    state["state"]["step"] = 10**6
    state_path.write_text(json.dumps(state))
    # Tokenizers whose tokenizer.json ids are not 0..N-1.
    tokenizer_json = json.loads((paths["data"] / "tokenizer.json").read_text())
    for name, shift in (("tokenizer_gap", lambda index: index if index < 10 else index + 5),
                        ("tokenizer_huge_id", lambda index: index if index else 2**20)):
        directory = paths[name] = shutil.copytree(paths["data"], root / name,
                                                  ignore=lambda _, names: [n for n in names if n.endswith(".npy")])
        changed = json.loads(json.dumps(tokenizer_json))
        changed["model"]["vocab"] = {token: shift(index) for token, index in changed["model"]["vocab"].items()}
        (directory / "tokenizer.json").write_text(json.dumps(changed))


# --------------------------------------------------------------------------------------------
# Running the cases
# --------------------------------------------------------------------------------------------



def user_environment() -> dict:
    """As a user runs it: Paddle's thread advice and Python warnings are not silenced."""
    return {key: value for key, value in os.environ.items() if key not in ("PYTHONWARNINGS", "HF_HUB_OFFLINE")}


def limited_address_space() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def run_cli(argv: list, cwd: Path | None = None, env: dict | None = None, **options) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mobilebert_paddle", *map(str, argv)], capture_output=True,
                          text=True, env=env or {**user_environment(), "OMP_NUM_THREADS": "1"}, timeout=TIMEOUT,
                          cwd=cwd, **options)


class Results(NamedTuple):
    completed: dict          # case id -> CompletedProcess
    seconds: dict            # case id -> wall seconds
    outputs: Path
    paths: dict
    before: dict
    after: dict


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("inputs")
    paths: dict = {"root": root}
    build_data_inputs(root, paths)
    build_hostile_data(root, paths)
    build_other_inputs(root, paths)
    return paths


@pytest.fixture(scope="module")
def results(inputs, tmp_path_factory) -> Results:
    outputs = tmp_path_factory.mktemp("outputs")
    before = snapshot(inputs["root"])

    def run_case(row: Case):
        values = {key: str(value) for key, value in {**inputs, "out": outputs / row.id}.items()}
        started = time.perf_counter()
        completed = run_cli([part.format(**values) for part in row.argv], outputs, preexec_fn=limited_address_space)
        return completed, time.perf_counter() - started

    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        futures = {row.id: pool.submit(run_case, row) for row in CASES}
        done = {case_id: future.result() for case_id, future in futures.items()}
    return Results({key: value[0] for key, value in done.items()}, {key: value[1] for key, value in done.items()},
                   outputs, inputs, before, snapshot(inputs["root"]))


@pytest.mark.parametrize("row", CASES, ids=[row.id for row in CASES])
def test_hostile_input_gives_one_line_and_exit_2(row: Case, results: Results):
    completed = results.completed[row.id]
    command = row.argv[0]
    lines = completed.stderr.splitlines()
    assert "Traceback" not in completed.stderr, completed.stderr[-3000:]
    assert len(lines) == 1, completed.stderr[-3000:]
    assert lines[0].startswith(f"mobilebert {command}: error: "), lines[0]
    values = {key: str(value) for key, value in results.paths.items()}
    for fragment in row.fragments:
        assert fragment.format(**values) in lines[0], lines[0]
    assert completed.returncode == 2, completed.stderr
    assert completed.stdout == ""
    assert not (results.outputs / row.id).exists()
    assert results.seconds[row.id] < TIMEOUT / 2      # not a timing claim: a hang would reach TIMEOUT


def test_no_input_changed_and_nothing_left_behind(results: Results):
    changed = {key for key in set(results.before) | set(results.after)
               if results.before.get(key) != results.after.get(key)}
    assert not changed, sorted(changed)[:10]
    assert sorted(path.name for path in results.outputs.iterdir()) == []


# --------------------------------------------------------------------------------------------
# Faults that are not one bad input
# --------------------------------------------------------------------------------------------

def assert_one_line_error(completed: subprocess.CompletedProcess, command: str, *fragments: str) -> str:
    lines = completed.stderr.splitlines()
    assert completed.returncode == 2 and "Traceback" not in completed.stderr, completed.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith(f"mobilebert {command}: error: "), completed.stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def test_resume_after_the_config_file_changed_names_the_field(inputs, tmp_path):
    config = tmp_path / "model.json"
    config.write_text(json.dumps(TINY))
    argv = ["pretrain", "--config", config, "--data", inputs["data"], "--output", tmp_path / "run", *STEPS]
    assert run_cli(argv).returncode == 0
    config.write_text(json.dumps({**TINY, "hidden_dropout_prob": 0.1}))       # edited in place
    before = snapshot(tmp_path / "run")
    completed = run_cli(argv + ["--resume"], env=user_environment())
    assert_one_line_error(completed, "pretrain", f"--config {config}", "hidden_dropout_prob was 0.0, now 0.1")
    assert snapshot(tmp_path / "run") == before


def test_sigterm_during_pretrain_is_one_line_and_exit_143(inputs, tmp_path):
    """As a user runs it (`python -m mobilebert_paddle`, nothing imported before the CLI)."""
    run = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "mobilebert_paddle", "pretrain", "--config", inputs["config"],
                                "--data", inputs["data"], "--output", str(run), "--max-steps", "100000",
                                "--batch-size", "8", "--save-steps", "1", "--device", "cpu"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**user_environment(), "OMP_NUM_THREADS": "1"})
    checkpoint = run / "last" / "trainer_state.json"
    deadline = time.time() + TIMEOUT
    while not checkpoint.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 143, stderr[-3000:]
    assert "Traceback" not in stderr
    assert stderr.splitlines()[-1].startswith("mobilebert pretrain: interrupted by SIGTERM at step "), stderr[-3000:]


def test_killed_pretrain_data_leaves_no_staging_after_the_next_run(inputs, tmp_path):
    corpus = write_corpus(tmp_path / "big.txt", VOCAB[5:], documents=40_000)
    output = tmp_path / "data"
    argv = [sys.executable, "-m", "mobilebert_paddle", "pretrain-data", str(corpus), "--tokenizer",
            str(inputs["tokenizer"]), "--output", str(output), "--max-seq-length", str(SEQ)]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=user_environment())
    deadline = time.time() + TIMEOUT
    while not list(tmp_path.glob(".data.*")) and process.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "pretrain-data ended before it was killed: give it more text"
    assert list(tmp_path.glob(".data.*"))                  # the kill left its staging directory
    small = write_corpus(tmp_path / "small.txt", VOCAB[5:])
    completed = run_cli(["pretrain-data", small, "--tokenizer", inputs["tokenizer"], "--output", output,
                         "--max-seq-length", SEQ])
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["big.txt", "data", "small.txt"]


def limited_file_size(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_full_disk_during_pretrain_data_names_the_directory(inputs, tmp_path):
    output = tmp_path / "data"
    completed = run_cli(["pretrain-data", inputs["corpus"], "--tokenizer", inputs["tokenizer"], "--output", output,
                         "--max-seq-length", SEQ], env=user_environment(), preexec_fn=limited_file_size(1000))
    assert_one_line_error(completed, "pretrain-data", f"{output}: cannot write", "nothing was written")
    assert sorted(path.name for path in tmp_path.iterdir()) == []


def test_warmup_defaults_to_a_fraction_of_the_steps(inputs, tmp_path):
    run = tmp_path / "run"
    completed = run_cli(["pretrain", "--config", inputs["config"], "--data", inputs["data"], "--output", run,
                         "--max-steps", 200, "--batch-size", 8, "--device", "cpu", "--eval-steps", 0,
                         "--logging-steps", 100])
    assert completed.returncode == 0, completed.stderr[-3000:]
    train_config = json.loads((run / "train_config.json").read_text())
    assert train_config["warmup_steps"] == 2                   # 1% of 200 (Google: 10k of 1M)
    learning_rates = [json.loads(line)["lr"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert learning_rates[0] > 0.5 * 1.5e-3                   # past warmup long before step 100


def test_bench_on_a_layout_transformers_cannot_build_benches_the_rest(inputs, tmp_path):
    config = tmp_path / "ib.json"
    config.write_text(json.dumps(IB_LAYOUT))
    assert run_cli(["pretrain", "--config", config, "--data", inputs["data"], "--output", tmp_path / "run",
                    *STEPS]).returncode == 0
    completed = run_cli(["bench", "--model", tmp_path / "run" / "best", "--batch", 1, "--seq", 16, "--runs", 1,
                         "--warmup", 0, "--pause", 0, "--backends", "torch,paddle-eager", "--output",
                         tmp_path / "bench"], env=user_environment())
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "Traceback" not in completed.stderr
    notes = [line for line in completed.stderr.splitlines() if "PyTorch" in line]
    assert len(notes) == 1 and "cannot be built" in notes[0], completed.stderr[-3000:]
    report = json.loads((tmp_path / "bench" / "bench.json").read_text())
    assert list(report["shapes"]["1x16"]["backends"]) == ["paddle-eager"]


# --------------------------------------------------------------------------------------------
# kill -9 at every boundary of distill, then --resume: byte-identical to the uninterrupted run
# --------------------------------------------------------------------------------------------

# The real CLI, killed (SIGKILL, from inside: exactly when wanted) right after last/ holds step STOP.
KILLED_AT = """
import os, signal, sys
from mobilebert_paddle import cli
from mobilebert_paddle.training import trainer
stop = int(os.environ["STOP_AT_STEP"])
save_last = trainer.Trainer.save_last
def save_then_die(self):
    save_last(self)
    if self.state.step == stop:
        os.kill(os.getpid(), signal.SIGKILL)
trainer.Trainer.save_last = save_then_die
raise SystemExit(cli.main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def distill_reference(inputs, tmp_path_factory) -> tuple[list, Path]:
    """2 layers x 2 transfer steps, then 4 distillation steps, LAMB, dropout on, last/ at every step."""
    root = tmp_path_factory.mktemp("distill")
    student = root / "student.json"
    student.write_text(json.dumps({**TINY, "attention_probs_dropout_prob": 0.1}))
    argv = ["distill", "--teacher", inputs["teacher"], "--student", student, "--data", inputs["data"],
            "--transfer-steps", 4, "--distill-steps", 4, "--batch-size", 8, "--learning-rate", 1e-2,
            "--warmup-steps", 1, "--save-steps", 1, "--logging-steps", 1, "--device", "cpu"]
    reference = root / "uninterrupted"
    completed = run_cli(argv + ["--output", reference])
    assert completed.returncode == 0, completed.stderr[-3000:]
    return argv, reference


def run_files(run: Path) -> dict:
    return {name: (run / "last" / name).read_bytes() for name in ("model.safetensors", "optimizer.safetensors")}


@pytest.mark.parametrize("stop", [2, 4, 5], ids=["phase-1-start", "stage-2-start", "after-stage-2-start"])
def test_kill_at_a_boundary_then_resume_is_byte_identical(distill_reference, tmp_path, stop):
    argv, reference = distill_reference
    run = tmp_path / "killed"
    killed = subprocess.run([sys.executable, "-c", KILLED_AT, *map(str, argv), "--output", str(run)],
                            capture_output=True, text=True, timeout=TIMEOUT,
                            env={**user_environment(), "OMP_NUM_THREADS": "1", "STOP_AT_STEP": str(stop)})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert json.loads((run / "last" / "trainer_state.json").read_text())["state"]["step"] == stop
    resumed = run_cli(argv + ["--output", run, "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert run_files(run) == run_files(reference)
    assert (run / "metrics.jsonl").read_text() == (reference / "metrics.jsonl").read_text()


# --------------------------------------------------------------------------------------------
# A corrupt OpenVINO export: the reason in one line, no log lines of OpenVINO's frontends
# --------------------------------------------------------------------------------------------

def test_corrupt_openvino_model_xml_is_one_line_with_the_reason(inputs, tmp_path):
    pytest.importorskip("openvino")
    run = tmp_path / "run"
    assert run_cli(["finetune", "rte", "--model", inputs["teacher"], "--train", inputs["tsv"], "--output", run,
                    "--max-steps", 1, "--batch-size", 4, "--max-seq-length", 16, "--device", "cpu"]).returncode == 0
    export = tmp_path / "openvino"
    completed = run_cli(["export", "--model", run / "best", "--format", "openvino", "--output", export])
    assert completed.returncode == 0, completed.stderr[-3000:]
    xml = (export / "model.xml").read_bytes()
    for name, content, reason in (("truncated", xml[:len(xml) // 2], "not valid XML"),
                                  ("garbage", b"garbage\n", "not valid XML"),
                                  ("not-ir", b"<graph/>\n", "not an OpenVINO IR")):
        broken = shutil.copytree(export, tmp_path / name)
        (broken / "model.xml").write_bytes(content)
        completed = run_cli(["predict", "--model", broken, "--backend", "openvino", "--text", "the w1 is red"],
                            env=user_environment())
        assert_one_line_error(completed, "predict", f"{broken / 'model.xml'}: unreadable openvino model", reason)


# --------------------------------------------------------------------------------------------
# The parameter count behind the memory check equals the built models'
# --------------------------------------------------------------------------------------------

def test_parameter_count_equals_the_built_models():
    import math

    from mobilebert_paddle.model.config import MobileBertConfig
    from mobilebert_paddle.model.network import MobileBertForPreTraining
    from mobilebert_paddle.model.size import parameter_count

    for changes in ({}, {"normalization_type": "layer_norm"}, {"use_bottleneck": False, "hidden_size": 32},
                    {"use_bottleneck_attention": True}, {"key_query_shared_bottleneck": False},
                    {"trigram_input": False}, {"num_feedforward_networks": 4}, {"classifier_activation": False},
                    dict(IB_LAYOUT)):
        config = MobileBertConfig(**{**TINY, **changes})
        model = MobileBertForPreTraining(config)
        assert parameter_count(config) == sum(math.prod(param.shape) for param in model.parameters()), changes
