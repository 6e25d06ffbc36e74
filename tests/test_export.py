"""Export (static Paddle, ONNX, fused, int8), load_predictor and bench, on tiny models.

Every export must equal the eager Paddle model (relative error <= 1e-5, fp32) at batch sizes
and lengths other than the probe batch the export was checked on, with padding. The fused
rewrite is also checked in dygraph for every config variant. Timing targets are measured by
`mobilebert bench` on the full-size model, not here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from reference import VARIANTS, make_hf_model, padded_batch, relative_error, run_paddle, save_hf
from tiny_tasks import load_benchmark

from mobilebert_paddle import cli
from mobilebert_paddle.core.errors import UserInputError
from mobilebert_paddle.inference.export import export_model
from mobilebert_paddle.inference.load import load_predictor
from mobilebert_paddle.inference.predictors import OpenVinoPredictor, read_manifest
from mobilebert_paddle.model.convert import convert

QA = "MobileBertForQuestionAnswering"
CLASSIFICATION = "MobileBertForSequenceClassification"
TOLERANCE = 1e-5
# (lengths of the rows) -> batch shapes unlike the (3, 11) probe batch of the export itself.
CHECK_LENGTHS = [(5,), (23, 4, 17, 9), (2, 1), (1,)]  # (1,): a one-token sequence


def paddle_model_dir(root: Path, head: str, **config) -> Path:
    hf_dir = save_hf(make_hf_model(head, **config), root / "hf")
    convert(hf_dir, root / "paddle")
    return root / "paddle"


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> dict:
    return {head: paddle_model_dir(tmp_path_factory.mktemp(head[10:]), head,
                                   num_labels=3 if head == CLASSIFICATION else 2)
            for head in (QA, CLASSIFICATION)}


@pytest.fixture(scope="module")
def eager(model_dirs) -> dict:
    return {head: load_predictor(directory, "eager") for head, directory in model_dirs.items()}


def assert_equal_to_eager(predictor, reference, vocab_size: int, tolerance: float = TOLERANCE) -> list:
    errors = []
    for seed, lengths in enumerate(CHECK_LENGTHS):
        batch = padded_batch(vocab_size, lengths=lengths, seed=seed)
        expected = reference(**batch)
        actual = predictor(**batch)
        assert len(actual) == len(expected)
        for got, want in zip(actual, expected):
            assert got.shape == want.shape
            errors.append(relative_error(got, want))
    assert max(errors) <= tolerance, errors
    return errors


# ----------------------------------------------------------------------------------------
# Exports equal eager
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("head", [QA, CLASSIFICATION])
@pytest.mark.parametrize("export_format,fuse", [("paddle", False), ("onnx", False), ("onnx", True), ("paddle", True)])
def test_export_equals_eager(tmp_path, model_dirs, eager, head, export_format, fuse):
    summary = export_model(model_dirs[head], tmp_path / "export", export_format, fuse=fuse)
    assert max(summary["probe"]["relative_error"].values()) <= TOLERANCE
    predictor = load_predictor(tmp_path / "export", export_format)
    assert predictor.output_names == (("start_logits", "end_logits") if head == QA else ("logits",))
    assert predictor.config.architectures == [head]
    assert_equal_to_eager(predictor, eager[head], predictor.config.vocab_size)
    # config and tokenizer travel with the export, so evaluate/predict can run on it
    assert {"config.json", "vocab.txt", "export.json"} <= {path.name for path in (tmp_path / "export").iterdir()}


def test_fused_onnx_graph_is_rewritten(tmp_path, model_dirs):
    """The ONNX-level rewrites really happen: one attention op per layer, the residual
    matmul + add pairs as Gemms, and no NoNorm multiply left."""
    import onnx

    summary = export_model(model_dirs[QA], tmp_path / "fused", "onnx", fuse=True)
    plain = export_model(model_dirs[QA], tmp_path / "plain", "onnx")
    layers = 2
    assert summary["graph_rewrites"]["multi_head_attention"] == layers
    # per layer: attention output + 2 FFNs (each a residual step) + output bottleneck; plus embeddings
    assert summary["graph_rewrites"]["residual_gemms"] == layers * 4 + 1

    def op_count(directory, op_type):
        return sum(node.op_type == op_type for node in onnx.load(str(directory / "model.onnx")).graph.node)

    assert op_count(tmp_path / "fused", "MultiHeadAttention") == layers
    assert op_count(tmp_path / "fused", "Softmax") == 0
    assert op_count(tmp_path / "fused", "Mul") < op_count(tmp_path / "plain", "Mul")
    assert len(onnx.load(str(tmp_path / "fused" / "model.onnx")).graph.node) < 0.6 * len(
        onnx.load(str(tmp_path / "plain" / "model.onnx")).graph.node)
    assert plain["graph_rewrites"] == {}


@pytest.mark.parametrize("fuse", [False, True])
def test_int8_runs(tmp_path, model_dirs, eager, fuse):
    """Dynamic int8 runs at any shape and stays near fp32 (accuracy is judged on a trained
    model, not on random tiny weights)."""
    summary = export_model(model_dirs[QA], tmp_path / "int8", "onnx", fuse=fuse, quantize="int8")
    assert summary["quantization"] == "int8"
    import onnx

    graph = onnx.load(str(tmp_path / "int8" / "model.onnx")).graph
    ops = {node.op_type for node in graph.node}
    assert "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops
    # the QA head (hidden -> 2) stays float (float64 inside, model.HeadLinear): its input's
    # range is far wider than the logit gaps
    float_weights = {item.name: tuple(item.dims) for item in graph.initializer
                     if item.data_type == onnx.TensorProto.FLOAT}
    cast_sources = {node.output[0]: node.input[0] for node in graph.node if node.op_type == "Cast"}
    float_matmuls = [float_weights[cast_sources.get(node.input[1], node.input[1])] for node in graph.node
                     if node.op_type == "MatMul" and cast_sources.get(node.input[1], node.input[1]) in float_weights]
    assert float_matmuls == [(32, 2)]
    predictor = load_predictor(tmp_path / "int8", "onnx")
    for lengths in CHECK_LENGTHS:
        batch = padded_batch(predictor.config.vocab_size, lengths=lengths)
        outputs, expected = predictor(**batch), eager[QA](**batch)
        for got, want in zip(outputs, expected):
            assert got.shape == want.shape and np.all(np.isfinite(got))
    # close-ish: the logits over a larger batch still correlate strongly with fp32
    batch = padded_batch(predictor.config.vocab_size, lengths=(30, 25, 12, 30, 7, 19))
    for got, want in zip(predictor(**batch), eager[QA](**batch)):
        assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.9


# ----------------------------------------------------------------------------------------
# OpenVINO
# ----------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("fuse", [False, True])
def test_openvino_export_equals_eager_in_float32(tmp_path, model_dirs, eager, fuse):
    """OpenVINO IR, run with INFERENCE_PRECISION_HINT f32 (OpenVINO's default on CPUs with
    bf16 would round every matmul), equals eager at shapes other than the export's probe."""
    pytest.importorskip("openvino")
    summary = export_model(model_dirs[QA], tmp_path / "ov", "openvino", fuse=fuse)
    assert {"model.xml", "model.bin"} <= set(summary["files"])
    assert max(summary["probe"]["relative_error"].values()) <= TOLERANCE
    predictor = load_predictor(tmp_path / "ov", "openvino", threads=2)
    assert str(predictor.compiled.get_property("INFERENCE_PRECISION_HINT")) == "<Type: 'float32'>"
    assert predictor.compiled.get_property("INFERENCE_NUM_THREADS") == 2
    assert_equal_to_eager(predictor, eager[QA], predictor.config.vocab_size)


