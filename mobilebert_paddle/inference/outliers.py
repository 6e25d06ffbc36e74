"""Outlier channels of the residual stream, and moving them into the weights before int8.

Google's MobileBERT carries a few channels of its 512-wide residual stream at ~1e7 while the
rest are of order 1-100. An int8 matmul quantizes its input with one range per tensor (ONNX
Runtime's dynamic quantization, NNCF's static quantization), so one such channel sets a step of
~1e5 and every other channel rounds to zero: the readers of the stream (each layer's bottleneck
input, shared query/key bottleneck and value) then see only the outliers, and the model answers
nothing (benchmarks/outliers.py builds such a model; the README has the measurements).

With NoNorm every normalisation is element-wise, so channel c of the stream can be multiplied by
any f > 0 without changing the function (`rescale_stream`): the writers of the stream (what the
embedding NoNorm sums, its beta, each layer's output-bottleneck Linear and NoNorm beta) are
multiplied by f in channel c, the readers (every Linear reading the stream, and the head's) are
divided by f in row c. `equalize_stream` measures the stream on a batch and divides each outlier
channel by the power of two that brings it down to the largest ordinary channel: SmoothQuant's
migration with all of the outlier's range moved into the weights (quantized per output
channel), folded into the weights instead of a Multiply at run time, so it costs nothing.

What the int8 matmuls read differs with `--fuse`: fuse.py carries the stream as z with
`actual = scale * z + shift` (scale the product of the NoNorm gammas), so each is measured the
way it will be quantized. Where the divisor goes in the embeddings matters to NNCF, which floors
every output channel's weight range at 1% of the matrix's largest: an embedding-transformation
column left 1e5x larger than the others (or made 1e5x smaller) takes the others' (or its own)
precision with it. Measured on the testbed, either mistake cost the unfused static path 1.5
to 90 EM. So:
  * fused: z is what the embedding NoNorm sums, so the divisor goes there (its columns, the
    position and token-type tables' columns), whatever the gamma;
  * unfused: as much of the divisor as the channel stands out in that sum goes there, the rest
    into the NoNorm's gamma (a float multiply, never quantized).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PLACEMENTS = ("inputs", "norm")
# A channel is an outlier when its largest value exceeds this multiple of the median channel's
# (in some layer): each doubling of a per-tensor range costs every other channel one of int8's
# bits. Trained models here stay below 4 (quickstart seeds 42 and 6: at most 3.5).
OUTLIER_RATIO = 16.0


def can_rescale(config) -> bool:
    """NoNorm (element-wise) and bottlenecks (the stream is read only by Linears)."""
    return config.normalization_type == "no_norm" and config.use_bottleneck


def rescale_stream(model, channels: Sequence[int], factors: float | Sequence[float],
                   placement: str = "inputs") -> list:
    """Multiply channels `channels` of the residual stream (the embedding output and every
    layer's output) by `factors` (one, or one per channel), in place, keeping every output of
    the head unchanged up to float rounding (exactly, for powers of two). Returns the names of
    the parameters changed.

    placement "inputs": the factor goes into what the embedding NoNorm sums (the embedding
    transformation's column and bias, the position and token-type tables' column); "norm": into
    the embedding NoNorm's gamma (which fuse.py divides out of its stream again)."""
    import paddle

    from ..model.network import MobileBertModel, attention_input_widths

    config = model.config
    if not can_rescale(config):
        raise ValueError("the stream rescale needs normalization_type no_norm and use_bottleneck (a LayerNorm "
                         "is not element-wise, and without bottlenecks the stream is read inside the block)")
    if isinstance(model, MobileBertModel):
        raise TypeError("a bare MobileBertModel outputs the stream itself; rescale a model with a head")
    if placement not in PLACEMENTS:
        raise ValueError(f"placement {placement!r}: expected one of {', '.join(PLACEMENTS)}")
    channels = np.asarray(list(channels), dtype=np.int64)
    if channels.size == 0 or len(set(channels.tolist())) != channels.size or channels.min() < 0 \
            or channels.max() >= config.hidden_size:
        raise ValueError(f"channels {channels.tolist()}: expected distinct indices below hidden_size "
                         f"{config.hidden_size}")
    factor = np.ones(config.hidden_size)
    factor[channels] = factors
    if not np.all(np.isfinite(factor) & (factor > 0)):
        raise ValueError(f"factors {factors}: expected positive finite numbers")
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    changed = []

    def rescale(parameter, axis: int, values: np.ndarray) -> None:
        array = parameter.numpy().astype(np.float64)
        shape = [1] * array.ndim
        shape[axis] = -1
        parameter.set_value((array * values.reshape(shape)).astype(np.float32))
        changed.append(names[id(parameter)])

    def write(linear) -> None:                       # output channel c x f (Paddle weights are [in, out])
        rescale(linear.weight, 1, factor)
        if linear.bias is not None:
            rescale(linear.bias, 0, factor)

    def read(linear) -> None:                        # input channel c / f
        rescale(linear.weight, 0, 1.0 / factor)

    embeddings = model.mobilebert.embeddings
    with paddle.no_grad():
        if placement == "norm":
            rescale(embeddings.LayerNorm.weight, 0, factor)
        else:
            if embeddings.trigram_input or config.embedding_size != config.hidden_size:
                write(embeddings.embedding_transformation)
            else:
                rescale(embeddings.word_embeddings.weight, 1, factor)
            rescale(embeddings.position_embeddings.weight, 1, factor)
            rescale(embeddings.token_type_embeddings.weight, 1, factor)
        rescale(embeddings.LayerNorm.bias, 0, factor)
        query_key_width, _ = attention_input_widths(config)
        for layer in model.mobilebert.encoder.layer:
            read(layer.bottleneck.input.dense)
            if config.key_query_shared_bottleneck and not config.use_bottleneck_attention:
                read(layer.bottleneck.attention.dense)
            if not config.use_bottleneck_attention:
                attention = layer.attention.self
                read(attention.value)                 # value reads the layer input (H wide)
                if query_key_width == config.hidden_size:
                    read(attention.query)             # IB-BERT's layout: query and key too
                    read(attention.key)
            bottleneck = layer.output.bottleneck
            write(bottleneck.dense)
            rescale(bottleneck.LayerNorm.bias, 0, factor)
        for reader in head_readers(model):
            read(reader)
    return changed


def head_readers(model) -> list:
    """The head's Linears that read the stream: the sequence output, and [CLS] directly when the
    pooler passes it on raw (classifier_activation false) or through its dense."""
    architecture = type(model).architecture
    pooler = model.mobilebert.pooler
    if architecture == "MobileBertForQuestionAnswering":
        return [model.qa_outputs]
    if architecture == "MobileBertForTokenClassification":
        return [model.classifier]
    if architecture == "MobileBertForMaskedLM":
        return [model.cls.predictions.transform.dense]
    pooled_readers = {"MobileBertForSequenceClassification": lambda: [model.classifier],
                      "MobileBertForMultipleChoice": lambda: [model.classifier],
                      "MobileBertForNextSentencePrediction": lambda: [model.cls.seq_relationship],
                      "MobileBertForPreTraining": lambda: [model.cls.seq_relationship]}
    if architecture not in pooled_readers:
        raise ValueError(f"{architecture}: no stream rescale for this head")
    readers = [model.cls.predictions.transform.dense] if architecture == "MobileBertForPreTraining" else []
    return readers + ([pooler.dense] if pooler.do_activate else pooled_readers[architecture]())


def stream_magnitudes(model, batch: dict, fused: bool = False, embedding_sum: bool = False, rows: int = 64,
                      chunk: int = 8):
    """(L + 1, H): per stream tensor (embedding output, each layer's output) and channel, the
    largest |value| over the real tokens of the first `rows` rows of `batch` (run `chunk` rows at
    a time: every layer's output is kept); with `fused`, of fuse.py's z instead. With
    `embedding_sum` also (H,): the same for what the embedding NoNorm sums (its input)."""
    import paddle

    model.eval()
    flat = {name: np.asarray(value).reshape(-1, np.asarray(value).shape[-1])[:rows] for name, value in batch.items()}
    affines = None
    if fused:
        from .fuse import FusedMobileBertModel

        backbone = FusedMobileBertModel(model.mobilebert)
        affines = [backbone.embeddings.output_affine] + [layer.output_affine for layer in backbone.layer]
    magnitudes, summed_magnitudes = None, None
    for start in range(0, len(flat["input_ids"]), chunk):
        part = {name: value[start:start + chunk] for name, value in flat.items()}
        summed = []
        hook = model.mobilebert.embeddings.LayerNorm.register_forward_pre_hook(
            lambda layer, inputs, into=summed: into.append(inputs[0].numpy()))
        try:
            with paddle.no_grad():
                output = model.mobilebert(**{name: paddle.to_tensor(value) for name, value in part.items()},
                                          output_hidden_states=True)
        finally:
            hook.remove()
        mask = part["attention_mask"].astype(bool)
        states = [state.numpy()[mask].astype(np.float64) for state in output.hidden_states]
        if affines is not None:
            states = [(state - affine.shift) / affine.scale for state, affine in zip(states, affines)]
        current = np.stack([np.abs(state).max(axis=0) for state in states])
        current_sum = np.abs(summed[0][mask].astype(np.float64)).max(axis=0)
        magnitudes = current if magnitudes is None else np.maximum(magnitudes, current)
        summed_magnitudes = current_sum if summed_magnitudes is None else np.maximum(summed_magnitudes, current_sum)
    return (magnitudes, summed_magnitudes) if embedding_sum else magnitudes


def outlier_factors(magnitudes: np.ndarray, ratio: float = OUTLIER_RATIO) -> dict:
    """{channel: power of two} for the channels above `ratio` x the median channel in some row of
    `magnitudes` (L + 1, H); each factor brings its channel down to at most the largest ordinary
    channel of every row."""
    median = np.median(magnitudes, axis=1, keepdims=True)
    relative = magnitudes / np.maximum(median, 1e-30)
    outliers = np.flatnonzero((relative > ratio).any(axis=0))
    if outliers.size == 0:
        return {}
    ordinary = np.delete(magnitudes, outliers, axis=1).max(axis=1, keepdims=True)
    over = (magnitudes[:, outliers] / np.maximum(ordinary, 1e-30)).max(axis=0)
    return {int(channel): float(2.0 ** np.ceil(np.log2(value))) for channel, value in zip(outliers, over)}


def equalize_stream(model, batch: dict, fused: bool = False, ratio: float = OUTLIER_RATIO) -> dict:
    """Divide each outlier channel of the stream (as the int8 matmuls will read it: actual, or
    fuse.py's z with `fused`) by a power of two, in place; returns {channel: divisor}, empty when
    there is nothing to move. The outputs are unchanged (to float rounding)."""
    magnitudes, summed = stream_magnitudes(model, batch, fused, embedding_sum=True)
    factors = outlier_factors(magnitudes, ratio)
    if not factors:
        return factors
    channels = list(factors)
    if fused:                         # z is what the embedding NoNorm sums, whatever its gamma
        rescale_stream(model, channels, [1.0 / value for value in factors.values()], "inputs")
        return factors
    # Unfused: as much of each divisor as the channel stands out in the embedding sum goes there
    # (the embedding transformation's column comes back to the others' size), the rest into gamma.
    ordinary = max(float(np.delete(summed, channels).max()), 1e-30)
    into_sum = {channel: float(min(divisor, 2.0 ** max(0.0, np.ceil(np.log2(summed[channel] / ordinary)))))
                for channel, divisor in factors.items()}
    rescale_stream(model, channels, [1.0 / into_sum[channel] for channel in channels], "inputs")
    rescale_stream(model, channels, [into_sum[channel] / factors[channel] for channel in channels], "norm")
    return factors


def random_batch(config, rows: int = 8, length: int = 64, seed: int = 0) -> dict:
    """Random ids (padded rows, two segments) to measure the stream on when no data is given:
    the outlier channels of a trained model are large whatever the text."""
    rng = np.random.default_rng(seed)
    length = min(length, config.max_position_embeddings)
    lengths = rng.integers(max(2, length // 2), length + 1, size=rows)
    lengths[0] = length
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int64)
    ids = rng.integers(min(5, config.vocab_size - 1), config.vocab_size, size=(rows, length)) * mask
    types = ((np.arange(length)[None, :] >= lengths[:, None] // 2) * mask).astype(np.int64)
    return {"input_ids": ids.astype(np.int64), "token_type_ids": types, "attention_mask": mask}


def prepare_for_int8(model, fuse: bool, batch: dict, where: str, ratio: float = OUTLIER_RATIO) -> tuple:
    """(model to quantize, [[channel, divisor], ...]): a copy of `model` with the stream's outlier
    channels moved into the weights, or `model` itself when it has none. A layout that cannot be
    rescaled (LayerNorm, no bottleneck) with outliers is refused: int8 would lose every other channel."""
    import copy

    from ..core.errors import UserInputError

    if not can_rescale(model.config):
        magnitudes = stream_magnitudes(model, batch, fused=False)
        factors = outlier_factors(magnitudes, ratio)
        if factors:
            worst = magnitudes.max(axis=0)
            shown = ", ".join(f"{channel} ({worst[channel]:.3g})" for channel in list(factors)[:4])
            raise UserInputError(f"{where}: channels {shown} of the residual stream exceed {ratio:g}x the median "
                                 "channel; one int8 range per tensor would round the others to zero, and a "
                                 "LayerNorm or bottleneck-free model cannot move them into the weights: "
                                 "export without --quantize")
        return model, []
    prepared = copy.deepcopy(model)
    factors = equalize_stream(prepared, batch, fuse, ratio)
    if not factors:
        return model, []
    return prepared, [[channel, divisor] for channel, divisor in factors.items()]
