"""MobileBERT in PaddlePaddle: every layer and every task head, in one file.

Paper: Sun et al., "MobileBERT: a Compact Task-Agnostic BERT for Resource-Limited Devices",
ACL 2020 (arXiv 2004.02984). The reference is HuggingFace transformers' PyTorch
MobileBERT; every module attribute here carries the same name as there, so a checkpoint's
keys map one to one (see modeldir.hf_to_paddle) and `mobilebert compare` can prove the two forwards equal.

Reading order follows the paper's Figure 1:
    embeddings (128-d word vectors, trigram concat, projected to 512)
    -> num_hidden_layers x MobileBertLayer:
         bottleneck in (512 -> 128)  ->  multi-head attention at 128
         -> (num_feedforward_networks - 1) stacked FFNs at 128 -> the block's own FFN
         -> bottleneck out (128 -> 512) with the residual around the whole block
    -> task head.
Shapes: B batch, T tokens, H = hidden_size (512), I = true_hidden_size (128 with bottlenecks).

Paddle differs from PyTorch in ways that matter for parity:
Linear weights are stored [in, out]; `nn.Embedding(padding_idx=...)` would zero the pad row,
so it is never set; LayerNorm's epsilon is passed explicitly (HF leaves two of them at
PyTorch's 1e-5 default, reproduced below); masked attention scores get the dtype minimum.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import NamedTuple, Optional, Tuple

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from ..core import dropout_masks
from .config import MobileBertConfig
from .modeldir import load_weights_for, match_state_dict, save_paddle_model_dir

logger = logging.getLogger(__name__)

TORCH_LAYER_NORM_DEFAULT_EPS = 1e-5  # where HF builds a LayerNorm without passing layer_norm_eps


# ----------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------

def activation(name: str):
    """The activation function named by config.hidden_act (same formulas as HF's ACT2FN)."""
    functions = {
        "relu": F.relu,
        "gelu": lambda x: F.gelu(x, approximate=False),
        "gelu_new": lambda x: F.gelu(x, approximate=True),
        "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate=True),
        "tanh": paddle.tanh,
        "silu": F.silu,
        "swish": F.silu,
    }
    return functions[name]


# ----------------------------------------------------------------------------------------
# Training on CPU: the same Linear and NoNorm with cheaper gradients
# ----------------------------------------------------------------------------------------

def fused_training(layer: nn.Layer, x) -> bool:
    """Whether `layer` runs its fused training path: eager training of float32 on CPU without AMP.

    There, Paddle computes the gradient of a broadcast bias or scale (a sum over every row) with a
    generic reduction 3-6x slower than one matrix-vector product (a 512-wide NoNorm's backward:
    5.7 ms where PyTorch takes 1.1), and a bias add as its own pass. LinearFunction and
    NoNormFunction take those sums as products with a row of ones and fold the bias into the
    matmul (addmm): the same values (tests/test_model_parity.py compares outputs and every
    gradient), a full-size training step ~25% faster. Evaluation, export, AMP and GPUs keep
    the plain ops."""
    return layer.training and eager_cpu_float32(x)


def eager_cpu_float32(x) -> bool:
    """Eager (not traced for export) float32 on CPU without AMP."""
    return (x.dtype == paddle.float32 and paddle.in_dynamic_mode() and x.place.is_cpu_place()
            and not paddle.amp.is_autocast_enabled())


def column_sums(rows):
    """(M, N) -> (N,): the sum over rows, as ones (1, M) @ rows (BLAS; Paddle's reduce is slower)."""
    return paddle.matmul(paddle.ones([1, rows.shape[0]], dtype=rows.dtype), rows).reshape([-1])


def needs_gradient(*tensors) -> tuple:
    return tuple(not tensor.stop_gradient for tensor in tensors)


class LinearFunction(paddle.autograd.PyLayer):
    """x @ weight + bias ([in, out] weight, as Paddle's Linear) with the bias in the GEMM and its
    gradient a column sum."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.needs = needs_gradient(x, weight, bias)
        width_in, width_out = weight.shape
        return paddle.addmm(bias, x.reshape([-1, width_in]), weight).reshape([*x.shape[:-1], width_out])

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensor()
        width_in, width_out = weight.shape
        rows = grad.reshape([-1, width_out])
        needs_x, needs_weight, needs_bias = ctx.needs
        return (paddle.matmul(grad, weight, transpose_y=True) if needs_x else None,
                paddle.matmul(x.reshape([-1, width_in]), rows, transpose_x=True) if needs_weight else None,
                column_sums(rows) if needs_bias else None)


class NoNormFunction(paddle.autograd.PyLayer):
    """x * weight + bias over the last axis, its weight and bias gradients as column sums."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.needs = needs_gradient(x, weight, bias)
        return x * weight + bias

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensor()
        width = weight.shape[0]
        rows = grad.reshape([-1, width])
        needs_x, needs_weight, needs_bias = ctx.needs
        return (grad * weight if needs_x else None,
                column_sums(rows * x.reshape([-1, width])) if needs_weight else None,
                column_sums(rows) if needs_bias else None)


class VocabularyLogitsFunction(paddle.autograd.PyLayer):
    """The MLM head's logits, hidden @ [word_embeddings | dense]^T + bias, with each weight's
    gradient computed into its own tensor. Through concatenated weights, every step copies the
    (V, H + 1) matrix forward and splits its gradient backward (at full size and V = 30,522 two
    copies of 62 MB, ~80 ms a step on 2 cores); with few rows (N <= H: the masked positions of a
    small batch) two products and an add are cheaper than the copy, with many the one product over
    concatenated weights is."""

    @staticmethod
    def forward(ctx, hidden, embeddings, dense, bias):
        ctx.save_for_backward(hidden, embeddings, dense)
        ctx.needs = needs_gradient(hidden, embeddings, dense, bias)
        width, vocabulary = embeddings.shape[1], embeddings.shape[0]
        rows = hidden.reshape([-1, hidden.shape[-1]])
        if rows.shape[0] > rows.shape[1]:
            ones = paddle.ones([rows.shape[0], 1], dtype=rows.dtype)
            weight = paddle.concat([embeddings, dense, bias.unsqueeze(-1)], axis=1)
            logits = paddle.matmul(paddle.concat([rows, ones], axis=-1), weight, transpose_y=True)
        else:
            logits = (paddle.matmul(rows[:, :width], embeddings, transpose_y=True)
                      + paddle.matmul(rows[:, width:], dense, transpose_y=True) + bias)
        return logits.reshape([*hidden.shape[:-1], vocabulary])

    @staticmethod
    def backward(ctx, grad):
        hidden, embeddings, dense = ctx.saved_tensor()
        width = embeddings.shape[1]
        rows = hidden.reshape([-1, hidden.shape[-1]])
        grad_rows = grad.reshape([rows.shape[0], -1])
        needs_hidden, needs_embeddings, needs_dense, needs_bias = ctx.needs
        grad_hidden = None
        if needs_hidden:
            grad_hidden = paddle.concat([paddle.matmul(grad_rows, embeddings), paddle.matmul(grad_rows, dense)],
                                        axis=-1).reshape(hidden.shape)
        return (grad_hidden,
                paddle.matmul(grad_rows, rows[:, :width], transpose_x=True) if needs_embeddings else None,
                paddle.matmul(grad_rows, rows[:, width:], transpose_x=True) if needs_dense else None,
                column_sums(grad_rows) if needs_bias else None)


class Linear(nn.Linear):
    """Paddle's Linear (same parameters, same values), with the fused training path on CPU."""

    def forward(self, x):
        if self.bias is not None and fused_training(self, x):
            return LinearFunction.apply(x, self.weight, self.bias)
        return super().forward(x)


class NoNorm(nn.Layer):
    """MobileBERT's replacement for LayerNorm: an element-wise affine map, x * weight + bias.

    No statistics are computed, which is what makes it cheap on phones (paper, Sec. 3.5).
    """

    def __init__(self, size: int):
        super().__init__()
        self.weight = self.create_parameter([size], default_initializer=nn.initializer.Constant(1.0))
        self.bias = self.create_parameter([size], is_bias=True, default_initializer=nn.initializer.Constant(0.0))

    def forward(self, x):
        if fused_training(self, x):
            return NoNormFunction.apply(x, self.weight, self.bias)
        return x * self.weight + self.bias


class Dropout(nn.Dropout):
    """Paddle's Dropout (inverted, "upscale_in_train"), its mask drawn by NumPy in eager float32
    training on CPU (core.dropout_masks: half the time of Paddle's CPU kernel)."""

    def forward(self, x):
        if self.p > 0 and self.axis is None and self.mode == "upscale_in_train" and fused_training(self, x):
            return x * paddle.to_tensor(dropout_masks.scaled_mask(x.shape, self.p))
        return super().forward(x)


class HeadLinear(nn.Linear):
    """A Linear that reads the ~1e7 hidden states down to a few numbers per token or per
    sequence (QA start/end, labels, NSP, the pooler's B rows), accumulated in float64.

    Such products are thin (N = 2 outputs, or M = B rows) and Paddle's CPU kernel for thin
    float32 products sums the 512 terms with about twice PyTorch's rounding error (QA logits
    1e-6 vs 4.7e-7 of max|logit| at full size, tests/test_precision.py). In
    float64 the result is rounded once; the cost is negligible (B x T x 512 x labels
    multiply-adds). Other dtypes (bf16 AMP) take the ordinary path.
    """

    def forward(self, x):
        if x.dtype != paddle.float32:
            return super().forward(x)
        bias = None if self.bias is None else self.bias.astype("float64")
        return F.linear(x.astype("float64"), self.weight.astype("float64"), bias).astype(x.dtype)


def normalization(config: MobileBertConfig, size: int, epsilon: float) -> nn.Layer:
    if config.normalization_type == "layer_norm":
        return nn.LayerNorm(size, epsilon=epsilon)
    return NoNorm(size)


class MobileBertEmbeddings(nn.Layer):
    """Word vectors of width embedding_size (128); with trigram_input each position sees the
    concatenation [next token, this token, previous token] (3 x 128), projected to H."""

    def __init__(self, config: MobileBertConfig):
        super().__init__()
        self.trigram_input = config.trigram_input
        self.ignore_padding = config.trigram_input and config.trigram_ignores_padding
        self.embedding_size = config.embedding_size
        self.hidden_size = config.hidden_size
        self.word_embeddings = nn.Embedding(config.vocab_size, config.embedding_size)  # no padding_idx (trap)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        input_width = config.embedding_size * (3 if config.trigram_input else 1)
        self.embedding_transformation = Linear(input_width, config.hidden_size)
        self.LayerNorm = normalization(config, config.hidden_size, TORCH_LAYER_NORM_DEFAULT_EPS)
        self.dropout = Dropout(config.hidden_dropout_prob)
        self.register_buffer("position_ids", paddle.arange(config.max_position_embeddings, dtype="int64"),
                             persistable=False)

    def forward(self, input_ids, token_type_ids=None, position_ids=None, attention_mask=None):
        seq_length = input_ids.shape[1]
        if position_ids is None:
            position_ids = self.position_ids[:seq_length].unsqueeze(0)               # (1, T)
        if token_type_ids is None:
            token_type_ids = paddle.zeros_like(input_ids)
        words = self.word_embeddings(input_ids)                                      # (B, T, 128)
        if self.ignore_padding and attention_mask is not None:
            words = words * attention_mask.astype(words.dtype).unsqueeze(-1)         # [PAD] neighbours -> 0
        if self.trigram_input:
            zeros = paddle.zeros_like(words[:, :1])                                  # (B, 1, 128)
            next_words = paddle.concat([words[:, 1:], zeros], axis=1)
            previous_words = paddle.concat([zeros, words[:, :-1]], axis=1)
            words = paddle.concat([next_words, words, previous_words], axis=2)       # (B, T, 384)
        if self.trigram_input or self.embedding_size != self.hidden_size:
            words = self.embedding_transformation(words)                             # (B, T, H)
        embeddings = words + self.position_embeddings(position_ids) + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(embeddings))