@pytest.mark.slow
def test_openvino_runs_onnx_exports_and_model_dirs(tmp_path, model_dirs, eager):
    """--backend openvino on an ONNX export (read by OpenVINO's ONNX frontend), and on a model
    dir (exported to OpenVINO IR in memory), classification head included."""
    pytest.importorskip("openvino")
    export_model(model_dirs[CLASSIFICATION], tmp_path / "onnx", "onnx", fuse=True)
    predictor = load_predictor(tmp_path / "onnx", "openvino")
    assert predictor.backend == "openvino" and predictor.output_names == ("logits",)
    assert_equal_to_eager(predictor, eager[CLASSIFICATION], predictor.config.vocab_size)
    predictor = load_predictor(model_dirs[QA], "openvino", fuse=True)
    assert predictor.model_dir == model_dirs[QA]
    assert_equal_to_eager(predictor, eager[QA], predictor.config.vocab_size)
    with pytest.raises(UserInputError, match="holds a onnx export, not a paddle one"):
        load_predictor(tmp_path / "onnx", "paddle")


@pytest.mark.slow
def test_openvino_large_batch_split_across_streams_equals_eager(model_dirs, eager):
    """Batches of >= SPLIT_MIN_TOKENS tokens run as one chunk per thread on single-threaded
    streams, uneven chunks included (41 rows over 2 threads)."""
    pytest.importorskip("openvino")
    predictor = load_predictor(model_dirs[QA], "openvino", fuse=True, threads=2)
    lengths = tuple(int(length) for length in np.random.default_rng(3).integers(1, 65, size=40))
    batch = padded_batch(predictor.config.vocab_size, lengths=lengths + (64,))
    assert batch["input_ids"].size >= predictor.SPLIT_MIN_TOKENS
    actual, expected = predictor(**batch), eager[QA](**batch)
    assert len(predictor._dynamic[2]) == 2 and not predictor._static      # the split path ran, shapes uneven
    for got, want in zip(actual, expected):
        assert got.shape == want.shape and relative_error(got, want) <= TOLERANCE


