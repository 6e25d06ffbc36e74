"""Hostile model directories and input files, through the real CLI (issue 12, model-dir half).

Each row of CASES runs `python -m mobilebert_paddle ARGV` in a subprocess and must give exactly
one stderr line `mobilebert CMD: error: ...`, exit code 2, no traceback and no stdout; its
output path must not appear; no pickled payload may run (the payload would create a marker
file); and nothing under the inputs root may change (the source of `convert D D` stays
byte-identical, no staging directory is left). Rows are grouped by class; a row with
fragment None is a variant no message-specific check names: it must still be one line,
because the checks work by class (type, range, size, path, pickle), not by case.

The faults that are not one bad input (a full disk, concurrent converts, a symlinked
destination) have their own tests below, also through the CLI.
"""

from __future__ import annotations

import json
import os
import pickle
import resource
import shutil
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import pytest
from tiny_tasks import (
    TINY_CONFIG,
    VOCAB,
    make_tiny_model_dir,
    make_tokenizer,
    snapshot,
    write_colour_pairs,
    write_marker_squad,
)

# Every case through the real CLI in a subprocess: the slow tier.
pytestmark = pytest.mark.slow

PARALLEL = 4
TIMEOUT = 120
QUESTION = ["--question", "what follows m2 ?", "--context", "w1 m2 w3 w4"]


class Case(NamedTuple):
    id: str
    argv: tuple            # arguments; "{name}" items are filled from the built inputs
    fragment: str | None   # must appear in the one error line; None: a variant, any one line will do


def case(case_id: str, argv: str, fragment: str | None, *extra: str) -> Case:
    return Case(case_id, (*argv.split(" "), *extra), fragment)