def attention_input_widths(config: MobileBertConfig) -> tuple[int, int]:
    """Widths that (query and key, value) read; see Bottleneck for which tensor each reads.

    Query and key read the I-wide bottleneck, except in IB-BERT's layout (use_bottleneck
    without bottleneck attention or a shared query/key bottleneck), where all three read the
    H-wide block input as Google's layer defines it (HF builds I-wide query/key there, so
    transformers cannot run such a checkpoint). Value reads the block input unless
    use_bottleneck_attention."""
    reads_block_input = config.use_bottleneck and not (config.use_bottleneck_attention
                                                       or config.key_query_shared_bottleneck)
    query_key_width = config.hidden_size if reads_block_input else config.true_hidden_size
    value_width = config.true_hidden_size if config.use_bottleneck_attention else config.hidden_size
    return query_key_width, value_width


class MobileBertSelfAttention(nn.Layer):
    def __init__(self, config: MobileBertConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_size = config.true_hidden_size // config.num_attention_heads
        self.scale = self.head_size ** -0.5
        all_heads = self.num_heads * self.head_size
        query_key_width, value_width = attention_input_widths(config)
        self.query = Linear(query_key_width, all_heads)
        self.key = Linear(query_key_width, all_heads)
        self.value = Linear(value_width, all_heads)
        self.dropout = Dropout(config.attention_probs_dropout_prob)

    def split_heads(self, x):
        batch, length = x.shape[0], x.shape[1]
        return x.reshape([batch, length, self.num_heads, self.head_size]).transpose([0, 2, 1, 3])  # (B, nh, T, hs)

    def forward(self, query_input, key_input, value_input, attention_bias):
        """Returns the context (B, T, I) and the attention probabilities (B, nh, T, T), the
        latter before dropout (what distillation and HF's output_attentions at eval see)."""
        query = self.split_heads(self.query(query_input))
        key = self.split_heads(self.key(key_input))
        value = self.split_heads(self.value(value_input))
        scores = paddle.matmul(query, key, transpose_y=True) * self.scale              # (B, nh, T, T)
        if attention_bias is not None:
            scores = scores + attention_bias                                          # (B, 1, 1, T) broadcast
        probabilities = F.softmax(scores, axis=-1)
        context = paddle.matmul(self.dropout(probabilities), value).transpose([0, 2, 1, 3])  # (B, T, nh, hs)
        context = context.reshape([context.shape[0], context.shape[1], self.num_heads * self.head_size])
        return context, probabilities


class MobileBertSelfOutput(nn.Layer):
    def __init__(self, config: MobileBertConfig):
        super().__init__()
        self.use_bottleneck = config.use_bottleneck
        self.dense = Linear(config.true_hidden_size, config.true_hidden_size)
        self.LayerNorm = normalization(config, config.true_hidden_size, config.layer_norm_eps)
        if not self.use_bottleneck:
            self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states, residual):
        output = self.dense(hidden_states)
        if not self.use_bottleneck:
            output = self.dropout(output)
        return self.LayerNorm(output + residual)