@pytest.mark.slow
def test_openvino_compiles_repeated_shapes_for_their_exact_shape(tmp_path, model_dirs, eager):
    """A shape seen STATIC_AFTER times gets a compilation of its own (split batches included),
    equal to eager; only the STATIC_KEEP most recent are kept; the untuned (peer) predictor
    keeps to one dynamic compilation."""
    pytest.importorskip("openvino")
    predictor = load_predictor(model_dirs[QA], "openvino", threads=2)
    vocab = predictor.config.vocab_size
    predictor._static.clear()
    predictor._seen.clear()
    small = padded_batch(vocab, lengths=(9, 5, 13), seed=1)          # 39 tokens: one stream
    large = padded_batch(vocab, lengths=(64, 3, 40, 64, 7, 64), seed=2)   # 384 tokens: 2 streams of 3 rows
    for batch, key in ((small, (1, ((3, 13),) * 3)), (large, (2, ((3, 64),) * 3))):
        expected = eager[QA](**batch)
        for call in range(predictor.STATIC_AFTER + 1):
            assert (key in predictor._static) == (call >= predictor.STATIC_AFTER)
            for got, want in zip(predictor(**batch), expected):
                assert got.shape == want.shape and relative_error(got, want) <= TOLERANCE
        assert key in predictor._static
    for length in range(20, 20 + predictor.STATIC_KEEP):
        batch = padded_batch(vocab, lengths=(length, 4), seed=length)
        for _ in range(predictor.STATIC_AFTER):
            predictor(**batch)
    assert len(predictor._static) == predictor.STATIC_KEEP and (1, ((3, 13),) * 3) not in predictor._static
    export_model(model_dirs[QA], tmp_path / "ov", "openvino")
    untuned = OpenVinoPredictor(predictor.config, tmp_path / "ov", tmp_path / "ov" / "model.xml",
                                predictor.output_names, threads=2, tuned=False)
    for _ in range(predictor.STATIC_AFTER + 1):
        for got, want in zip(untuned(**large), eager[QA](**large)):
            assert relative_error(got, want) <= TOLERANCE
    assert list(untuned._dynamic) == [1] and not untuned._static


