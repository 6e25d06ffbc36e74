"""From a Paddle model to an ONNX graph: trace with `paddle.jit.to_static` over dynamic batch and
length (InputSpec [None, None]), save the PIR program (`paddle.jit.save`: model.json +
model.pdiparams), convert it with paddle2onnx (which reads PIR programs directly), then tidy the
graph: input/output names, dynamic axes, constants as initializers.
"""


from __future__ import annotations

import errno
from pathlib import Path

from ..core.logs import stdout_to_stderr
from ..model.config import MODEL_INPUT_NAMES
from .predictors import input_rank, output_names

ONNX_OPSET = 17


# ----------------------------------------------------------------------------------------
# Static graph and ONNX
# ----------------------------------------------------------------------------------------

def export_layer(model, architecture: str):
    """A layer with forward(input_ids, token_type_ids, attention_mask) -> the head's output
    tensors, which is what to_static traces. How many outputs there are is fixed here from
    the architecture: inside the traced function a static value is not a paddle.Tensor,
    so a type test there would pick the wrong branch."""
    import paddle

    class ExportWrapper(paddle.nn.Layer):
        def __init__(self, inner, count: int):
            super().__init__()
            self.inner = inner
            self.count = count

        def forward(self, input_ids, token_type_ids, attention_mask):
            outputs = self.inner(input_ids, token_type_ids, attention_mask)
            if self.count == 1:
                return outputs
            return tuple(outputs[index] for index in range(self.count))

    wrapper = ExportWrapper(model, len(output_names(architecture)))
    wrapper.eval()
    return wrapper


def save_static_model(model, architecture: str, prefix: Path) -> None:
    """to_static over (batch, length)-dynamic int64 inputs, then jit.save -> prefix.json/.pdiparams."""
    import paddle
    from paddle.static import InputSpec

    shape = [None] * input_rank(architecture)
    specs = [InputSpec(shape, "int64", name=name) for name in MODEL_INPUT_NAMES]
    static = paddle.jit.to_static(export_layer(model, architecture), input_spec=specs, full_graph=True)
    paddle.jit.save(static, str(prefix))
    check_static_model(prefix)


def check_static_model(prefix: Path) -> None:
    """jit.save does not report a failed write: on a full disk it leaves a cut model.json or
    .pdiparams, which paddle2onnx then rejects by exiting the process. Read both back first."""
    import json

    import paddle

    try:
        json.loads(Path(f"{prefix}.json").read_text(encoding="utf-8"))
        paddle.jit.load(str(prefix))
    except (OSError, ValueError, RuntimeError) as error:
        reason = str(error).strip().splitlines()[0][:120] if str(error).strip() else type(error).__name__
        raise OSError(errno.EIO, f"Paddle wrote an incomplete static model, is the disk full? ({reason})",
                      f"{prefix}.json") from None


def static_to_onnx(prefix: Path, architecture: str, opset: int = ONNX_OPSET):
    """paddle2onnx on the saved PIR program; returns the tidied onnx.ModelProto."""
    import onnx
    import paddle2onnx

    try:
        with stdout_to_stderr():   # paddle2onnx's C++ side prints progress on stdout, where our JSON goes
            model_bytes = paddle2onnx.export(f"{prefix}.json", f"{prefix}.pdiparams", None, opset_version=opset,
                                             enable_onnx_checker=True, enable_optimize=True)
    except (Exception, SystemExit) as error:  # paddle2onnx logs and re-raises many types, or calls sys.exit
        raise RuntimeError(f"paddle2onnx could not convert the static model: {error}") from error
    if not model_bytes:
        raise RuntimeError("paddle2onnx returned an empty model")
    model = onnx.load_from_string(model_bytes)
    tidy_onnx(model, architecture)
    return model


def tidy_onnx(model, architecture: str) -> None:
    """Name the outputs after the head's outputs and the dynamic axes after what they hold;
    drop the constants paddle2onnx leaves unused."""
    graph = model.graph
    renames = {output.name: name for output, name in zip(graph.output, output_names(architecture))}
    for node in graph.node:
        for index, name in enumerate(node.input):
            node.input[index] = renames.get(name, name)
        for index, name in enumerate(node.output):
            node.output[index] = renames.get(name, name)
    for output in graph.output:
        output.name = renames.get(output.name, output.name)
    axes = ("batch", "choices", "sequence") if input_rank(architecture) == 3 else ("batch", "sequence")
    for value in list(graph.input) + list(graph.output):
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if not dim.dim_value:
                dim.dim_param = axes[min(axis, len(axes) - 1)]
    constants_to_initializers(graph)
    used = {name for node in graph.node for name in node.input}
    unused = [item for item in graph.initializer if item.name not in used]
    for item in unused:
        graph.initializer.remove(item)


def constants_to_initializers(graph) -> None:
    """paddle2onnx writes every weight as a Constant node, and many Identity nodes; make the
    constants initializers (what the int8 quantizer looks for) and drop the Identities."""
    from onnx import helper

    outputs = {output.name for output in graph.output}
    constants = {}
    for node in list(graph.node):
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            tensor = helper.get_attribute_value(node.attribute[0])
            tensor.name = node.output[0]
            constants[tensor.name] = tensor
            graph.node.remove(node)
    aliases = {}
    for node in list(graph.node):   # read through Identity nodes (nodes are in topological order)
        if node.op_type == "Identity" and node.output[0] not in outputs:
            aliases[node.output[0]] = aliases.get(node.input[0], node.input[0])
            graph.node.remove(node)
    for node in graph.node:
        for index, name in enumerate(node.input):
            node.input[index] = aliases.get(name, name)
    graph.initializer.extend(constants.values())
