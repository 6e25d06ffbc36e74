"""`mobilebert convert`: HF checkpoints <-> Paddle model dirs.

HF -> Paddle -> HF is bit-identical for every head and config variant; the HF side loads in
transformers with nothing missing, unexpected or mismatched and gives the same outputs;
every input layout (safetensors, sharded safetensors, pytorch_model.bin, the seed's
model_state.pdparams, a hub id) converts to the same weights; and every bad input is one
line on stderr, exit code 2 and nothing written.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import paddle
import pytest
import torch
import transformers
from reference import (
    HF_HEADS,
    VARIANTS,
    make_hf_model,
    padded_batch,
    paired_outputs,
    relative_error,
    run_paddle,
    run_torch,
    save_hf,
)
from safetensors import safe_open
from safetensors.numpy import save_file

from mobilebert_paddle.cli import main
from mobilebert_paddle.model import convert as conversion
from mobilebert_paddle.model.network import HEADS

TOLERANCE = 1e-5


# ----------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------

def read_file(path: Path) -> tuple[dict, dict]:
    """(tensors, metadata) of a safetensors file."""
    with safe_open(str(path), framework="numpy") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}, handle.metadata()


def assert_same_tensors(expected: dict, actual: dict) -> None:
    """Same keys, and per key the same dtype, shape and bits."""
    assert sorted(actual) == sorted(expected)
    for key, value in expected.items():
        assert actual[key].dtype == value.dtype, key
        assert np.array_equal(actual[key], value), key


def assert_same_weights(expected_dir: Path, actual_dir: Path) -> None:
    assert_same_tensors(read_file(expected_dir / "model.safetensors")[0], read_file(actual_dir / "model.safetensors")[0])


def convert_cli(capsys, *args) -> dict:
    """Run `mobilebert convert ...` in this process; returns its JSON summary."""
    capsys.readouterr()
    assert main(["convert", *map(str, args)]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory):
    """{head: (HF model, HF dir written by transformers)} for every head, tiny and perturbed."""
    root = tmp_path_factory.mktemp("hf")
    models = {}
    for head in HF_HEADS:
        model = make_hf_model(head)
        models[head] = (model, save_hf(model, root / head))
    return models


@pytest.fixture(scope="module")
def paddle_dirs(hf_models, tmp_path_factory):
    """{head: Paddle model dir} converted by the library function (reference for other layouts)."""
    root = tmp_path_factory.mktemp("paddle")
    for head, (_, directory) in hf_models.items():
        conversion.convert(directory, root / head)
    return {head: root / head for head in hf_models}


# ----------------------------------------------------------------------------------------
# Round trips
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("head", HF_HEADS)
def test_round_trip_is_bit_identical_and_loads_in_transformers(head, hf_models, tmp_path, capsys):
    hf_model, hf_dir = hf_models[head]
    summary = convert_cli(capsys, hf_dir, tmp_path / "paddle")
    assert summary["architecture"] == head and summary["tokenizer_files"] == ["vocab.txt"]
    original, metadata = read_file(hf_dir / "model.safetensors")
    paddle_weights, paddle_metadata = read_file(tmp_path / "paddle" / "model.safetensors")
    assert paddle_metadata == {"format": "paddle"}
    # Paddle layout: the weight of every torch.nn.Linear (square ones too) transposed, the rest as is.
    linear_weights = {f"{name}.weight" for name, module in hf_model.named_modules()
                      if isinstance(module, torch.nn.Linear)} & set(original)
    assert linear_weights and sorted(paddle_weights) == sorted(original)
    for key, value in original.items():
        assert np.array_equal(paddle_weights[key], value.T if key in linear_weights else value), key
    assert (tmp_path / "paddle" / "vocab.txt").read_bytes() == (hf_dir / "vocab.txt").read_bytes()

    convert_cli(capsys, tmp_path / "paddle", tmp_path / "back", "--to", "hf")
    round_trip, back_metadata = read_file(tmp_path / "back" / "model.safetensors")
    assert back_metadata == {"format": "pt"}
    assert_same_tensors(original, round_trip)

    loaded, info = getattr(transformers, head).from_pretrained(tmp_path / "back", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert not info["error_msgs"]
    batch = padded_batch(hf_model.config.vocab_size, choices=3 if head == "MobileBertForMultipleChoice" else None)
    expected, actual = run_torch(hf_model, batch), run_torch(loaded.eval(), batch)
    assert list(actual.keys()) == list(expected.keys())
    # The weights are bit-identical (above); the two forwards may still differ in the last bits,
    # as PyTorch's CPU kernels can split a reduction differently from one call to the next
    # (seen once under load on MobileBertForMultipleChoice).
    for name in expected.keys():
        assert relative_error(actual[name].numpy(), expected[name].numpy()) <= 1e-6, name


@pytest.mark.parametrize("head", HF_HEADS)
def test_converted_dir_equals_reference_forward(head, hf_models, paddle_dirs):
    hf_model, _ = hf_models[head]
    paddle_model = HEADS[head].from_pretrained(paddle_dirs[head])
    choices = 3 if head == "MobileBertForMultipleChoice" else None
    batch = padded_batch(hf_model.config.vocab_size, choices=choices)
    outputs = paired_outputs(head, run_torch(hf_model, batch), run_paddle(paddle_model, batch),
                             batch["attention_mask"].astype(bool))
    for name, paddle_value, torch_value, mask in outputs:
        assert relative_error(paddle_value, torch_value, mask) <= TOLERANCE, name


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_config_variant_round_trips(variant, tmp_path):
    """ForPreTraining holds every kind of weight (MLM, NSP, pooler); each variant changes the tree."""
    head = "MobileBertForPreTraining"
    hf_dir = save_hf(make_hf_model(head, **VARIANTS[variant]), tmp_path / "hf")
    conversion.convert(hf_dir, tmp_path / "paddle")
    conversion.convert(tmp_path / "paddle", tmp_path / "back", to="hf")
    assert_same_weights(hf_dir, tmp_path / "back")
    original = json.loads((hf_dir / "config.json").read_text())
    written = json.loads((tmp_path / "back" / "config.json").read_text())
    for key, value in original.items():
        if key not in ("transformers_version", "dtype"):
            assert written[key] == value, key


# ----------------------------------------------------------------------------------------
# Every input layout gives the same Paddle weights
# ----------------------------------------------------------------------------------------

HEAD = "MobileBertForPreTraining"  # the layouts below are checked on the head with most weights


def assert_converts_to_reference(source: Path, destination: Path, paddle_dirs) -> None:
    conversion.convert(source, destination)
    assert_same_weights(paddle_dirs[HEAD], destination)


def test_sharded_safetensors(hf_models, paddle_dirs, tmp_path):
    model, _ = hf_models[HEAD]
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    assert len(list((tmp_path / "sharded").glob("model-*.safetensors"))) > 1
    assert_converts_to_reference(tmp_path / "sharded", tmp_path / "out", paddle_dirs)


def write_torch_bin(hf_models, directory: Path, state: dict | None = None) -> Path:
    """An old-style HF dir: config.json + pytorch_model.bin written by torch.save."""
    model, hf_dir = hf_models[HEAD]
    directory.mkdir()
    shutil.copy(hf_dir / "config.json", directory / "config.json")
    shutil.copy(hf_dir / "vocab.txt", directory / "vocab.txt")
    torch.save(model.state_dict() if state is None else state, directory / "pytorch_model.bin")
    return directory


def test_pytorch_bin(hf_models, paddle_dirs, tmp_path):
    """torch's state_dict also holds the tied decoder copies: dropped, as HF ties them on load."""
    source = write_torch_bin(hf_models, tmp_path / "bin")
    assert "cls.predictions.decoder.weight" in torch.load(source / "pytorch_model.bin", weights_only=True)
    assert_converts_to_reference(source, tmp_path / "out", paddle_dirs)