class MobileBertAttention(nn.Layer):
    def __init__(self, config: MobileBertConfig):
        super().__init__()
        self.self = MobileBertSelfAttention(config)
        self.output = MobileBertSelfOutput(config)

    def forward(self, query_input, key_input, value_input, layer_input, attention_bias):
        context, probabilities = self.self(query_input, key_input, value_input, attention_bias)
        return self.output(context, layer_input), probabilities


class MobileBertIntermediate(nn.Layer):
    def __init__(self, config: MobileBertConfig):
        super().__init__()
        self.dense = Linear(config.true_hidden_size, config.intermediate_size)
        self.activation = activation(config.hidden_act)

    def forward(self, hidden_states):
        return self.activation(self.dense(hidden_states))


class OutputBottleneck(nn.Layer):
    """The block's exit: I -> H, plus the residual that skips the whole block."""

    def __init__(self, config: MobileBertConfig):
        super().__init__()
        self.dense = Linear(config.true_hidden_size, config.hidden_size)
        self.LayerNorm = normalization(config, config.hidden_size, config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states, residual):
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + residual)


class MobileBertOutput(nn.Layer):
    def __init__(self, config: MobileBertConfig):
        super().__init__()
        self.use_bottleneck = config.use_bottleneck
        self.dense = Linear(config.intermediate_size, config.true_hidden_size)
        self.LayerNorm = normalization(config, config.true_hidden_size, TORCH_LAYER_NORM_DEFAULT_EPS)
        if self.use_bottleneck:
            self.bottleneck = OutputBottleneck(config)
        else:
            self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, intermediate_states, block_residual, layer_input):
        output = self.dense(intermediate_states)
        if not self.use_bottleneck:
            return self.LayerNorm(self.dropout(output) + block_residual)
        output = self.LayerNorm(output + block_residual)
        return self.bottleneck(output, layer_input)


