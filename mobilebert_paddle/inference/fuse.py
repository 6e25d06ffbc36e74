"""Inference-only rewrite of MobileBERT: the same function computed with fewer, larger operations.

`fuse_model(model)` returns a Paddle layer with the model's forward signature and outputs
(within float32 rounding; tests check every config variant). What it does:

1. Folds every NoNorm (x * s + t, an affine map per channel) away. A NoNorm right after a
   Linear goes into that Linear's weight and bias. A NoNorm after a residual sum
   `s * (branch + x) + t` cannot go into one Linear, because x is also read elsewhere; instead
   each residual stream is kept in scaled coordinates: the tensor z stands for
   `actual = scale * z + shift` (per-channel vectors known at export time). Every reader
   of the stream folds scale and shift into its own weights, the branch that adds into
   the stream divides its weight by the scale, and the NoNorm just updates (scale, shift)
   without any operation at run time. A residual step is then one matmul whose output is
   added to the residual: ONNX Runtime runs it as one Gemm with the residual as its C input.
2. Merges the projections that read the same tensor: everything each layer computes from
   its input (bottleneck input, shared query/key bottleneck, value, or query/key/value when
   there is no bottleneck) is one matmul; query and key (and value when it reads the same
   bottleneck) are a second one.
3. Folds the attention scale 1/sqrt(head_size) into the query weights, and runs the
   encoder on (B*T, C) matrices so every Linear is a 2-D matmul + bias (a Gemm in ONNX).

With normalization_type "layer_norm" only 2 and 3 apply (a LayerNorm is not affine).
All folding is done in float64 and rounded once to float32.

4. After paddle2onnx, two graph rewrites (below; export.py applies them): each matmul whose
   output is added to a residual becomes one Gemm with the residual as C, and each attention
   block becomes ONNX Runtime's com.microsoft.MultiHeadAttention.

The full-size QA graph shrinks to about a quarter of its nodes, almost all Gemms; what that
buys in time is measured by `mobilebert bench` (README, Speed, with its machine and date).
"""

from __future__ import annotations

import copy
from typing import NamedTuple, Optional

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from ..model.config import MobileBertConfig
from ..model.network import (
    MobileBertEncoderOutput,
    MobileBertLayer,
    MobileBertModel,
    NoNorm,
    attention_bias_from_mask,
)


class Affine(NamedTuple):
    """A stream tensor z stands for `scale * z + shift` (per channel, float64)."""
    scale: np.ndarray
    shift: np.ndarray

    @staticmethod
    def identity(width: int) -> "Affine":
        return Affine(np.ones(width), np.zeros(width))

    def is_identity(self) -> bool:
        return bool(np.all(self.scale == 1.0) and np.all(self.shift == 0.0))


class FoldedLinear(NamedTuple):
    weight: np.ndarray  # [in, out], float64
    bias: np.ndarray    # [out]


class FuseError(ValueError):
    """The checkpoint cannot be folded (e.g. a NoNorm scale of exactly zero)."""


# ----------------------------------------------------------------------------------------
# Folding arithmetic (numpy, float64)
# ----------------------------------------------------------------------------------------

def read_linear(layer: nn.Linear) -> FoldedLinear:
    weight = layer.weight.numpy().astype(np.float64)
    bias = layer.bias.numpy().astype(np.float64) if layer.bias is not None else np.zeros(weight.shape[1])
    return FoldedLinear(weight, bias)


def read_through(stream: Affine, linear: FoldedLinear) -> FoldedLinear:
    """The Linear applied to the actual values, rewritten to read the scaled tensor z:
    (scale * z + shift) @ W + b = z @ (diag(scale) W) + (shift @ W + b)."""
    return FoldedLinear(stream.scale[:, None] * linear.weight, stream.shift @ linear.weight + linear.bias)


def fold_norm_after_linear(linear: FoldedLinear, norm: nn.Layer) -> FoldedLinear:
    """NoNorm(x @ W + b) = x @ (W * s) + (b * s + t). Only for a NoNorm."""
    scale, shift = norm.weight.numpy().astype(np.float64), norm.bias.numpy().astype(np.float64)
    return FoldedLinear(linear.weight * scale[None, :], linear.bias * scale + shift)