@pytest.mark.slow
def test_openvino_static_int8_keeps_the_head_in_float(tmp_path, eager):
    """NNCF int8 calibrated on windows of a SQuAD file: the backbone matmuls read int8
    (FakeQuantize) inputs, the QA head reads float; runs at any shape. Accuracy is judged on a
    trained model (benchmarks/export_accuracy.py), not on random tiny weights."""
    pytest.importorskip("nncf")
    import openvino
    from tiny_tasks import make_tiny_model_dir, make_tokenizer, write_marker_squad

    from mobilebert_paddle.model.network import MobileBertForQuestionAnswering

    model = MobileBertForQuestionAnswering.from_pretrained(make_tiny_model_dir(tmp_path / "base"))
    model.config.extra["task_settings"] = {"max_seq_length": 32, "doc_stride": 8, "max_query_length": 8}
    model.save_pretrained(tmp_path / "qa", tokenizer=make_tokenizer())
    dev = write_marker_squad(tmp_path / "dev.json", 30, seed=2, markers=1, length=24)
    summary = export_model(tmp_path / "qa", tmp_path / "int8", "openvino", fuse=True, quantize="int8-static",
                           calibration_data=dev, calibration_count=20)
    assert summary["quantization"] == "int8-static" and summary["calibration_windows"] == 20
    graph = openvino.Core().read_model(str(tmp_path / "int8" / "model.xml"))
    quantized = [op for op in graph.get_ordered_ops() if op.get_type_name() == "MatMul"
                 and op.input_value(0).get_node().get_type_name() == "FakeQuantize"]
    (head,) = [op for op in graph.get_ordered_ops() if op.get_friendly_name() in summary["float_nodes"]]
    assert head.input_value(0).get_node().get_type_name() != "FakeQuantize"
    assert len(quantized) >= 2 * 5       # per layer: merged projections, attention output, 2 FFNs, bottleneck out
    predictor = load_predictor(tmp_path / "int8", "openvino")
    for lengths in CHECK_LENGTHS:
        batch = padded_batch(predictor.config.vocab_size, lengths=lengths)
        for got in predictor(**batch):
            assert got.shape == batch["input_ids"].shape and np.all(np.isfinite(got))


def test_without_openvino_one_line_naming_the_extra(tmp_path, model_dirs):
    """openvino not importable: `--backend openvino` and `--format openvino` each print one
    line naming the extra to install, exit 2, and write nothing."""
    import subprocess
    import sys

    from tiny_tasks import subprocess_env

    blocked = "import sys; sys.modules['openvino'] = None; from mobilebert_paddle.cli import main; sys.exit(main(sys.argv[1:]))"
    commands = [["export", "--model", model_dirs[QA], "--format", "openvino", "--output", tmp_path / "out"],
                ["predict", "--model", model_dirs[QA], "--backend", "openvino", "--question", "q", "--context", "c"]]
    for argv in commands:
        completed = subprocess.run([sys.executable, "-c", blocked, *map(str, argv)], capture_output=True, text=True,
                                   env=subprocess_env(), timeout=120)
        assert completed.returncode == 2 and completed.stdout == ""
        lines = completed.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"mobilebert {argv[0]}: error:"), completed.stderr
        assert "pip install 'mobilebert-paddle[openvino]'" in lines[0]
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------
# The fused rewrite itself, every config variant (dygraph, no export)
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("head", [QA, CLASSIFICATION, "MobileBertModel"])
def test_fuse_model_equals_eager_every_variant(variant, head):
    from mobilebert_paddle.inference.fuse import fuse_model
    from mobilebert_paddle.model.config import MobileBertConfig
    from mobilebert_paddle.model.loading import build_model
    from mobilebert_paddle.model.modeldir import hf_to_paddle
    from mobilebert_paddle.model.network import HEADS

    hf_model = make_hf_model(head, **VARIANTS[variant])
    config = MobileBertConfig.from_dict(hf_model.config.to_dict())
    config.architectures = [head]
    state = hf_to_paddle({key: value.detach().numpy() for key, value in hf_model.state_dict().items()}, config,
                         HEADS[head])
    model = build_model(config, state)
    model.load_converted_state_dict(state)
    fused = fuse_model(model)
    batch = padded_batch(config.vocab_size, lengths=(9, 4, 13))
    expected, actual = run_paddle(model, batch), run_paddle(fused, batch)
    pairs = [(expected, actual)] if head == CLASSIFICATION else list(zip(expected[:2], actual[:2]))
    for want, got in pairs:
        assert relative_error(got.numpy(), want.numpy()) <= TOLERANCE


def test_fuse_refuses_zero_nonorm_scale(tmp_path):
    """A NoNorm weight entry of exactly 0 cannot be divided out: a one-line error, nothing written."""
    import torch

    hf_model = make_hf_model(QA)
    with torch.no_grad():
        hf_model.mobilebert.encoder.layer[1].ffn[0].output.LayerNorm.weight[3] = 0.0
    hf_dir = save_hf(hf_model, tmp_path / "hf")
    convert(hf_dir, tmp_path / "paddle")
    with pytest.raises(UserInputError, match="NoNorm weight has an entry of exactly 0"):
        export_model(tmp_path / "paddle", tmp_path / "out", "onnx", fuse=True)
    assert not (tmp_path / "out").exists()
    export_model(tmp_path / "paddle", tmp_path / "out", "onnx")  # without --fuse it exports