class Payload:
    """Unpickling this runs code (creates a file): what weights_only=True must refuse."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pytorch_bin_is_never_unpickled_unsafely(hf_models, tmp_path, capsys):
    marker = tmp_path / "code-ran"
    source = write_torch_bin(hf_models, tmp_path / "bin", {"payload": Payload(marker)})
    assert main(["convert", str(source), str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert "contains a pickled object of type" in error and "only tensors are loaded" in error
    assert "weights_only" not in error     # torch's advice to turn the safety off is never passed on
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_seed_pdparams_layout(hf_models, paddle_dirs, tmp_path):
    """MobileBert_paddle's model_state.pdparams: HF names, Paddle orientation, paddle.save."""
    _, hf_dir = hf_models[HEAD]
    seed = tmp_path / "seed"
    seed.mkdir()
    shutil.copy(hf_dir / "config.json", seed / "config.json")
    shutil.copy(hf_dir / "vocab.txt", seed / "vocab.txt")
    paddle.save(HEADS[HEAD].from_pretrained(hf_dir).state_dict(), str(seed / "model_state.pdparams"))
    loaded = HEADS[HEAD].from_pretrained(seed).state_dict()
    reference = read_file(paddle_dirs[HEAD] / "model.safetensors")[0]
    assert_same_tensors(reference, {key: value.numpy() for key, value in loaded.items()})
    assert_converts_to_reference(seed, tmp_path / "out", paddle_dirs)
    conversion.convert(seed, tmp_path / "back", to="hf")
    assert_same_weights(hf_dir, tmp_path / "back")