class BottleneckLayer(nn.Layer):
    def __init__(self, config: MobileBertConfig):
        super().__init__()
        self.dense = Linear(config.hidden_size, config.intra_bottleneck_size)
        self.LayerNorm = normalization(config, config.intra_bottleneck_size, config.layer_norm_eps)

    def forward(self, hidden_states):
        return self.LayerNorm(self.dense(hidden_states))


class Bottleneck(nn.Layer):
    """The block's entry: H -> I. Decides what attention reads as query, key and value.

    - use_bottleneck_attention: all three read the bottlenecked input;
    - key_query_shared_bottleneck: query and key read a second, shared bottleneck of the
      input, value reads the full-width input (the released checkpoint's setting);
    - otherwise query, key and value all read the full-width input.
    """

    def __init__(self, config: MobileBertConfig):
        super().__init__()
        self.key_query_shared_bottleneck = config.key_query_shared_bottleneck
        self.use_bottleneck_attention = config.use_bottleneck_attention
        self.input = BottleneckLayer(config)
        if self.key_query_shared_bottleneck:
            self.attention = BottleneckLayer(config)

    def forward(self, hidden_states) -> Tuple[paddle.Tensor, ...]:
        """Returns (query input, key input, value input, block input at width I)."""
        layer_input = self.input(hidden_states)
        if self.use_bottleneck_attention:
            return layer_input, layer_input, layer_input, layer_input
        if self.key_query_shared_bottleneck:
            shared = self.attention(hidden_states)
            return shared, shared, hidden_states, layer_input
        return hidden_states, hidden_states, hidden_states, layer_input


class FFNOutput(nn.Layer):
    def __init__(self, config: MobileBertConfig):
        super().__init__()
        self.dense = Linear(config.intermediate_size, config.true_hidden_size)
        self.LayerNorm = normalization(config, config.true_hidden_size, config.layer_norm_eps)

    def forward(self, hidden_states, residual):
        return self.LayerNorm(self.dense(hidden_states) + residual)


class FFNLayer(nn.Layer):
    """One of the extra stacked feed-forward networks (paper Sec. 3.3: they rebalance the
    parameters between attention and FFN in the narrow block)."""

    def __init__(self, config: MobileBertConfig):
        super().__init__()
        self.intermediate = MobileBertIntermediate(config)
        self.output = FFNOutput(config)

    def forward(self, hidden_states):
        return self.output(self.intermediate(hidden_states), hidden_states)