# ----------------------------------------------------------------------------------------
# load_predictor
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["onnx", "paddle"])
def test_load_predictor_exports_a_model_dir_in_memory(model_dirs, eager, backend):
    """`evaluate --backend onnx --model <trained model dir>` works without a separate export."""
    predictor = load_predictor(model_dirs[QA], backend, fuse=True)
    assert predictor.backend == backend and predictor.model_dir == model_dirs[QA]
    assert_equal_to_eager(predictor, eager[QA], predictor.config.vocab_size)
    assert not (model_dirs[QA] / "export.json").exists()


def test_onnx_large_batch_split_across_threads_equals_eager(model_dirs, eager):
    """Batches of >= 2048 tokens run as one chunk per thread on a single-threaded session."""
    predictor = load_predictor(model_dirs[QA], "onnx", fuse=True, threads=2)
    lengths = tuple(int(length) for length in np.random.default_rng(3).integers(1, 65, size=41))
    batch = padded_batch(predictor.config.vocab_size, lengths=lengths + (64,))
    assert batch["input_ids"].size >= predictor.SPLIT_MIN_TOKENS
    actual, expected = predictor(**batch), eager[QA](**batch)
    assert predictor._single_thread is not None      # the split path ran
    for got, want in zip(actual, expected):
        assert got.shape == want.shape and relative_error(got, want) <= TOLERANCE


def test_predictor_call_forms(model_dirs, eager):
    """Arrays as arguments, one dict (the evaluation code's batches), or ids alone."""
    predictor = eager[QA]
    batch = padded_batch(predictor.config.vocab_size, lengths=(6, 6))
    by_arguments = predictor(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
    by_dict = predictor(batch)
    ids_only = predictor(batch["input_ids"])
    explicit = predictor(batch["input_ids"], np.zeros_like(batch["input_ids"]), np.ones_like(batch["input_ids"]))
    for left, right in zip(by_arguments, by_dict):
        np.testing.assert_array_equal(left, right)
    for left, right in zip(ids_only, explicit):
        np.testing.assert_array_equal(left, right)


def test_load_predictor_wrong_backend_for_export(tmp_path, model_dirs):
    export_model(model_dirs[QA], tmp_path / "export", "onnx")
    with pytest.raises(UserInputError, match="holds a onnx export"):
        load_predictor(tmp_path / "export", "paddle")
    with pytest.raises(UserInputError, match="holds a onnx export"):
        load_predictor(tmp_path / "export", "eager")
    with pytest.raises(UserInputError, match="unknown backend"):
        load_predictor(tmp_path / "export", "tensorrt")
    assert read_manifest(tmp_path / "export")["format"] == "onnx"


# ----------------------------------------------------------------------------------------
# The CLI: JSON on stdout, bad input -> one line, exit 2, nothing written
# ----------------------------------------------------------------------------------------

def test_cli_export_prints_only_json(tmp_path, model_dirs, capfd):
    code = cli.main(["export", "--model", str(model_dirs[CLASSIFICATION]), "--format", "onnx", "--fuse",
                     "--output", str(tmp_path / "out")])
    stdout = capfd.readouterr().out
    assert code == 0
    summary = json.loads(stdout)  # paddle2onnx's own prints went to stderr
    assert summary["fused"] is True and summary["architecture"] == CLASSIFICATION
    assert (tmp_path / "out" / "model.onnx").is_file()


def one_line_error(capfd) -> str:
    captured = capfd.readouterr()
    assert captured.out == ""
    lines = [line for line in captured.err.splitlines() if line.startswith("mobilebert")]
    assert len(lines) == 1, captured.err
    return lines[0]


def test_cli_model_dir_without_weights(tmp_path, model_dirs, capfd):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((model_dirs[QA] / "config.json").read_text())
    code = cli.main(["export", "--model", str(broken), "--format", "onnx", "--output", str(tmp_path / "out")])
    assert code == 2
    assert "no weights found" in one_line_error(capfd)
    assert not (tmp_path / "out").exists()


def test_cli_unknown_format(tmp_path, model_dirs, capfd):
    code = None
    try:
        code = cli.main(["export", "--model", str(model_dirs[QA]), "--format", "tflite",
                         "--output", str(tmp_path / "out")])
    except SystemExit as exit_:
        code = exit_.code
    assert code == 2
    assert "--format" in one_line_error(capfd)
    assert not (tmp_path / "out").exists()


def test_cli_unwritable_output(tmp_path, model_dirs, capfd):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    code = cli.main(["export", "--model", str(model_dirs[QA]), "--output", str(blocker / "out")])
    assert code == 2
    assert "cannot create the output directory" in one_line_error(capfd)
    assert blocker.read_text() == "not a directory"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a_file"]


def test_cli_refuses_to_replace_a_non_export_dir(tmp_path, model_dirs, capfd):
    """--output pointing at a directory with other files would be replaced whole: refused."""
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    code = cli.main(["export", "--model", str(model_dirs[QA]), "--output", str(keep)])
    assert code == 2
    assert "not an export" in one_line_error(capfd)
    assert [path.name for path in keep.iterdir()] == ["notes.txt"]
    code = cli.main(["export", "--model", str(model_dirs[QA]), "--output", str(model_dirs[QA])])
    assert code == 2
    assert "model directory itself" in one_line_error(capfd)


def test_cli_quantize_needs_onnx(tmp_path, model_dirs, capfd):
    code = cli.main(["export", "--model", str(model_dirs[QA]), "--format", "paddle", "--quantize", "int8",
                     "--output", str(tmp_path / "out")])
    assert code == 2
    assert "--quantize int8 needs --format onnx" in one_line_error(capfd)
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------
# bench
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["default", "no_bottleneck", "bottleneck_attention", "four_ffn",
                                     "no_trigram_same_width", "ib_bert_layout"])