CASES = [
    # 1. the destination is the source, inside it or holds it: refused before any work ------------
    case("convert-into-itself", "convert {hf_copy} {hf_copy}", "is the source directory itself"),
    case("convert-into-subdir", "convert {hf_copy} {hf_copy}/paddle", "inside the source directory"),
    case("convert-into-parent", "convert {nested}/hf {nested}", "holds the source directory"),
    case("convert-into-link-to-source", "convert {hf_copy} {link_to_hf_copy}", None),
    case("convert-to-hf-into-itself", "convert {qa_copy} {qa_copy}/.. --to hf", None),
    case("export-into-model-subdir", "export --model {qa} --output {qa}/onnx", "inside the model directory"),
    # 2. hostile pickles: refused with the reason, never torch's advice, payload never run ---------
    case("convert-hostile-bin", "convert {hostile_bin} {out}", "contains a pickled object of type getattr"),
    case("compare-hostile-bin", "compare {hostile_bin} {hf_as_paddle}", "only tensors are loaded"),
    case("convert-hostile-pdparams", "convert {hostile_pdparams} {out}", "contains a pickled object of type"),
    case("convert-hostile-bin-system", "convert {hostile_bin_system} {out}", None),
    case("convert-hostile-bin-shard", "convert {hostile_bin_shard} {out}", None),
    # 3. sizes no checkpoint has: refused on shapes before any model is built ----------------------
    case("convert-million-layers", "convert {hf_layers_1e6} {out}", "num_hidden_layers 1000000 is beyond"),
    case("predict-million-layers", "predict --model {qa_layers_1e6}", "num_hidden_layers 1000000", *QUESTION),
    case("convert-huge-vocab", "convert {hf_vocab_1e12} {out}", "vocab_size 1000000000000 is beyond"),
    case("convert-huge-intermediate", "convert {hf_intermediate_3e9} {out}", "intermediate_size 3000000000"),
    case("predict-billion-labels", "predict --model {cls_labels_1e9} --text hello", "num_labels must be an integer"),
    case("convert-three-layers-of-two", "convert {hf_layers_3} {out}", "the weights hold 2 layers"),
    case("convert-vocab-beyond-weights", "convert {hf_vocab_5000} {out}", None),
    case("predict-intermediate-beyond-weights", "predict --model {qa_intermediate_100000}", None, *QUESTION),
    # 4. inputs read with a bound; JSON nested too deeply -----------------------------------------
    case("finetune-squad-dev-zero", "finetune squad1 --model {base} --train /dev/zero --output {out}",
         "more than any legitimate"),
    case("finetune-tsv-dev-zero", "finetune rte --model {base} --train /dev/zero --output {out}",
         "more than any legitimate row"),
    case("squad-eval-dev-zero", "squad-eval /dev/zero {predictions}", "more than any legitimate"),
    case("evaluate-dev-zero", "evaluate squad1 --model {qa} --data /dev/zero --output {out}", None),
    case("squad-eval-predictions-dev-zero", "squad-eval {squad} /dev/zero", None),
    case("convert-deep-config", "convert {hf_deep_config} {out}", "nested too deeply"),
    case("finetune-deep-squad", "finetune squad1 --model {base} --train {deep_json} --output {out}",
         "nested too deeply"),
    case("squad-eval-deep-predictions", "squad-eval {squad} {deep_json}", None),
    case("predict-deep-tokenizer-config", "predict --model {qa_deep_tokenizer_config}", None, *QUESTION),
    # 5. every path a directory references stays inside it ---------------------------------------
    case("convert-index-to-etc-passwd", "convert {index_etc_passwd} {out}", "outside"),
    case("predict-manifest-to-etc-passwd", "predict --model {onnx_manifest_etc_passwd} --backend onnx",
         "outside", *QUESTION),
    case("convert-bin-index-dotdot", "convert {bin_index_dotdot} {out}", None),
    case("predict-manifest-dotdot", "predict --model {onnx_manifest_dotdot} --backend onnx", None, *QUESTION),
    # 6. what used to be tracebacks ------------------------------------------------------------
    case("convert-pdparams-list", "convert {pdparams_list} {out}", "holds a list, not a dict"),
    case("convert-pdparams-tuple", "convert {pdparams_tuple} {out}", "holds a tuple, not a dict"),
    case("convert-pdparams-dict-of-ints", "convert {pdparams_ints} {out}", "is of type int, not a named tensor"),
    case("convert-bin-list", "convert {bin_list} {out}", None),
    case("convert-bin-dict-of-ints", "convert {bin_ints} {out}", None),
    case("convert-weight-map-not-string", "convert {weight_map_int} {out}", "must be a non-empty string"),
    case("convert-vocab-size-0", "convert {hf_vocab_size_0} {out}", "vocab_size must be > 0"),
    case("convert-max-positions-negative", "convert {hf_max_positions_negative} {out}",
         "max_position_embeddings must be > 0"),
    case("convert-type-vocab-0", "convert {hf_type_vocab_size_0} {out}", "type_vocab_size must be > 0"),
    case("convert-num-labels-three", "convert {hf_num_labels_three} {out}", "num_labels must be an integer"),
    case("convert-string-dropout", "convert {hf_dropout_string} {out}", "hidden_dropout_prob must be a finite"),
    case("convert-nan-eps", "convert {hf_eps_nan} {out}", "NaN"),
    case("convert-dropout-above-one", "convert {hf_dropout_2} {out}", None),
    case("convert-bool-not-bool", "convert {hf_bottleneck_yes} {out}", None),
    case("convert-heads-not-int", "convert {hf_heads_float} {out}", None),
    case("predict-cls-token-object", "predict --model {qa_cls_token_object}", "cls_token must be a token", *QUESTION),
    case("predict-mask-token-list", "predict --model {qa_mask_token_list}", None, *QUESTION),
    case("predict-vocab-beyond-config", "predict --model {qa_long_vocab}", "vocab_size", *QUESTION),
    case("finetune-vocab-beyond-config", "finetune rte --model {base_long_vocab} --train {tsv} --output {out}",
         "vocab_size"),
    case("finetune-duplicate-vocab-line", "finetune rte --model {base_duplicate_vocab} --train {tsv} --output {out}",
         "repeats line"),
    case("predict-duplicate-vocab-line", "predict --model {qa_duplicate_vocab}", None, *QUESTION),
    case("predict-truncated-onnx", "predict --model {onnx_truncated} --backend onnx", "unreadable onnx model",
         *QUESTION),
    case("evaluate-empty-pdiparams", "evaluate squad1 --model {paddle_empty_params} --backend paddle "
         "--data {squad} --output {out}", "unreadable paddle model"),
    case("predict-truncated-model-json", "predict --model {paddle_truncated_json} --backend paddle", None, *QUESTION),
    case("finetune-three-labels-on-rte", "finetune rte --model {cls3} --train {tsv} --output {out}",
         "the model has 3 labels"),
    case("finetune-three-labels-on-stsb", "finetune stsb --model {cls3} --train {tsv} --output {out}", None),
]