class MobileBertLayer(nn.Layer):
    def __init__(self, config: MobileBertConfig):
        super().__init__()
        self.use_bottleneck = config.use_bottleneck
        self.attention = MobileBertAttention(config)
        self.intermediate = MobileBertIntermediate(config)
        self.output = MobileBertOutput(config)
        if self.use_bottleneck:
            self.bottleneck = Bottleneck(config)
        # The extra FFNs stacked before the block's own one (none when num_feedforward_networks == 1).
        self.ffn = nn.LayerList([FFNLayer(config) for _ in range(config.num_feedforward_networks - 1)])

    def forward(self, hidden_states, attention_bias):                                # (B, T, H)
        """Returns the layer's output (B, T, H) and its attention probabilities (B, nh, T, T)."""
        if self.use_bottleneck:
            query_input, key_input, value_input, layer_input = self.bottleneck(hidden_states)
        else:
            query_input = key_input = value_input = layer_input = hidden_states
        attention_output, probabilities = self.attention(query_input, key_input, value_input, layer_input,
                                                         attention_bias)
        for ffn in self.ffn:                                                         # (B, T, I) throughout
            attention_output = ffn(attention_output)
        intermediate = self.intermediate(attention_output)
        return self.output(intermediate, attention_output, hidden_states), probabilities  # (B, T, H)


class MobileBertEncoder(nn.Layer):
    def __init__(self, config: MobileBertConfig):
        super().__init__()
        self.layer = nn.LayerList([MobileBertLayer(config) for _ in range(config.num_hidden_layers)])

    def forward(self, hidden_states, attention_bias, output_hidden_states: bool = False,
                output_attentions: bool = False, num_layers: Optional[int] = None):
        """(last layer's output, [embeddings, layer 1..L outputs] or None, [L probabilities] or None);
        with `num_layers` only the first num_layers layers run (L = num_layers)."""
        all_hidden_states = [hidden_states] if output_hidden_states else None
        all_attentions = [] if output_attentions else None
        for index, layer in enumerate(self.layer):
            if num_layers is not None and index >= num_layers:
                break
            hidden_states, probabilities = layer(hidden_states, attention_bias)
            if output_hidden_states:
                all_hidden_states.append(hidden_states)
            if output_attentions:
                all_attentions.append(probabilities)
        return hidden_states, all_hidden_states, all_attentions


class MobileBertPooler(nn.Layer):
    """[CLS] vector, through dense + tanh when classifier_activation (the released checkpoint
    has classifier_activation false and no pooler weights)."""

    def __init__(self, config: MobileBertConfig):
        super().__init__()
        self.do_activate = config.classifier_activation
        if self.do_activate:
            self.dense = HeadLinear(config.hidden_size, config.hidden_size)

    def forward(self, hidden_states):
        first_token = hidden_states[:, 0]                                            # (B, H)
        return paddle.tanh(self.dense(first_token)) if self.do_activate else first_token


def attention_bias_from_mask(attention_mask, dtype):
    """(B, T) mask of 1 = attend, 0 = padding -> additive (B, 1, 1, T) bias: 0 or dtype minimum."""
    if attention_mask is None:
        return None
    mask = attention_mask.astype(dtype).unsqueeze([1, 2])
    return (1.0 - mask) * paddle.finfo(dtype).min


# ----------------------------------------------------------------------------------------
# Loading and saving (model directories are read and written by modeldir.py)
# ----------------------------------------------------------------------------------------