def test_model_flops_counts_every_linear(variant):
    """The analytic FLOP count equals one read off the module tree: every Linear's in x out
    per token (per sequence for the pooler and classifier), plus QK^T and PV. ib_bert_layout:
    query, key and value read the H-wide block input (IB-BERT, the teacher)."""
    import paddle
    from reference import TINY

    from mobilebert_paddle.model.config import MobileBertConfig
    from mobilebert_paddle.model.network import MobileBertForQuestionAnswering, MobileBertForSequenceClassification
    from mobilebert_paddle.tools.bench import model_flops

    layouts = {**VARIANTS, "ib_bert_layout": dict(key_query_shared_bottleneck=False)}
    config = MobileBertConfig(**{**TINY, **layouts[variant]})
    batch, length = 3, 10
    for head in (MobileBertForQuestionAnswering, MobileBertForSequenceClassification):
        with paddle.LazyGuard():
            model = head(config)
        per_token = per_sequence = 0
        unused = []   # built by the model (as by HF) but not applied in forward
        if not (config.trigram_input or config.embedding_size != config.hidden_size):
            unused.append("embedding_transformation")
        if config.use_bottleneck_attention:
            unused.append("bottleneck.attention.dense")
        for name, layer in model.named_sublayers():
            if name.endswith(tuple(unused)):
                continue
            if isinstance(layer, paddle.nn.Linear):
                multiply_adds = layer.weight.shape[0] * layer.weight.shape[1]
                if "pooler" in name or name == "classifier":
                    per_sequence += multiply_adds
                else:
                    per_token += multiply_adds
        attention = config.num_hidden_layers * 2 * length * length * config.true_hidden_size
        expected = 2 * batch * (length * per_token + per_sequence + attention)
        config.architectures = [head.architecture]
        assert model_flops(config, batch, length, head.architecture) == expected


def test_model_flops_full_size_matches_issue():
    """Issue 6 quotes 5.18 GFLOP at 1x128 and 124 GFLOP at 8x384 for the Linears alone."""
    from mobilebert_paddle.model.config import MobileBertConfig
    from mobilebert_paddle.tools.bench import model_flops

    config = MobileBertConfig()
    for (batch, length), linears in [((1, 128), 5.18e9), ((8, 384), 124e9)]:
        attention = 2 * batch * 24 * 2 * length * length * 128
        head = 2 * batch * length * 512 * 2
        total = model_flops(config, batch, length, "MobileBertForQuestionAnswering")
        assert abs(total - attention - head - linears) / linears < 0.005