# --------------------------------------------------------------------------------------------
# Inputs, built once in-process
# --------------------------------------------------------------------------------------------

class Payload:
    """Unpickling this runs code: it creates `marker` (what must never happen)."""

    def __init__(self, marker: Path, via_system: bool = False):
        self.marker, self.via_system = marker, via_system

    def __reduce__(self):
        if self.via_system:
            return (os.system, (f"touch {self.marker}",))
        return (Path.touch, (self.marker,))


def copy_dir(source: Path, directory: Path, drop: tuple = ()) -> Path:
    shutil.copytree(source, directory, ignore=lambda _, names: [name for name in names if name in drop])
    return directory


def edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def with_config(source: Path, directory: Path, **changes) -> Path:
    copy_dir(source, directory)
    edit_json(directory / "config.json", **changes)
    return directory


def save_head(directory: Path, head: str, **config_changes) -> Path:
    import paddle

    from mobilebert_paddle.model import network as model_module
    from mobilebert_paddle.model.config import MobileBertConfig

    paddle.seed(0)
    config = MobileBertConfig(vocab_size=len(VOCAB), **{**TINY_CONFIG, "max_position_embeddings": 384,
                                                        **config_changes})
    getattr(model_module, head)(config).save_pretrained(directory, tokenizer=make_tokenizer())
    return directory


def build_hf_inputs(root: Path, paths: dict, marker: Path) -> None:
    import torch
    from reference import make_hf_model, save_hf

    from mobilebert_paddle.model.convert import convert

    model = make_hf_model("MobileBertForQuestionAnswering")
    hf = paths["hf"] = save_hf(model, root / "hf")
    paths["hf_copy"] = copy_dir(hf, root / "hf_copy")
    (root / "link_to_hf_copy").symlink_to(paths["hf_copy"])
    paths["link_to_hf_copy"] = root / "link_to_hf_copy"
    (root / "nested").mkdir()
    copy_dir(hf, root / "nested" / "hf")
    paths["nested"] = root / "nested"
    convert(hf, root / "hf_as_paddle")
    paths["hf_as_paddle"] = root / "hf_as_paddle"
    config_changes = {"layers_1e6": dict(num_hidden_layers=10**6), "vocab_1e12": dict(vocab_size=10**12),
                      "intermediate_3e9": dict(intermediate_size=3 * 10**9), "layers_3": dict(num_hidden_layers=3),
                      "vocab_5000": dict(vocab_size=5000), "vocab_size_0": dict(vocab_size=0),
                      "max_positions_negative": dict(max_position_embeddings=-1),
                      "type_vocab_size_0": dict(type_vocab_size=0), "num_labels_three": dict(num_labels="three"),
                      "dropout_string": dict(hidden_dropout_prob="0.1"),
                      "eps_nan": dict(layer_norm_eps=float("nan")),
                      "dropout_2": dict(attention_probs_dropout_prob=2),
                      "bottleneck_yes": dict(use_bottleneck="yes"),
                      "heads_float": dict(num_attention_heads=2.5)}
    for name, changes in config_changes.items():
        paths[f"hf_{name}"] = with_config(hf, root / f"hf_{name}", **changes)
    paths["hf_deep_config"] = copy_dir(hf, root / "hf_deep_config")
    (paths["hf_deep_config"] / "config.json").write_text("[" * 100_000 + "]" * 100_000)

    def bin_dir(name: str, state) -> Path:
        directory = copy_dir(hf, root / name, drop=("model.safetensors",))
        torch.save(state, directory / "pytorch_model.bin")
        return directory

    state = model.state_dict()
    paths["hostile_bin"] = bin_dir("hostile_bin", {**state, "payload": Payload(marker)})
    paths["hostile_bin_system"] = bin_dir("hostile_bin_system", {**state, "payload": Payload(marker, True)})
    paths["bin_list"] = bin_dir("bin_list", list(state.values()))
    paths["bin_ints"] = bin_dir("bin_ints", {key: 3 for key in state})
    shard = paths["hostile_bin_shard"] = copy_dir(hf, root / "hostile_bin_shard", drop=("model.safetensors",))
    torch.save({"payload": Payload(marker)}, shard / "part-1.bin")
    write_index(shard / "pytorch_model.bin.index.json", {key: "part-1.bin" for key in state})

    def indexed(name: str, index_name: str, target) -> Path:
        directory = copy_dir(hf, root / name, drop=("model.safetensors",))
        write_index(directory / index_name, {key: target for key in state})
        return directory

    paths["index_etc_passwd"] = indexed("index_etc_passwd", "model.safetensors.index.json", "/etc/passwd")
    paths["bin_index_dotdot"] = indexed("bin_index_dotdot", "pytorch_model.bin.index.json",
                                        "../hostile_bin/pytorch_model.bin")
    paths["weight_map_int"] = indexed("weight_map_int", "model.safetensors.index.json", 7)