def test_pdparams_is_never_unpickled_unsafely(hf_models, tmp_path, capsys):
    _, hf_dir = hf_models[HEAD]
    marker = tmp_path / "code-ran"
    seed = tmp_path / "seed"
    seed.mkdir()
    shutil.copy(hf_dir / "config.json", seed / "config.json")
    (seed / "model_state.pdparams").write_bytes(pickle.dumps({"weight": Payload(marker)}))
    assert main(["convert", str(seed), str(tmp_path / "out")]) == 2
    assert "not a plain Paddle state dict" in capsys.readouterr().err
    assert not marker.exists()


def test_tokenizer_json_only_source_gets_vocab_txt(hf_models, tmp_path):
    from tokenizers import BertWordPieceTokenizer

    _, hf_dir = hf_models[HEAD]
    source = tmp_path / "src"
    shutil.copytree(hf_dir, source)
    BertWordPieceTokenizer(str(source / "vocab.txt"), lowercase=True).save(str(source / "tokenizer.json"))
    (source / "vocab.txt").unlink()
    summary = conversion.convert(source, tmp_path / "out")
    assert "vocab.txt" in summary["tokenizer_files"]
    assert (tmp_path / "out" / "vocab.txt").read_text().split() == (hf_dir / "vocab.txt").read_text().split()


def test_hub_id_is_downloaded_and_converted(hf_models, paddle_dirs, tmp_path, monkeypatch, capsys):
    import huggingface_hub

    calls = []

    def fake_snapshot_download(repo_id, allow_patterns=None, **_):
        calls.append((repo_id, allow_patterns))
        return str(hf_models[HEAD][1])

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    summary = convert_cli(capsys, "someone/tiny-mobilebert", tmp_path / "out")
    assert summary["source"] == "someone/tiny-mobilebert"
    assert [repo for repo, _ in calls] == ["someone/tiny-mobilebert"]
    assert {"config.json", "*.safetensors", "vocab.txt"} <= set(calls[0][1])
    assert_same_weights(paddle_dirs[HEAD], tmp_path / "out")