def concat_linears(linears: list) -> FoldedLinear:
    return FoldedLinear(np.concatenate([item.weight for item in linears], axis=1),
                        np.concatenate([item.bias for item in linears]))


def as_parameter(layer: nn.Layer, name: str, array: Optional[np.ndarray]):
    """Register a float32 constant on `layer` (a parameter so jit.save stores it)."""
    if array is None:
        setattr(layer, name, None)
        return None
    parameter = layer.create_parameter(list(array.shape), dtype="float32",
                                       default_initializer=nn.initializer.Assign(array.astype(np.float32)))
    parameter.stop_gradient = True
    layer.add_parameter(name, parameter)
    return parameter


# ----------------------------------------------------------------------------------------
# Residual step: z' = norm(branch @ W + residual)
# ----------------------------------------------------------------------------------------

class ResidualStep(nn.Layer):
    """`Norm(branch @ W + b + residual)`, with the residual held as z under `residual_affine`.

    NoNorm: the output stays in scaled coordinates, new scale = s * scale, so the step is one
    matmul plus the residual (W's columns are divided by the residual's scale and the bias
    moves into the new shift). LayerNorm: the residual must be actual values (it always is:
    every stream of a layer_norm model comes out of a LayerNorm) and the norm runs as is.
    """

    def __init__(self, branch: FoldedLinear, residual_affine: Affine, norm: nn.Layer, where: str):
        super().__init__()
        if isinstance(norm, NoNorm):
            scale, shift = norm.weight.numpy().astype(np.float64), norm.bias.numpy().astype(np.float64)
            if not np.all(np.abs(residual_affine.scale) > 0):
                raise FuseError(f"{where}: a NoNorm weight has an entry of exactly 0 (the residual stream's "
                                "scale, a product of NoNorm weights, must be divided out), which --fuse cannot fold")
            weight = branch.weight / residual_affine.scale[None, :]
            self.output_affine = Affine(scale * residual_affine.scale,
                                        scale * (branch.bias + residual_affine.shift) + shift)
            bias, self.layer_norm = None, None
        else:
            if not residual_affine.is_identity():
                raise FuseError(f"{where}: a LayerNorm reads a rescaled stream (mixed normalisations)")
            weight, bias, self.layer_norm = branch.weight, branch.bias, norm
            self.output_affine = Affine.identity(weight.shape[1])
        finite = [np.all(np.isfinite(values.astype(np.float32))) for values in (weight, *self.output_affine)]
        if not all(finite):
            raise FuseError(f"{where}: folded weights overflow float32 (NoNorm scales too extreme)")
        as_parameter(self, "weight", weight)
        as_parameter(self, "bias", bias)

    def forward(self, branch, residual):                         # (N, in), (N, out) -> (N, out)
        output = paddle.matmul(branch, self.weight) + residual    # one Gemm with C = residual in ONNX Runtime
        if self.bias is not None:
            output = output + self.bias
        if self.layer_norm is not None:
            output = self.layer_norm(output)
        return output


# ----------------------------------------------------------------------------------------
# Embeddings
# ----------------------------------------------------------------------------------------