def write_index(path: Path, weight_map: dict) -> None:
    path.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def build_paddle_inputs(root: Path, paths: dict, marker: Path) -> None:
    paths["base"] = make_tiny_model_dir(root / "base", max_position_embeddings=384)
    qa = paths["qa"] = save_head(root / "qa", "MobileBertForQuestionAnswering")
    paths["qa_copy"] = copy_dir(qa, root / "qa_copy")
    paths["cls3"] = save_head(root / "cls3", "MobileBertForSequenceClassification",
                              id2label={0: "contradiction", 1: "entailment", 2: "neutral"})
    paths["cls_labels_1e9"] = copy_dir(paths["cls3"], root / "cls_labels_1e9")
    config = json.loads((paths["cls_labels_1e9"] / "config.json").read_text())
    config.pop("id2label"), config.pop("label2id")
    (paths["cls_labels_1e9"] / "config.json").write_text(json.dumps({**config, "num_labels": 10**9}))
    paths["qa_layers_1e6"] = with_config(qa, root / "qa_layers_1e6", num_hidden_layers=10**6)
    paths["qa_intermediate_100000"] = with_config(qa, root / "qa_intermediate_100000", intermediate_size=100_000)
    for name, token in (("cls_token_object", {}), ("mask_token_list", [1])):
        directory = paths[f"qa_{name}"] = copy_dir(qa, root / f"qa_{name}")
        edit_json(directory / "tokenizer_config.json", **{name.rsplit("_", 1)[0]: token})
    paths["qa_deep_tokenizer_config"] = copy_dir(qa, root / "qa_deep_tokenizer_config")
    (paths["qa_deep_tokenizer_config"] / "tokenizer_config.json").write_text("{\"a\":" * 100_000 + "1" + "}" * 100_000)
    for source, name in ((qa, "qa"), (paths["base"], "base")):
        longer = paths[f"{name}_long_vocab"] = copy_dir(source, root / f"{name}_long_vocab", drop=("tokenizer.json",))
        with open(longer / "vocab.txt", "a", encoding="utf-8") as handle:
            handle.write("".join(f"extra{index}\n" for index in range(20)))
        repeated = paths[f"{name}_duplicate_vocab"] = copy_dir(source, root / f"{name}_duplicate_vocab",
                                                               drop=("tokenizer.json",))
        with open(repeated / "vocab.txt", "a", encoding="utf-8") as handle:
            handle.write("w3\n")
    seed = copy_dir(paths["hf"], root / "hostile_pdparams", drop=("model.safetensors",))
    (seed / "model_state.pdparams").write_bytes(pickle.dumps({"weight": Payload(marker)}))
    paths["hostile_pdparams"] = seed
    for name, value in (("list", [1, 2]), ("tuple", (1, 2)), ("ints", {"weight": 1})):
        directory = paths[f"pdparams_{name}"] = copy_dir(paths["hf"], root / f"pdparams_{name}",
                                                         drop=("model.safetensors",))
        (directory / "model_state.pdparams").write_bytes(pickle.dumps(value))