class MobileBertPreTrainedModel(nn.Layer):
    """Shared base: weight initialisation as HF's, from_pretrained / save_pretrained."""

    base_model_prefix = "mobilebert"
    architecture: str = ""

    def __init__(self, config: MobileBertConfig):
        super().__init__()
        self.config = config

    def init_weights(self) -> None:
        """Normal(0, initializer_range) for Linear and Embedding weights, zero biases, unit
        norms: the same scheme as HF, so a new head starts where HF's would."""
        normal = nn.initializer.Normal(mean=0.0, std=self.config.initializer_range)
        zeros, ones = nn.initializer.Constant(0.0), nn.initializer.Constant(1.0)
        for layer in self.sublayers(include_self=True):
            if isinstance(layer, nn.Linear):
                normal(layer.weight)
                if layer.bias is not None:
                    zeros(layer.bias)
            elif isinstance(layer, nn.Embedding):
                normal(layer.weight)
            elif isinstance(layer, (nn.LayerNorm, NoNorm)):
                ones(layer.weight)
                zeros(layer.bias)
            elif isinstance(layer, MobileBertLMPredictionHead):
                zeros(layer.bias)

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike, config: Optional[MobileBertConfig] = None,
                        **config_changes):
        """Load from a Paddle model dir, a HuggingFace dir or a hub id (see modeldir.load_weights_for).

        Head weights missing from the checkpoint (e.g. a QA head on the base model) are
        initialised and listed in a warning, as HF does; `config_changes` (e.g. id2label)
        update the stored config first.
        """
        stored_config, state_dict = load_weights_for(cls, source)
        config = (config or stored_config).replace(**config_changes) if config_changes else (config or stored_config)
        config.architectures = [cls.architecture]
        model = cls(config)
        model.load_converted_state_dict(state_dict, source=str(source))
        return model

    def load_converted_state_dict(self, state_dict: dict, source: str = "checkpoint") -> None:
        matched, newly_initialised = match_state_dict(self, state_dict, source)
        with warnings.catch_warnings():  # Paddle warns per key it skips; they are reported below, once
            warnings.simplefilter("ignore", UserWarning)
            self.set_state_dict(matched)
        if newly_initialised:
            logger.warning("%s: %d weights not in the checkpoint were newly initialised: %s",
                           source, len(newly_initialised), ", ".join(sorted(newly_initialised)))

    def save_pretrained(self, directory: str | os.PathLike, tokenizer=None) -> None:
        save_paddle_model_dir(self, directory, tokenizer=tokenizer)

    @staticmethod
    def with_internals(output, backbone_output, requested: bool):
        """A head's output, wrapped with the backbone's hidden states / attentions when requested."""
        if not requested:
            return output
        return OutputWithInternals(output, backbone_output.hidden_states, backbone_output.attentions)


class MobileBertEncoderOutput(NamedTuple):
    sequence_output: paddle.Tensor          # (B, T, H)
    pooled_output: Optional[paddle.Tensor]  # (B, H), None without a pooler
    hidden_states: Optional[list] = None    # with output_hidden_states: embeddings + each layer's output (B, T, H)
    attentions: Optional[list] = None       # with output_attentions: each layer's probabilities (B, nh, T, T)


class OutputWithInternals(NamedTuple):
    """What a head returns when asked for hidden states or attention maps (distillation needs both)."""

    output: object                          # the head's usual output (a tensor or a named tuple)
    hidden_states: Optional[list]           # L + 1 tensors (B, T, H), or None
    attentions: Optional[list]              # L tensors (B, nh, T, T), or None


class MobileBertModel(MobileBertPreTrainedModel):
    architecture = "MobileBertModel"

    def __init__(self, config: MobileBertConfig, add_pooling_layer: bool = True):
        super().__init__(config)
        self.embeddings = MobileBertEmbeddings(config)
        self.encoder = MobileBertEncoder(config)
        self.pooler = MobileBertPooler(config) if add_pooling_layer else None
        self.init_weights()

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, position_ids=None, *,
                output_hidden_states: bool = False, output_attentions: bool = False,
                num_layers: Optional[int] = None) -> MobileBertEncoderOutput:
        """`num_layers`: run only the first num_layers layers and no pooler (what a layer-transfer
        step of distillation reads); sequence_output is then that layer's output."""
        embeddings = self.embeddings(input_ids, token_type_ids, position_ids, attention_mask)  # (B, T, H)
        attention_bias = attention_bias_from_mask(attention_mask, embeddings.dtype)
        if attention_bias is not None and eager_cpu_float32(embeddings):
            # Every layer adds the bias to its (B, N, T, T) scores: Paddle's CPU add broadcasting
            # over heads and queries is several times slower than an add of equal shapes, so the
            # bias is expanded once here (same sums).
            batch, length = attention_mask.shape[0], attention_mask.shape[-1]
            heads = self.config.num_attention_heads
            attention_bias = attention_bias.expand([batch, heads, length, length])
        sequence_output, hidden_states, attentions = self.encoder(embeddings, attention_bias, output_hidden_states,
                                                                  output_attentions, num_layers)
        pooled_output = self.pooler(sequence_output) if self.pooler is not None and num_layers is None else None
        return MobileBertEncoderOutput(sequence_output, pooled_output, hidden_states, attentions)


# ----------------------------------------------------------------------------------------
# Heads
# ----------------------------------------------------------------------------------------

class MobileBertPredictionHeadTransform(nn.Layer):
    def __init__(self, config: MobileBertConfig):
        super().__init__()
        self.dense = Linear(config.hidden_size, config.hidden_size)
        self.activation = activation(config.hidden_act)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, epsilon=config.layer_norm_eps)  # always a real LayerNorm

    def forward(self, hidden_states):
        return self.LayerNorm(self.activation(self.dense(hidden_states)))