class FusedEmbeddings(nn.Layer):
    """Word vectors (trigram concat) -> (B*T, H) stream z with `output_affine`."""

    def __init__(self, embeddings: nn.Layer, config: MobileBertConfig):
        super().__init__()
        self.trigram_input = embeddings.trigram_input
        self.ignore_padding = embeddings.ignore_padding
        self.hidden_size = config.hidden_size
        self.word_embeddings = embeddings.word_embeddings           # kept as is (the MLM head ties to it)
        self.position_embeddings = embeddings.position_embeddings
        self.token_type_embeddings = embeddings.token_type_embeddings
        self.has_transformation = self.trigram_input or config.embedding_size != config.hidden_size
        identity = Affine.identity(config.hidden_size)
        if self.has_transformation:
            self.step = ResidualStep(read_linear(embeddings.embedding_transformation), identity,
                                     embeddings.LayerNorm, "embeddings")
            self.output_affine = self.step.output_affine
        elif isinstance(embeddings.LayerNorm, NoNorm):           # words + positions + types, then NoNorm
            self.norm = None
            norm = embeddings.LayerNorm
            self.output_affine = Affine(norm.weight.numpy().astype(np.float64), norm.bias.numpy().astype(np.float64))
        else:
            self.norm = embeddings.LayerNorm
            self.output_affine = identity

    def forward(self, input_ids, token_type_ids, position_ids, attention_mask):
        length = paddle.shape(input_ids)[1]
        if position_ids is None:
            positions = self.position_embeddings.weight[:length].unsqueeze(0)        # (1, T, H)
        else:
            positions = self.position_embeddings(position_ids)                       # (B, T, H)
        if token_type_ids is None:
            token_type_ids = paddle.zeros_like(input_ids)
        position_and_type = positions + self.token_type_embeddings(token_type_ids)   # (B, T, H)
        words = self.word_embeddings(input_ids)                                      # (B, T, E)
        if self.ignore_padding and attention_mask is not None:
            words = words * attention_mask.astype(words.dtype).unsqueeze(-1)
        if self.trigram_input:
            # Shift by padding first, then slicing: no empty (B, 0, E) tensor when T == 1, on
            # which Paddle Inference's oneDNN concat fails.
            zeros = paddle.zeros_like(words[:, :1])
            padded = paddle.concat([zeros, words, zeros], axis=1)                          # (B, T + 2, E)
            words = paddle.concat([padded[:, 2:], words, padded[:, :-2]], axis=2)          # (B, T, 3E)
        words = words.reshape([-1, words.shape[-1]])                                 # (N, 3E)
        position_and_type = position_and_type.reshape([-1, self.hidden_size])        # (N, H)
        if self.has_transformation:
            return self.step(words, position_and_type)
        summed = words + position_and_type
        return summed if self.norm is None else self.norm(summed)


# ----------------------------------------------------------------------------------------
# One encoder layer
# ----------------------------------------------------------------------------------------