def build_export_inputs(root: Path, paths: dict) -> None:
    from mobilebert_paddle.inference.export import export_model

    export_model(paths["qa"], root / "onnx", "onnx")
    export_model(paths["qa"], root / "paddle_export", "paddle")
    for name, target in (("etc_passwd", "/etc/passwd"), ("dotdot", "../hf/model.safetensors")):
        directory = paths[f"onnx_manifest_{name}"] = copy_dir(root / "onnx", root / f"onnx_manifest_{name}")
        edit_json(directory / "export.json", model_file=target)
    truncated = paths["onnx_truncated"] = copy_dir(root / "onnx", root / "onnx_truncated")
    (truncated / "model.onnx").write_bytes((truncated / "model.onnx").read_bytes()[:5000])
    empty = paths["paddle_empty_params"] = copy_dir(root / "paddle_export", root / "paddle_empty_params")
    (empty / "model.pdiparams").write_bytes(b"")
    truncated_json = paths["paddle_truncated_json"] = copy_dir(root / "paddle_export", root / "paddle_truncated_json")
    (truncated_json / "model.json").write_bytes((truncated_json / "model.json").read_bytes()[:300])


def build_file_inputs(root: Path, paths: dict) -> None:
    paths["squad"] = write_marker_squad(root / "squad.json", 4, seed=0)
    question_ids = [qa["id"] for article in json.loads(paths["squad"].read_text())["data"]
                    for paragraph in article["paragraphs"] for qa in paragraph["qas"]]
    paths["predictions"] = root / "predictions.json"
    paths["predictions"].write_text(json.dumps({qid: "w1" for qid in question_ids}))
    paths["deep_json"] = root / "deep.json"
    paths["deep_json"].write_text("[" * 100_000 + "]" * 100_000)
    paths["tsv"] = write_colour_pairs(root / "train.tsv", 8, seed=0)


# --------------------------------------------------------------------------------------------
# Running the cases
# --------------------------------------------------------------------------------------------



def user_environment() -> dict:
    return {key: value for key, value in os.environ.items()
            if key not in ("OMP_NUM_THREADS", "PYTHONWARNINGS", "HF_HUB_OFFLINE")}


def run_cli(argv: list, cwd: Path, **options) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mobilebert_paddle", *argv], capture_output=True, text=True,
                          env=user_environment(), timeout=TIMEOUT, cwd=cwd, **options)


class Results(NamedTuple):
    completed: dict          # case id -> CompletedProcess
    outputs: Path
    marker: Path
    before: dict
    after: dict


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Results:
    root = tmp_path_factory.mktemp("inputs")
    outputs = tmp_path_factory.mktemp("outputs")
    marker = tmp_path_factory.mktemp("payload") / "code-ran"
    paths: dict = {}
    build_file_inputs(root, paths)
    build_hf_inputs(root, paths, marker)
    build_paddle_inputs(root, paths, marker)
    build_export_inputs(root, paths)
    before = snapshot(root)

    def run_case(row: Case) -> subprocess.CompletedProcess:
        values = {key: str(value) for key, value in {**paths, "out": outputs / row.id}.items()}
        return run_cli([part.format(**values) for part in row.argv], outputs)

    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        futures = {row.id: pool.submit(run_case, row) for row in CASES}
        completed = {case_id: future.result() for case_id, future in futures.items()}
    return Results(completed, outputs, marker, before, snapshot(root))