class MobileBertLMPredictionHead(nn.Layer):
    """MLM output layer. The vocabulary projection is H wide but the word embeddings only
    128: the first 128 rows are the (tied) word embeddings, the other H - 128 rows are
    `dense`'s own weight. `dense` keeps HF's odd shape, Linear(vocab -> H - 128), and is
    only ever used through its weight."""

    def __init__(self, config: MobileBertConfig):
        super().__init__()
        self.transform = MobileBertPredictionHeadTransform(config)
        self.dense = Linear(config.vocab_size, config.hidden_size - config.embedding_size, bias_attr=False)
        self.bias = self.create_parameter([config.vocab_size], is_bias=True,
                                          default_initializer=nn.initializer.Constant(0.0))

    def forward(self, hidden_states, word_embeddings):
        hidden_states = self.transform(hidden_states)                                 # (B, T, H)
        if fused_training(self, hidden_states):
            return VocabularyLogitsFunction.apply(hidden_states, word_embeddings, self.dense.weight, self.bias)
        if eager_cpu_float32(hidden_states):
            # The bias as one more column of the product (a column of ones on the input): Paddle's
            # CPU add of a (V,) bias to (B, T, V) logits, and its gradient, take the slow broadcast
            # path (at V = 30,522 the (640, 64) x (64, V) head's forward took 136 ms, 75 ms so).
            ones = paddle.ones([*hidden_states.shape[:-1], 1], dtype=hidden_states.dtype)
            output_weight = paddle.concat([word_embeddings, self.dense.weight, self.bias.unsqueeze(-1)], axis=1)
            return paddle.matmul(paddle.concat([hidden_states, ones], axis=-1), output_weight, transpose_y=True)
        output_weight = paddle.concat([word_embeddings, self.dense.weight], axis=1)   # (V, 128 + H - 128)
        return paddle.matmul(hidden_states, output_weight, transpose_y=True) + self.bias  # (B, T, V)


class MobileBertOnlyMLMHead(nn.Layer):
    def __init__(self, config: MobileBertConfig):
        super().__init__()
        self.predictions = MobileBertLMPredictionHead(config)


class MobileBertPreTrainingHeads(nn.Layer):
    def __init__(self, config: MobileBertConfig):
        super().__init__()
        self.predictions = MobileBertLMPredictionHead(config)
        self.seq_relationship = HeadLinear(config.hidden_size, 2)


class MobileBertOnlyNSPHead(nn.Layer):
    def __init__(self, config: MobileBertConfig):
        super().__init__()
        self.seq_relationship = HeadLinear(config.hidden_size, 2)


class PreTrainingOutput(NamedTuple):
    prediction_logits: paddle.Tensor       # (B, T, V)
    seq_relationship_logits: paddle.Tensor  # (B, 2)


class QuestionAnsweringOutput(NamedTuple):
    start_logits: paddle.Tensor  # (B, T)
    end_logits: paddle.Tensor    # (B, T)


class MobileBertForMaskedLM(MobileBertPreTrainedModel):
    architecture = "MobileBertForMaskedLM"

    def __init__(self, config: MobileBertConfig):
        super().__init__(config)
        self.mobilebert = MobileBertModel(config, add_pooling_layer=False)
        self.cls = MobileBertOnlyMLMHead(config)
        self.init_weights()

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, position_ids=None, *,
                output_hidden_states: bool = False, output_attentions: bool = False):
        backbone = self.mobilebert(input_ids, token_type_ids, attention_mask, position_ids, output_hidden_states=output_hidden_states, output_attentions=output_attentions)
        logits = self.cls.predictions(backbone.sequence_output, self.mobilebert.embeddings.word_embeddings.weight)
        return self.with_internals(logits, backbone, output_hidden_states or output_attentions)                          # (B, T, V)


class MobileBertForPreTraining(MobileBertPreTrainedModel):
    architecture = "MobileBertForPreTraining"

    def __init__(self, config: MobileBertConfig):
        super().__init__(config)
        self.mobilebert = MobileBertModel(config)
        self.cls = MobileBertPreTrainingHeads(config)
        self.init_weights()

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, position_ids=None, masked_positions=None,
                *, output_hidden_states: bool = False, output_attentions: bool = False):
        """masked_positions (B, P) int64: the MLM head runs on those P positions only and
        prediction_logits are (B, P, V) (pretraining predicts ~15% of the tokens); else (B, T, V)."""
        backbone = self.mobilebert(input_ids, token_type_ids, attention_mask, position_ids, output_hidden_states=output_hidden_states, output_attentions=output_attentions)
        sequence_output = backbone.sequence_output                                   # (B, T, H)
        if masked_positions is not None:
            sequence_output = paddle.take_along_axis(sequence_output, masked_positions.unsqueeze(-1), axis=1)  # (B, P, H)
        word_embeddings = self.mobilebert.embeddings.word_embeddings.weight
        output = PreTrainingOutput(self.cls.predictions(sequence_output, word_embeddings),
                                   self.cls.seq_relationship(backbone.pooled_output))
        return self.with_internals(output, backbone, output_hidden_states or output_attentions)


