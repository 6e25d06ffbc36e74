"""`mobilebert export`: a static Paddle inference model, an ONNX model, an OpenVINO IR (optionally
fused (fuse.py) and int8 (quantize.py)), or a LiteRT .tflite for phones (litert.py).

An export directory holds config.json (with `architectures`), the tokenizer files, the model
file(s) and export.json, the manifest predictors.read_manifest reads. Every export is checked
against the eager model on a probe batch before it is put in place; the manifest records the
error.
"""


from __future__ import annotations

import argparse
import contextlib
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

from ..core import flags
from ..core.errors import UserInputError
from ..core.files import atomic_directory, atomic_write_json, check_separate_dirs
from ..core.numerics import relative_error
from ..model.config import MobileBertConfig
from ..model.modeldir import copy_tokenizer_files
from .litert import compare_signatures, require_converter, write_litert
from .litert import library_versions as litert_versions
from .onnx_graph import ONNX_OPSET, save_static_model, static_to_onnx
from .outliers import prepare_for_int8, random_batch
from .predictors import (
    FORMATS,
    MANIFEST_NAME,
    MODEL_INPUT_NAMES,
    ONNX_NAME,
    OPENVINO_NAME,
    PADDLE_PREFIX,
    EagerPredictor,
    Predictor,
    load_eager_model,
    load_exported,
    openvino_core,
    output_names,
    probe_batch,
)
from .quantize import (
    CALIBRATION_WINDOWS,
    calibration_windows,
    head_weight_names,
    import_nncf,
    matmuls_reading,
    quantize_int8,
    quantize_static_openvino,
)

logger = logging.getLogger(__name__)

QUANTIZATIONS = ("int8", "int8-static")
# paddle2onnx 2.1 accepts 7..21 but writes opset 10 for anything below 10 (aborts above 21);
# 10..21 each give a model of that opset that matches eager, --fuse and int8 included (measured)
MIN_OPSET, MAX_OPSET = 10, 21
EXPORT_TOLERANCE = 1e-5                 # fp32 exports must match eager within this relative error


# ----------------------------------------------------------------------------------------
# Writing an export directory
# ----------------------------------------------------------------------------------------



def compare_with_eager(predictor: Predictor, reference: Predictor, batch: dict) -> dict:
    """{output name: relative error} of `predictor` against the eager model on `batch`."""
    expected, actual = reference(batch), predictor(batch)
    return {name: relative_error(got, want) for name, got, want in zip(predictor.output_names, actual, expected)}


def write_export(model, config: MobileBertConfig, source: Path, staging: Path, export_format: str,
                 fuse: bool = False, quantize: Optional[str] = None, opset: int = ONNX_OPSET,
                 calibration: Optional[dict] = None, seq_lengths: Optional[Sequence[int]] = None) -> dict:
    """Write the export into the (empty) directory `staging`; returns the manifest.
    `calibration`: model inputs {name: (N, T) array} for --quantize int8-static;
    `seq_lengths`: the LiteRT signatures' lengths (default: the model's max_seq_length)."""

    architecture = config.architectures[0]
    outlier_channels = []
    if quantize:        # outlier channels of the residual stream into the weights first (outliers.py)
        model, outlier_channels = prepare_for_int8(model, fuse, calibration or random_batch(config),
                                                   f"{source}: --quantize {quantize}")
    layer = model
    if fuse:
        from .fuse import FuseError, fuse_model

        try:
            layer = fuse_model(model)
        except FuseError as error:
            raise UserInputError(f"{source}: {error}; export without --fuse") from None
    config.save_pretrained(staging)
    copy_tokenizer_files(source, staging)
    manifest = {"format": export_format, "architecture": architecture, "fused": fuse, "quantization": quantize,
                "inputs": list(MODEL_INPUT_NAMES), "outputs": list(output_names(architecture))}
    if outlier_channels:
        manifest["outlier_channels"] = outlier_channels    # [channel, divisor moved into the weights]
    if export_format == "paddle":
        save_static_model(layer, architecture, staging / PADDLE_PREFIX)
        manifest["model_file"] = f"{PADDLE_PREFIX}.json"
    elif export_format == "litert":
        manifest.update(write_litert(model, config, source, staging, quantize, seq_lengths))
    elif export_format == "openvino":
        manifest.update(write_openvino(layer, config, staging, fuse, quantize, opset, calibration))
    else:
        manifest.update(write_onnx(layer, config, staging, fuse, quantize, opset))
    manifest["versions"] = library_versions(export_format)
    atomic_write_json(staging / MANIFEST_NAME, manifest)
    return manifest