class FusedAttention(nn.Layer):
    """Scaled dot-product attention on (N, A) query/key/value matrices; the 1/sqrt(head_size)
    scale is already in the query weights."""

    def __init__(self, config: MobileBertConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_size = config.true_hidden_size // config.num_attention_heads

    def forward(self, query, key, value, attention_bias, heads):                  # heads: [B, T, nh, hs]
        query = query.reshape(heads).transpose([0, 2, 1, 3])                          # (B, nh, T, hs)
        key = key.reshape(heads).transpose([0, 2, 3, 1])                              # (B, nh, hs, T)
        value = value.reshape(heads).transpose([0, 2, 1, 3])                          # (B, nh, T, hs)
        scores = paddle.matmul(query, key)                                            # (B, nh, T, T)
        if attention_bias is not None:
            scores = scores + attention_bias
        context = paddle.matmul(F.softmax(scores, axis=-1), value)                    # (B, nh, T, hs)
        return context.transpose([0, 2, 1, 3]).reshape([-1, self.num_heads * self.head_size])  # (N, A)


class FusedFeedForward(nn.Layer):
    """x -> Norm(act(x W1 + b1) W2 + b2 + x): a Gemm with the activation fused, then a residual Gemm."""

    def __init__(self, intermediate: nn.Layer, output_dense: nn.Linear, norm: nn.Layer, stream: Affine,
                 where: str):
        super().__init__()
        self.activation = intermediate.activation
        first = read_through(stream, read_linear(intermediate.dense))
        as_parameter(self, "weight", first.weight)
        as_parameter(self, "bias", first.bias)
        self.step = ResidualStep(read_linear(output_dense), stream, norm, where)
        self.output_affine = self.step.output_affine

    def forward(self, stream):                                                      # (N, I) -> (N, I)
        return self.step(self.activation(F.linear(stream, self.weight, self.bias)), stream)


class FusedLayer(nn.Layer):
    """One MobileBertLayer reading and writing the (N, H) stream in scaled coordinates."""

    def __init__(self, layer: MobileBertLayer, config: MobileBertConfig, stream: Affine, where: str):
        super().__init__()
        self.use_bottleneck = config.use_bottleneck
        attention = layer.attention
        self._build_projections(layer, config, stream)
        self.attention = FusedAttention(config)
        # Attention output: Norm(context Wo + bo + residual); residual = bottlenecked input or the stream itself.
        residual_affine = Affine.identity(config.true_hidden_size) if self.use_bottleneck else stream
        self.attention_output = ResidualStep(read_linear(attention.output.dense), residual_affine,
                                             attention.output.LayerNorm, f"{where}.attention")
        inner = self.attention_output.output_affine
        self.ffn = nn.LayerList()
        for index, ffn in enumerate(layer.ffn):
            fused = FusedFeedForward(ffn.intermediate, ffn.output.dense, ffn.output.LayerNorm, inner,
                                     f"{where}.ffn.{index}")
            self.ffn.append(fused)
            inner = fused.output_affine
        self.output = FusedFeedForward(layer.intermediate, layer.output.dense, layer.output.LayerNorm, inner,
                                       f"{where}.output")
        inner = self.output.output_affine
        if self.use_bottleneck:      # back to width H, with the residual around the whole block
            bottleneck = layer.output.bottleneck
            self.output_bottleneck = ResidualStep(read_through(inner, read_linear(bottleneck.dense)), stream,
                                                  bottleneck.LayerNorm, f"{where}.output.bottleneck")
            self.output_affine = self.output_bottleneck.output_affine
        else:
            self.output_affine = inner

    def _build_projections(self, layer: MobileBertLayer, config: MobileBertConfig, stream: Affine) -> None:
        """First matmul: everything read from the layer input; second: query/key(/value) read
        from a bottleneck output. `self.first_names` / `self.second_names` name the column blocks."""
        attention = layer.attention.self
        scale = attention.scale
        query = read_linear(attention.query)
        query = FoldedLinear(query.weight * scale, query.bias * scale)   # the attention scale, folded
        key, value = read_linear(attention.key), read_linear(attention.value)
        first, first_names, self.bottleneck_norms = [], [], {}
        second, self.second_names, self.second_source = [], [], None
        if self.use_bottleneck:
            bottleneck = layer.bottleneck
            sources = [("layer_input", bottleneck.input)]
            if config.key_query_shared_bottleneck and not config.use_bottleneck_attention:
                sources.append(("shared", bottleneck.attention))
            for name, block in sources:
                linear = read_through(stream, read_linear(block.dense))
                if isinstance(block.LayerNorm, NoNorm):
                    linear = fold_norm_after_linear(linear, block.LayerNorm)
                else:
                    self.bottleneck_norms[name] = block.LayerNorm
                first.append(linear)
                first_names.append(name)
        if config.use_bottleneck and config.use_bottleneck_attention:
            self.second_source = "layer_input"
            second, self.second_names = [query, key, value], ["query", "key", "value"]
        elif config.use_bottleneck and config.key_query_shared_bottleneck:
            self.second_source = "shared"
            second, self.second_names = [query, key], ["query", "key"]
            first.append(read_through(stream, value))
            first_names.append("value")
        else:                        # query, key and value all read the layer input
            first += [read_through(stream, query), read_through(stream, key), read_through(stream, value)]
            first_names += ["query", "key", "value"]
        self.first_names, self.first_widths = first_names, [item.weight.shape[1] for item in first]
        merged = concat_linears(first)
        as_parameter(self, "first_weight", merged.weight)
        as_parameter(self, "first_bias", merged.bias)
        self.second_widths = [item.weight.shape[1] for item in second]
        merged = concat_linears(second) if second else FoldedLinear(None, None)
        as_parameter(self, "second_weight", merged.weight)
        as_parameter(self, "second_bias", merged.bias)
        for name, norm in self.bottleneck_norms.items():
            self.add_sublayer(f"{name}_norm", norm)

    def forward(self, stream, attention_bias, heads):                               # (N, H) -> (N, H)
        projected = F.linear(stream, self.first_weight, self.first_bias)
        pieces = dict(zip(self.first_names, paddle.split(projected, self.first_widths, axis=-1)))
        for name, norm in self.bottleneck_norms.items():
            pieces[name] = norm(pieces[name])
        if self.second_source is not None:
            projected = F.linear(pieces[self.second_source], self.second_weight, self.second_bias)
            pieces.update(zip(self.second_names, paddle.split(projected, self.second_widths, axis=-1)))
        context = self.attention(pieces["query"], pieces["key"], pieces["value"], attention_bias, heads)
        inner = self.attention_output(context, pieces["layer_input"] if self.use_bottleneck else stream)
        for ffn in self.ffn:
            inner = ffn(inner)
        inner = self.output(inner)
        if self.use_bottleneck:
            return self.output_bottleneck(inner, stream)
        return inner


# ----------------------------------------------------------------------------------------
# The backbone and any head on top of it
# ----------------------------------------------------------------------------------------

class FusedMobileBertModel(nn.Layer):
    """Drop-in for MobileBertModel at inference: same forward, same outputs (no hidden states)."""

    def __init__(self, model: MobileBertModel):
        super().__init__()
        self.config = model.config
        self.embeddings = FusedEmbeddings(model.embeddings, model.config)
        stream = self.embeddings.output_affine
        self.layer = nn.LayerList()
        for index, layer in enumerate(model.encoder.layer):
            fused = FusedLayer(layer, model.config, stream, f"encoder.layer.{index}")
            self.layer.append(fused)
            stream = fused.output_affine
        self.pooler = model.pooler
        # Back to actual values once, at the end: sequence = scale * z + shift.
        as_parameter(self, "output_scale", None if stream.is_identity() else stream.scale)
        as_parameter(self, "output_shift", None if stream.is_identity() else stream.shift)

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, position_ids=None, *,
                output_hidden_states: bool = False, output_attentions: bool = False):
        if output_hidden_states or output_attentions:
            raise ValueError("the fused inference graph has no per-layer hidden states or attention maps "
                             "(its residual streams are rescaled); use the eager model for them")
        shape = paddle.shape(input_ids)
        batch, length = shape[0], shape[1]
        stream = self.embeddings(input_ids, token_type_ids, position_ids, attention_mask)   # (N, H)
        attention_bias = attention_bias_from_mask(attention_mask, stream.dtype)            # (B, 1, 1, T)
        # The (B, T, nh, hs) shape every attention reshape uses, built once (one shape tensor in the graph).
        head_size = self.config.true_hidden_size // self.config.num_attention_heads
        heads = paddle.concat([shape[:2], paddle.to_tensor([self.config.num_attention_heads, head_size],
                                                             dtype=shape.dtype)])
        for layer in self.layer:
            stream = layer(stream, attention_bias, heads)
        if self.output_scale is not None:
            stream = stream * self.output_scale + self.output_shift
        sequence_output = stream.reshape([batch, length, self.config.hidden_size])         # (B, T, H)
        pooled_output = self.pooler(sequence_output) if self.pooler is not None else None
        return MobileBertEncoderOutput(sequence_output, pooled_output, None)