@pytest.mark.slow
def test_gemm_bound_counts_what_bench_counts():
    """benchmarks/gemm_bound.py (the README's bound on the float32 floor) times the same matmuls
    bench.model_flops counts: every encoder Linear per token and both attention products."""
    from mobilebert_paddle.tools.bench import model_flops

    gemm_bound = load_benchmark("gemm_bound")
    for preset, batch, length in (("mobilebert", 1, 128), ("mobilebert-tiny", 3, 20), ("ib-bert", 2, 8)):
        shapes, config = gemm_bound.model_matmuls(preset, batch, length)
        total = sum(gemm_bound.flops(shape) * count for shape, count in shapes.items())
        pooler = 2.0 * batch * config.hidden_size ** 2 if config.classifier_activation else 0.0
        assert total == pytest.approx(model_flops(config, batch, length, "MobileBertModel") - pooler, rel=1e-12)
        assert sum(count for (batches, *_), count in shapes.items() if batches > 1) == 2 * config.num_hidden_layers
    rates = gemm_bound.best_rates([(2, 16, 8, 4)], rounds=1)
    assert rates[(2, 16, 8, 4)] > 0


@pytest.mark.slow
def test_bench_smoke(tmp_path, model_dirs, capfd):
    code = cli.main(["bench", "--model", str(model_dirs[QA]), "--batch", "2", "--seq", "8,16", "--runs", "2",
                     "--warmup", "1", "--pause", "0", "--backends", "torch,paddle-eager,onnx-fused",
                     "--output", str(tmp_path / "bench")])
    assert code == 0
    report = json.loads(capfd.readouterr().out)
    assert list(report["shapes"]) == ["2x8", "2x16"]
    rows = report["shapes"]["2x16"]["backends"]
    assert set(rows) == {"torch", "paddle-eager", "onnx-fused"}
    assert rows["torch"]["vs_torch"] == 1.0 and rows["onnx-fused"]["ms"] > 0
    # the PyTorch twin has the same weights: every backend agrees with it
    assert max(report["output_check"]["errors"].values()) <= TOLERANCE
    assert (tmp_path / "bench" / "bench.json").is_file()
    assert (tmp_path / "bench" / "bench.png").read_bytes()[:4] == b"\x89PNG"


def test_bench_bad_backend(tmp_path, model_dirs, capfd):
    code = cli.main(["bench", "--model", str(model_dirs[QA]), "--backends", "onnx,tensorrt",
                     "--output", str(tmp_path / "bench")])
    assert code == 2
    assert "unknown tensorrt" in one_line_error(capfd)
    assert not (tmp_path / "bench").exists()


@pytest.mark.slow
def test_bench_peers_smoke(tmp_path, model_dirs, capfd):
    """--peers adds the HF-export peers; every row has its ratio to the best peer of its own
    precision, and the float32 paths (ours and the peers) equal PyTorch."""
    pytest.importorskip("nncf")
    code = cli.main(["bench", "--model", str(model_dirs[QA]), "--batch", "2", "--seq", "8", "--runs", "1",
                     "--warmup", "1", "--pause", "0", "--backends", "torch,openvino-fused,openvino-fused-int8",
                     "--peers", "--output", str(tmp_path / "bench")])
    assert code == 0
    report = json.loads(capfd.readouterr().out)
    rows = report["shapes"]["2x8"]["backends"]
    assert set(rows) == {"torch", "openvino-fused", "openvino-fused-int8", "peer-hf-onnx-ort", "peer-hf-openvino",
                         "peer-hf-openvino-bf16", "peer-hf-openvino-int8"}
    assert rows["openvino-fused-int8"]["best_peer"] == "peer-hf-openvino-int8"
    assert rows["openvino-fused"]["best_peer"] in ("peer-hf-onnx-ort", "peer-hf-openvino")
    assert rows[rows["openvino-fused"]["best_peer"]]["vs_peer"] == 1.0
    errors = report["output_check"]["errors"]
    assert max(errors[name] for name in ("openvino-fused", "peer-hf-onnx-ort", "peer-hf-openvino")) <= TOLERANCE
    assert report["openvino_cpu"]["default_precision"] and report["calibration"] == "random ids (timing only)"