def write_onnx(layer, config: MobileBertConfig, staging: Path, fuse: bool, quantize: Optional[str],
               opset: int) -> dict:
    """model.onnx in `staging`. Order matters: the residual-Gemm rewrite needs standard ONNX
    shape inference, the int8 quantizer quantizes MatMul (not Gemm) and cannot type the
    com.microsoft attention op, so: Gemms (fp32 only), then int8, then attention."""
    import onnx

    from .fuse import use_multi_head_attention

    model, rewrites = layer_to_onnx(layer, config.architectures[0], staging, fuse and quantize is None, opset)
    if quantize == "int8":
        fp32_path, int8_path = staging / "model.fp32.onnx", staging / "model.int8.onnx"
        onnx.save(model, str(fp32_path))
        quantize_int8(fp32_path, int8_path, float_weights=head_weight_names(layer))
        model = onnx.load(str(int8_path))
        fp32_path.unlink()
        int8_path.unlink()
    if fuse:
        rewrites["multi_head_attention"] = use_multi_head_attention(model, config.num_attention_heads,
                                                                    config.true_hidden_size)
    onnx.save(model, str(staging / ONNX_NAME))
    return {"model_file": ONNX_NAME, "opset": opset, "graph_rewrites": rewrites}


def layer_to_onnx(layer, architecture: str, staging: Path, residual_gemms: bool, opset: int) -> tuple:
    """(onnx.ModelProto, {rewrite: count}) of the traced layer, via a static model in a scratch dir."""
    from .fuse import fuse_residual_gemms

    with tempfile.TemporaryDirectory(prefix="static-", dir=staging) as static_dir:
        prefix = Path(static_dir) / PADDLE_PREFIX
        save_static_model(layer, architecture, prefix)
        model = static_to_onnx(prefix, architecture, opset)
    rewrites = {"residual_gemms": fuse_residual_gemms(model)} if residual_gemms else {}
    return model, rewrites


def write_openvino(layer, config: MobileBertConfig, staging: Path, fuse: bool, quantize: Optional[str],
                   opset: int, calibration: Optional[dict] = None) -> dict:
    """model.xml + model.bin (OpenVINO IR) in `staging`: the ONNX graph (with the residual Gemms
    when fused; not ONNX Runtime's attention op: OpenVINO builds its own attention from the
    plain graph) read by OpenVINO, weights kept in float32. int8-static: NNCF's post-training
    quantization calibrated on the `calibration` windows, the task head left in float32."""
    import onnx
    import openvino

    model, rewrites = layer_to_onnx(layer, config.architectures[0], staging, fuse, opset)
    head_weights = head_weight_names(layer)          # the traced program's names, as the ONNX graph has them
    head_nodes = matmuls_reading(model.graph, head_weights)
    with tempfile.TemporaryDirectory(prefix="onnx-", dir=staging) as scratch:
        onnx.save(model, str(Path(scratch) / ONNX_NAME))
        ov_model = openvino.convert_model(str(Path(scratch) / ONNX_NAME))
    manifest = {"model_file": OPENVINO_NAME, "opset": opset, "graph_rewrites": rewrites}
    if quantize == "int8-static":
        ov_model = quantize_static_openvino(ov_model, calibration, head_nodes)
        manifest["calibration_windows"] = len(calibration["input_ids"])
        manifest["float_nodes"] = head_nodes
    openvino.save_model(ov_model, str(staging / OPENVINO_NAME), compress_to_fp16=False)
    return manifest


def library_versions(export_format: str) -> dict:
    import paddle

    versions = {"paddlepaddle": paddle.__version__}
    if export_format == "onnx":
        import onnxruntime
        import paddle2onnx

        versions.update(paddle2onnx=paddle2onnx.__version__, onnxruntime=onnxruntime.__version__)
    if export_format == "litert":
        versions.update(litert_versions())
    if export_format == "openvino":
        import openvino
        import paddle2onnx

        versions.update(paddle2onnx=paddle2onnx.__version__, openvino=openvino.__version__)
        with contextlib.suppress(ImportError):
            import nncf

            versions["nncf"] = nncf.__version__
    return versions