def fuse_model(model: nn.Layer) -> nn.Layer:
    """The fused inference twin of any MobileBERT model (backbone or head model), in eval mode.

    Heads are reused as they are: only the backbone (`model.mobilebert`) is rewritten. The
    input model is left untouched. Raises FuseError if the weights cannot be folded.
    """
    model.eval()
    with paddle.no_grad():
        if isinstance(model, MobileBertModel):
            fused = FusedMobileBertModel(model)
        else:
            backbone = model.mobilebert
            model.mobilebert = None              # copy the head only, not the full backbone
            try:
                fused = copy.deepcopy(model)
            finally:
                model.mobilebert = backbone
            fused.mobilebert = FusedMobileBertModel(backbone)
    fused.eval()
    return fused


# ----------------------------------------------------------------------------------------
# ONNX graph rewrites for the fused model (after paddle2onnx)
# ----------------------------------------------------------------------------------------

class GraphIndex:
    """Producer and consumers of every tensor of an ONNX graph."""

    def __init__(self, graph):
        self.graph = graph
        self.producer = {name: node for node in graph.node for name in node.output}
        self.consumers: dict = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.initializers = {item.name: item for item in graph.initializer}
        self.graph_outputs = {item.name for item in graph.output}

    def only_consumer(self, name: str):
        """The single node reading `name`, or None (several readers, or a graph output)."""
        readers = self.consumers.get(name, [])
        return readers[0] if len(readers) == 1 and name not in self.graph_outputs else None

    def made_by(self, name: str, op_type: str, perm: Optional[list] = None):
        node = self.producer.get(name)
        if node is None or node.op_type != op_type:
            return None
        if perm is not None and list(_attribute(node, "perm") or []) != perm:
            return None
        return node