class MobileBertForNextSentencePrediction(MobileBertPreTrainedModel):
    architecture = "MobileBertForNextSentencePrediction"

    def __init__(self, config: MobileBertConfig):
        super().__init__(config)
        self.mobilebert = MobileBertModel(config)
        self.cls = MobileBertOnlyNSPHead(config)
        self.init_weights()

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, position_ids=None, *,
                output_hidden_states: bool = False, output_attentions: bool = False):
        backbone = self.mobilebert(input_ids, token_type_ids, attention_mask, position_ids, output_hidden_states=output_hidden_states, output_attentions=output_attentions)
        return self.with_internals(self.cls.seq_relationship(backbone.pooled_output), backbone, output_hidden_states or output_attentions)  # (B, 2)


class MobileBertForSequenceClassification(MobileBertPreTrainedModel):
    """Classification over the pooled [CLS] vector; regression when num_labels == 1."""

    architecture = "MobileBertForSequenceClassification"

    def __init__(self, config: MobileBertConfig):
        super().__init__(config)
        self.mobilebert = MobileBertModel(config)
        self.dropout = Dropout(config.classifier_dropout_prob)
        self.classifier = HeadLinear(config.hidden_size, config.num_labels)
        self.init_weights()

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, position_ids=None, *,
                output_hidden_states: bool = False, output_attentions: bool = False):
        backbone = self.mobilebert(input_ids, token_type_ids, attention_mask, position_ids, output_hidden_states=output_hidden_states, output_attentions=output_attentions)
        logits = self.classifier(self.dropout(backbone.pooled_output))              # (B, num_labels)
        return self.with_internals(logits, backbone, output_hidden_states or output_attentions)


class MobileBertForQuestionAnswering(MobileBertPreTrainedModel):
    architecture = "MobileBertForQuestionAnswering"

    def __init__(self, config: MobileBertConfig):
        super().__init__(config)
        self.mobilebert = MobileBertModel(config, add_pooling_layer=False)
        self.qa_outputs = HeadLinear(config.hidden_size, config.num_labels)
        self.init_weights()

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, position_ids=None, *,
                output_hidden_states: bool = False, output_attentions: bool = False):
        backbone = self.mobilebert(input_ids, token_type_ids, attention_mask, position_ids, output_hidden_states=output_hidden_states, output_attentions=output_attentions)
        logits = self.qa_outputs(backbone.sequence_output)                           # (B, T, 2)
        return self.with_internals(QuestionAnsweringOutput(logits[:, :, 0], logits[:, :, 1]), backbone, output_hidden_states or output_attentions)


class MobileBertForTokenClassification(MobileBertPreTrainedModel):
    architecture = "MobileBertForTokenClassification"

    def __init__(self, config: MobileBertConfig):
        super().__init__(config)
        self.mobilebert = MobileBertModel(config, add_pooling_layer=False)
        self.dropout = Dropout(config.classifier_dropout_prob)
        self.classifier = HeadLinear(config.hidden_size, config.num_labels)
        self.init_weights()

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, position_ids=None, *,
                output_hidden_states: bool = False, output_attentions: bool = False):
        backbone = self.mobilebert(input_ids, token_type_ids, attention_mask, position_ids, output_hidden_states=output_hidden_states, output_attentions=output_attentions)
        logits = self.classifier(self.dropout(backbone.sequence_output))            # (B, T, num_labels)
        return self.with_internals(logits, backbone, output_hidden_states or output_attentions)


class MobileBertForMultipleChoice(MobileBertPreTrainedModel):
    """Inputs are (B, C, T): C candidate continuations per example, each scored from its [CLS]."""

    architecture = "MobileBertForMultipleChoice"

    def __init__(self, config: MobileBertConfig):
        super().__init__(config)
        self.mobilebert = MobileBertModel(config)
        self.dropout = Dropout(config.classifier_dropout_prob)
        self.classifier = HeadLinear(config.hidden_size, 1)
        self.init_weights()

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, position_ids=None, *,
                output_hidden_states: bool = False, output_attentions: bool = False):
        """Hidden states and attentions, when requested, are over the flattened (B * C) rows."""
        num_choices = input_ids.shape[1]

        def flatten(tensor):  # (B, C, T) -> (B * C, T)
            return None if tensor is None else tensor.reshape([-1, tensor.shape[-1]])

        backbone = self.mobilebert(flatten(input_ids), flatten(token_type_ids), flatten(attention_mask),
                                   flatten(position_ids), output_hidden_states=output_hidden_states, output_attentions=output_attentions)
        logits = self.classifier(self.dropout(backbone.pooled_output)).reshape([-1, num_choices])  # (B, C)
        return self.with_internals(logits, backbone, output_hidden_states or output_attentions)


HEADS = {cls.architecture: cls for cls in (
    MobileBertModel, MobileBertForMaskedLM, MobileBertForPreTraining, MobileBertForNextSentencePrediction,
    MobileBertForSequenceClassification, MobileBertForQuestionAnswering, MobileBertForTokenClassification,
    MobileBertForMultipleChoice)}