def check_output_dir(output: Path, source: Path, calibration_data: "str | os.PathLike | None" = None) -> None:
    """Refuse, before any work, an output that cannot be written, would replace something that is
    not an export, or holds an input (the whole directory is replaced)."""
    check_separate_dirs({"the model directory": source, "--calibration-data": calibration_data}, output, "--output")
    if output.exists() and not output.is_dir():
        raise UserInputError(f"{output}: --output exists and is not a directory")
    if output.is_dir() and any(output.iterdir()) and not (output / MANIFEST_NAME).is_file():
        raise UserInputError(f"{output}: --output is a non-empty directory that is not an export; "
                             "choose a new or empty directory (an export there is replaced whole)")
    ancestor = output.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserInputError(f"{output}: cannot create the output directory ({ancestor} is not a writable directory)")


def check_options(export_format: str, quantize: Optional[str], opset: int = ONNX_OPSET,
                  calibration_data: Optional[Path] = None, fuse: bool = False,
                  seq_lengths: Optional[Sequence[int]] = None) -> None:
    """The export's options, for Python callers (the CLI's flags are checked as they are parsed)."""
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise UserInputError(f"--opset {opset}: expected an ONNX opset from {MIN_OPSET} to {MAX_OPSET}")
    if export_format not in FORMATS:
        raise UserInputError(f"unknown --format {export_format!r}: expected one of {', '.join(FORMATS)}")
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise UserInputError(f"unknown --quantize {quantize!r}: expected one of {', '.join(QUANTIZATIONS)}")
    if quantize == "int8" and export_format not in ("onnx", "litert"):
        raise UserInputError("--quantize int8 needs --format onnx or litert (dynamic int8 runs in ONNX Runtime "
                             "and LiteRT; for OpenVINO use --quantize int8-static)")
    if seq_lengths is not None and export_format != "litert":
        raise UserInputError("--seq-lengths is only read by --format litert (the other formats take any length)")
    if fuse and export_format == "litert":
        raise UserInputError("--fuse does not apply to --format litert (its converter does its own fusion)")
    if quantize == "int8-static" and export_format != "openvino":
        raise UserInputError("--quantize int8-static needs --format openvino (NNCF quantizes OpenVINO models)")
    if quantize == "int8-static" and calibration_data is None:
        raise UserInputError("--quantize int8-static needs --calibration-data FILE: the task's data its "
                             "ranges are measured on (e.g. the dev set you evaluate with)")
    if calibration_data is not None and quantize != "int8-static":
        raise UserInputError("--calibration-data is only read by --quantize int8-static")
    if calibration_data is not None and not Path(calibration_data).is_file():
        raise UserInputError(f"--calibration-data {calibration_data}: no such file")
    if export_format == "openvino":
        openvino_core()
    if quantize == "int8-static":
        import_nncf()
    if export_format == "litert":
        require_converter()