def _attribute(node, name: str):
    from onnx import helper

    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return None


def tensor_ranks(model) -> dict:
    """Rank of every tensor whose rank ONNX shape inference can tell."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    ranks = {item.name: len(item.dims) for item in graph.initializer}
    for value in list(graph.value_info) + list(graph.input) + list(graph.output):
        if value.type.tensor_type.HasField("shape"):
            ranks[value.name] = len(value.type.tensor_type.shape.dim)
    return ranks


def fuse_residual_gemms(model) -> int:
    """MatMul(A, W) + R -> Gemm(A, W, C=R) where A and R are matrices (R the residual, (M, N)).

    ONNX Runtime makes this fusion only when it can prove R's row count equals A's, which
    it cannot across the dynamic reshapes here; the fused model guarantees it by construction
    (every residual step adds two (B*T, C) matrices). Returns the number of Gemms made."""
    from onnx import helper

    graph = model.graph
    ranks, index = tensor_ranks(model), GraphIndex(graph)
    fused = 0
    for node in list(graph.node):
        weight = index.initializers.get(node.input[1]) if node.op_type == "MatMul" else None
        if weight is None or len(weight.dims) != 2 or ranks.get(node.input[0]) != 2:
            continue
        add = index.only_consumer(node.output[0])
        if add is None or add.op_type != "Add":
            continue
        residual = add.input[1] if add.input[0] == node.output[0] else add.input[0]
        if residual in index.initializers or ranks.get(residual) != 2:
            continue
        gemm = helper.make_node("Gemm", [node.input[0], node.input[1], residual], [add.output[0]],
                                name=f"{node.name or 'matmul'}_residual_gemm")
        graph.node.insert(list(graph.node).index(add), gemm)
        graph.node.remove(node)
        graph.node.remove(add)
        fused += 1
    return fused


def use_multi_head_attention(model, num_heads: int, width: int) -> int:
    """Replace each attention block FusedAttention produced (reshape/transpose q, k, v;
    matmul; + mask bias; softmax; matmul; transpose back) by ONNX Runtime's
    com.microsoft.MultiHeadAttention on (B, T, width) tensors. The mask bias (B, 1, 1, T) is
    expanded once to (B, 1, T, T), the form the op takes. Returns the number of blocks replaced."""
    from onnx import helper

    graph = model.graph
    index = GraphIndex(graph)
    replaced, expanded_bias = 0, {}
    for softmax in [node for node in graph.node if node.op_type == "Softmax"]:
        block = _match_attention(index, softmax)
        if block is None:
            continue
        prefix = f"mha_{replaced}"
        new_nodes = _shape_3d_nodes(prefix, block["shape"], width)
        inputs = []
        for role in ("query", "key", "value"):
            reshaped = f"{prefix}_{role}"
            new_nodes.append(helper.make_node("Reshape", [block[role], f"{prefix}_shape3"], [reshaped]))
            inputs.append(reshaped)
        bias = ""
        if block["bias"] is not None:
            if block["bias"] not in expanded_bias:
                expanded_bias[block["bias"]] = f"{prefix}_bias_full"
                new_nodes += _expand_bias_nodes(prefix, block["bias"], block["shape"])
            bias = expanded_bias[block["bias"]]
        output = f"{prefix}_context"
        new_nodes.append(helper.make_node("MultiHeadAttention", inputs + ["", "", bias], [output],
                                          domain="com.microsoft", num_heads=num_heads, scale=1.0))
        block["output_reshape"].input[0] = output
        position = list(graph.node).index(block["nodes"][-1])
        for offset, node in enumerate(new_nodes):
            graph.node.insert(position + offset, node)
        for node in block["nodes"]:
            graph.node.remove(node)
        replaced += 1
    if replaced and not any(item.domain == "com.microsoft" for item in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return replaced


def _match_attention(index: GraphIndex, softmax) -> Optional[dict]:
    """The nodes of one FusedAttention block around `softmax`, or None if it does not match."""
    scores = index.producer.get(softmax.input[0])
    bias = None
    if scores is not None and scores.op_type == "Add":
        add = scores
        scores = next((index.producer.get(name) for name in add.input
                       if index.made_by(name, "MatMul") is not None), None)
        if scores is None or index.only_consumer(scores.output[0]) is not add:
            return None
        bias = add.input[1] if add.input[0] == scores.output[0] else add.input[0]
    else:
        add = None
    if scores is None or scores.op_type != "MatMul":
        return None
    query_t = index.made_by(scores.input[0], "Transpose", [0, 2, 1, 3])
    key_t = index.made_by(scores.input[1], "Transpose", [0, 2, 3, 1])
    mix = index.only_consumer(softmax.output[0])
    if query_t is None or key_t is None or mix is None or mix.op_type != "MatMul" or mix.input[0] != softmax.output[0]:
        return None
    value_t = index.made_by(mix.input[1], "Transpose", [0, 2, 1, 3])
    back = index.only_consumer(mix.output[0])
    if value_t is None or back is None or back.op_type != "Transpose" or list(_attribute(back, "perm")) != [0, 2, 1, 3]:
        return None
    output_reshape = index.only_consumer(back.output[0])
    reshapes = [index.made_by(node.input[0], "Reshape") for node in (query_t, key_t, value_t)]
    if output_reshape is None or output_reshape.op_type != "Reshape" or None in reshapes:
        return None
    transposes = [query_t, key_t, value_t]
    private = [*reshapes, *transposes, scores, softmax, mix, back] + ([add] if add else [])
    if any(index.only_consumer(node.output[0]) is None for node in private):
        return None
    ordered = sorted(private, key=list(index.graph.node).index)
    return {"query": reshapes[0].input[0], "key": reshapes[1].input[0], "value": reshapes[2].input[0],
            "shape": reshapes[0].input[1], "bias": bias, "nodes": ordered, "output_reshape": output_reshape}


def _constant_node(name: str, values: list):
    from onnx import TensorProto, helper

    return helper.make_node("Constant", [], [name], value=helper.make_tensor(name, TensorProto.INT64,
                                                                             [len(values)], values))


def _shape_3d_nodes(prefix: str, shape_4d: str, width: int) -> list:
    """(B, T, nh, hs) shape tensor -> (B, T, width)."""
    from onnx import helper

    return [_constant_node(f"{prefix}_zero", [0]), _constant_node(f"{prefix}_two", [2]),
            _constant_node(f"{prefix}_width", [width]),
            helper.make_node("Slice", [shape_4d, f"{prefix}_zero", f"{prefix}_two"], [f"{prefix}_batch_length"]),
            helper.make_node("Concat", [f"{prefix}_batch_length", f"{prefix}_width"], [f"{prefix}_shape3"], axis=0)]


def _expand_bias_nodes(prefix: str, bias: str, shape_4d: str) -> list:
    """(B, 1, 1, T) additive mask -> (B, 1, T, T)."""
    from onnx import helper

    return [_constant_node(f"{prefix}_one", [1]), _constant_node(f"{prefix}_b0", [0]),
            _constant_node(f"{prefix}_b1", [1]), _constant_node(f"{prefix}_b2", [2]),
            helper.make_node("Slice", [shape_4d, f"{prefix}_b0", f"{prefix}_b1"], [f"{prefix}_batch"]),
            helper.make_node("Slice", [shape_4d, f"{prefix}_b1", f"{prefix}_b2"], [f"{prefix}_length"]),
            helper.make_node("Concat", [f"{prefix}_batch", f"{prefix}_one", f"{prefix}_length", f"{prefix}_length"],
                             [f"{prefix}_bias_shape"], axis=0),
            helper.make_node("Expand", [bias, f"{prefix}_bias_shape"], [f"{prefix}_bias_full"])]