def test_hub_repo_with_only_pytorch_bin(hf_models, paddle_dirs, tmp_path, monkeypatch):
    import huggingface_hub

    source = write_torch_bin(hf_models, tmp_path / "bin")
    calls = []

    def fake_snapshot_download(repo_id, allow_patterns=None, **_):
        calls.append(allow_patterns)
        return str(source)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    assert_converts_to_reference("someone/old-mobilebert", tmp_path / "out", paddle_dirs)
    assert len(calls) == 2 and "pytorch_model.bin" in calls[1]


def test_safetensors_input_needs_no_torch(hf_models, tmp_path):
    """Both directions, with `import torch` made impossible; a .bin then says what it needs."""
    _, hf_dir = hf_models[HEAD]
    bin_dir = write_torch_bin(hf_models, tmp_path / "bin")
    script = (
        "import sys\n"
        "sys.modules['torch'] = None\n"
        "from mobilebert_paddle.cli import main\n"
        f"assert main(['convert', {str(hf_dir)!r}, {str(tmp_path / 'paddle')!r}]) == 0\n"
        f"assert main(['convert', {str(tmp_path / 'paddle')!r}, {str(tmp_path / 'back')!r}, '--to', 'hf']) == 0\n"
        f"sys.exit(main(['convert', {str(bin_dir)!r}, {str(tmp_path / 'from-bin')!r}]))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 2, result.stderr
    assert "needs PyTorch" in result.stderr.strip().splitlines()[-1]
    assert_same_weights(hf_dir, tmp_path / "back")
    assert not (tmp_path / "from-bin").exists()


def test_existing_model_dir_is_replaced_whole(hf_models, tmp_path):
    _, hf_dir = hf_models[HEAD]
    destination = tmp_path / "out"
    conversion.convert(hf_dir, destination)
    (destination / "stale.txt").write_text("from an earlier run")
    conversion.convert(hf_dir, destination)
    assert sorted(path.name for path in destination.iterdir()) == ["config.json", "model.safetensors", "vocab.txt"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]  # no staging or .old left


# ----------------------------------------------------------------------------------------
# Bad input: one line, exit 2, nothing written (the real CLI, in subprocesses run together)
# ----------------------------------------------------------------------------------------

def edit_config(directory: Path, **changes) -> None:
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, **changes}))


def write_bad_sources(hf_dir: Path, root: Path) -> None:
    """One broken source (or obstacle) per case, each a copy of a good HF dir with one fault."""
    def copy(name):
        shutil.copytree(hf_dir, root / name)
        return root / name

    (root / "no-weights").mkdir()
    shutil.copy(hf_dir / "config.json", root / "no-weights" / "config.json")
    edit_config(copy("more-ffns"), num_feedforward_networks=3)
    edit_config(copy("wider"), hidden_size=40)
    truncated = copy("truncated") / "model.safetensors"
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    corrupt_bin = copy("corrupt-bin")
    (corrupt_bin / "model.safetensors").unlink()
    (corrupt_bin / "pytorch_model.bin").write_bytes(b"not a zip file")
    untied = copy("untied")
    edit_config(untied, tie_word_embeddings=False)
    tensors, metadata = read_file(untied / "model.safetensors")
    tensors["cls.predictions.decoder.weight"] = tensors["mobilebert.embeddings.word_embeddings.weight"] * 2
    save_file(tensors, str(untied / "model.safetensors"), metadata=metadata)
    (root / "a-file").write_text("not a directory")
    (root / "user-data").mkdir()
    (root / "user-data" / "notes.txt").write_text("keep me")