def export_model(model_dir: "str | os.PathLike", output_dir: "str | os.PathLike", export_format: str = "onnx",
                 fuse: bool = False, quantize: Optional[str] = None, opset: int = ONNX_OPSET,
                 calibration_data: "str | os.PathLike | None" = None,
                 calibration_count: int = CALIBRATION_WINDOWS, seq_lengths: Optional[Sequence[int]] = None) -> dict:
    """Export the model in `model_dir` to `output_dir` (replaced atomically); returns the summary.
    `calibration_data`: a task data file (SQuAD JSON, GLUE TSV) for --quantize int8-static;
    `seq_lengths`: the LiteRT signatures."""
    check_options(export_format, quantize, opset, calibration_data, fuse, seq_lengths)
    source, output = Path(model_dir), Path(output_dir)
    if not source.is_dir():
        raise UserInputError(f"{source}: no such model directory")
    check_output_dir(output, source, calibration_data)
    started = time.perf_counter()
    model, config = load_eager_model(source)
    reference = EagerPredictor(model, config, source)
    calibration = None
    if calibration_data is not None:
        calibration = calibration_windows(source, config, Path(calibration_data), calibration_count)
    try:
        with atomic_directory(output) as staging:
            manifest = write_export(model, config, source, staging, export_format, fuse, quantize, opset,
                                    calibration, seq_lengths)
            if export_format == "litert":     # every signature, on a full row and a padded one of its length
                errors = compare_signatures(load_exported(staging, manifest), reference, config)
                manifest["probe"] = {"rows": "2 per signature: one full, one a third padding",
                                     "relative_error": errors}
                check_probe({f"{signature} {name}": value for signature, values in errors.items()
                             for name, value in values.items()}, quantize, output)
            else:
                batch = probe_batch(config, manifest["architecture"])
                errors = compare_with_eager(load_exported(staging, manifest), reference, batch)
                manifest["probe"] = {"shape": list(batch["input_ids"].shape), "relative_error": errors}
                check_probe(errors, quantize, output)
            atomic_write_json(staging / MANIFEST_NAME, manifest)
    except OSError as error:     # no permission, or a full disk: the staging dir is gone, nothing is half-written
        kept = "the earlier export is kept" if output.exists() else "nothing was written"
        raise UserInputError(f"{output}: cannot write the export ({error.strerror or error}); {kept}") from None
    files = sorted(path.name for path in output.iterdir())
    return {"model": str(source), "output": str(output), **manifest, "files": files,
            "seconds": round(time.perf_counter() - started, 1)}


def check_probe(errors: dict, quantize: Optional[str], output: Path) -> None:
    worst = max(errors.values())
    if quantize:
        logger.info("%s: int8 model vs eager on the probe batch: relative error %.3g", output, worst)
    elif worst > EXPORT_TOLERANCE:
        raise RuntimeError(f"{output}: the export differs from the eager model by relative error {worst:.3g} "
                           f"(> {EXPORT_TOLERANCE}); nothing was written")


# ----------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model dir with weights (e.g. runs/squad1/best)")
    parser.add_argument("--format", choices=FORMATS, default="onnx",
                        help="paddle: static Paddle inference model (model.json + model.pdiparams); "
                             "onnx: model.onnx via paddle2onnx; openvino: OpenVINO IR (model.xml + model.bin); "
                             "litert: model.tflite for phones, with task metadata (pip install "
                             "'mobilebert-paddle[litert]')")
    parser.add_argument("--output", required=True, help="export directory to write (replaced atomically)")
    parser.add_argument("--fuse", action="store_true",
                        help="inference-only rewrite: fold NoNorms into the Linears, merge projections "
                             "that read the same input (same outputs within float32 rounding)")
    parser.add_argument("--quantize", choices=QUANTIZATIONS, default=None,
                        help="int8: dynamic quantization of the matmuls (onnx: ONNX Runtime's; litert: "
                             "ai-edge-quantizer's dynamic_wi8_afp32); "
                             "int8-static: NNCF static quantization calibrated on --calibration-data "
                             "(openvino format only); both first move outlier channels of the residual "
                             "stream into the weights (same outputs, same graph)")
    parser.add_argument("--calibration-data", default=None, metavar="FILE",
                        help="int8-static: the task's data (SQuAD JSON / GLUE TSV, e.g. the dev set); "
                             f"{CALIBRATION_WINDOWS} windows sampled from it measure the activation ranges")
    parser.add_argument("--calibration-windows", type=flags.integer(minimum=1), default=CALIBRATION_WINDOWS,
                        help="how many windows to sample from --calibration-data")
    parser.add_argument("--opset", type=flags.integer(minimum=MIN_OPSET, maximum=MAX_OPSET), default=ONNX_OPSET,
                        help=f"ONNX opset version, {MIN_OPSET} to {MAX_OPSET}")
    parser.add_argument("--seq-lengths", type=flags.integers(minimum=1), default=None,
                        help="litert: sequence lengths, one signature each in the one file (e.g. 128,384); the "
                             "first is the one the on-device task APIs run [default: the model's max_seq_length, "
                             "else 384 for QA and 128 for other heads]")


def run(args: argparse.Namespace) -> dict:
    return export_model(args.model, args.output, args.format, fuse=args.fuse, quantize=args.quantize,
                        opset=args.opset, calibration_data=args.calibration_data,
                        calibration_count=args.calibration_windows, seq_lengths=args.seq_lengths)