@pytest.mark.parametrize("row", CASES, ids=[row.id for row in CASES])
def test_hostile_input_gives_one_line_and_exit_2(row: Case, results: Results):
    completed = results.completed[row.id]
    command = row.argv[0]
    lines = completed.stderr.splitlines()
    assert "Traceback" not in completed.stderr, completed.stderr
    assert len(lines) == 1, completed.stderr
    assert lines[0].startswith(f"mobilebert {command}: error: "), lines[0]
    if row.fragment is not None:
        assert row.fragment in lines[0], lines[0]
    assert "weights_only" not in lines[0]           # torch's advice to turn the safety off: never
    assert completed.returncode == 2, completed.stderr
    assert completed.stdout == ""
    assert not (results.outputs / row.id).exists()


def test_no_payload_ran_and_no_input_changed(results: Results):
    assert not results.marker.exists()
    changed = {key for key in set(results.before) | set(results.after)
               if results.before.get(key) != results.after.get(key)}
    assert not changed, sorted(changed)[:10]


def test_every_class_has_a_variant():
    """Each class above holds at least one row that names no message (checks work by class)."""
    assert sum(row.fragment is None for row in CASES) >= 6
    assert len({row.id for row in CASES}) == len(CASES)


# --------------------------------------------------------------------------------------------
# Faults that are not one bad input
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    from reference import make_hf_model, save_hf

    return save_hf(make_hf_model("MobileBertForQuestionAnswering"), tmp_path_factory.mktemp("hf") / "hf")


def full_disk(limit: int = 8192):
    """A disk that is full after `limit` bytes of any one file: writes past it raise EFBIG
    (SIGXFSZ ignored so the write fails instead of killing the process)."""
    def set_limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return set_limit


def test_convert_on_a_full_disk_is_one_line_and_leaves_nothing(hf_dir, tmp_path):
    completed = run_cli(["convert", str(hf_dir), str(tmp_path / "out")], tmp_path, preexec_fn=full_disk())
    lines = completed.stderr.splitlines()
    assert completed.returncode == 2 and len(lines) == 1, completed.stderr
    assert lines[0].startswith("mobilebert convert: error: ") and "nothing was written" in lines[0], lines[0]
    assert sorted(path.name for path in tmp_path.iterdir()) == []     # no staging dir, no half-written out


def test_concurrent_converts_leave_one_complete_dir_and_no_staging(hf_dir, tmp_path):
    destination = tmp_path / "out"
    processes = [subprocess.Popen([sys.executable, "-m", "mobilebert_paddle", "convert", str(hf_dir), str(destination)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=user_environment())
                 for _ in range(3)]
    for process in processes:
        _, stderr = process.communicate(timeout=TIMEOUT)
        assert process.returncode == 0, stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]      # no .out.*.tmp, no out.old
    assert sorted(path.name for path in destination.iterdir()) == ["config.json", "model.safetensors", "vocab.txt"]


def test_symlinked_destination_is_written_through(hf_dir, tmp_path):
    real = tmp_path / "models" / "base"
    assert run_cli(["convert", str(hf_dir), str(real)], tmp_path).returncode == 0
    (real / "stale.txt").write_text("from an earlier run")
    link = tmp_path / "current"
    link.symlink_to(real)
    completed = run_cli(["convert", str(hf_dir), str(link)], tmp_path)
    assert completed.returncode == 0, completed.stderr
    assert link.is_symlink() and link.resolve() == real.resolve()          # the link stays a link
    assert sorted(path.name for path in real.iterdir()) == ["config.json", "model.safetensors", "vocab.txt"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["current", "models"]
    assert sorted(path.name for path in real.parent.iterdir()) == ["base"]  # no base.old, no staging