def make_bad_inputs(hf_dir: Path, root: Path) -> dict:
    """{case: (argv after `convert`, extra env, words the error line must contain)}."""
    write_bad_sources(hf_dir, root)
    offline = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(root / "hf-home")}
    no_cache = {"HF_HOME": str(root / "hf-home")}
    out = str(root / "out")
    return {
        "no weights": ([str(root / "no-weights"), out], {}, ["no weights found"]),
        "config has more FFNs than the weights": ([str(root / "more-ffns"), out], {},
                                                  ["disagree", "missing from checkpoint", "ffn.1"]),
        "config hidden_size differs from the weights": (
            [str(root / "wider"), out], {},
            ["disagree", "shape mismatch", "position_embeddings.weight (64, 32) in checkpoint vs (64, 40) in config"]),
        "truncated safetensors": ([str(root / "truncated"), out], {}, ["model.safetensors", "truncated or corrupt"]),
        "corrupt pytorch_model.bin": ([str(root / "corrupt-bin"), out], {}, ["pytorch_model.bin", "unreadable"]),
        "untied MLM decoder": ([str(root / "untied"), out], {}, ["tie_word_embeddings", "decoder.weight"]),
        "hub id while offline": (["google/mobilebert-uncased", out], offline, ["google/mobilebert-uncased", "offline"]),
        "hub id without network or cache": (["mobilebert-paddle-tests/no-such-model", out], no_cache,
                                            ["mobilebert-paddle-tests/no-such-model"]),
        "nonexistent path": ([str(root / "nowhere" / "model"), out], {}, ["no such directory"]),
        "source is a file": ([str(root / "a-file"), out], {}, ["expected a model directory, found a file"]),
        "destination below a file": ([str(hf_dir), str(root / "a-file" / "out")], {}, ["is a file"]),
        "destination is a non-model dir": ([str(hf_dir), str(root / "user-data")], {}, ["refusing to replace"]),
        "--to hf of a dir without weights": ([str(root / "no-weights"), out, "--to", "hf"], {}, ["no weights found"]),
    }


@pytest.fixture(scope="module")
def bad_input_results(hf_models, tmp_path_factory):
    """Run every bad case as `python -m mobilebert_paddle convert ...`, all at once (each one
    mostly waits for imports). Returns {case: (completed run, words, listing before, after)}."""
    root = tmp_path_factory.mktemp("bad")
    cases = make_bad_inputs(hf_models[HEAD][1], root)
    before = snapshot(root)
    processes = {}
    for case, (argv, env, _) in cases.items():
        processes[case] = subprocess.Popen(
            [sys.executable, "-m", "mobilebert_paddle", "convert", *argv], stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1", **env})
    results = {}
    for case, process in processes.items():
        stdout, stderr = process.communicate(timeout=120)
        results[case] = (process.returncode, stdout, stderr, cases[case][2])
    return results, before, snapshot(root)


def snapshot(root: Path) -> dict:
    """Every path under root (except the HF cache dir a hub lookup may create) with its bytes."""
    return {str(path.relative_to(root)): path.read_bytes() if path.is_file() else None
            for path in sorted(root.rglob("*")) if "hf-home" not in path.parts}


BAD_CASES = ["no weights", "config has more FFNs than the weights", "config hidden_size differs from the weights",
             "truncated safetensors", "corrupt pytorch_model.bin", "untied MLM decoder", "hub id while offline",
             "hub id without network or cache", "nonexistent path", "source is a file", "destination below a file",
             "destination is a non-model dir", "--to hf of a dir without weights"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_is_one_line_exit_2_nothing_written(case, bad_input_results):
    results, before, after = bad_input_results
    returncode, stdout, stderr, words = results[case]
    assert returncode == 2, stderr
    assert "Traceback" not in stderr and stdout == ""
    error_lines = [line for line in stderr.splitlines() if line.startswith("mobilebert convert: error: ")]
    assert len(error_lines) == 1, stderr
    assert stderr.rstrip("\n").splitlines()[-1] == error_lines[0]
    for word in words:
        assert word in error_lines[0], (word, error_lines[0])
    assert after == before  # nothing created, changed or left half-written anywhere under the test root


def test_bad_cases_all_listed(hf_models, tmp_path):
    assert sorted(make_bad_inputs(hf_models[HEAD][1], tmp_path)) == sorted(BAD_CASES)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes through any permission bits")
def test_unwritable_parent_is_a_clean_error(hf_models, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert main(["convert", str(hf_models[HEAD][1]), str(locked / "out")]) == 2
        assert "not writable" in capsys.readouterr().err
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)
