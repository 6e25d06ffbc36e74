"""How many parameters a config makes, and whether training it fits in this machine's memory,
answered from the config alone, before any layer is built.

A config is user input: one of 4000 layers x hidden 2048 passes every per-field bound and then
dies in the model build with MemoryError (or is killed by the OOM killer after swapping). The
count here follows the layers of model/network.py (tests/test_data_dirs.py checks it against built
models); training holds each parameter four times in float32 (weights, gradients, two Adam /
LAMB moments), so a run needs about TRAINING_BYTES_PER_PARAMETER bytes a parameter before any
activation.
"""

from __future__ import annotations

import resource
from pathlib import Path

from ..core.errors import UserInputError

TRAINING_BYTES_PER_PARAMETER = 16        # float32 weight + gradient + 2 optimizer moments


def parameter_count(config, head: str = "MobileBertForPreTraining") -> int:
    """Parameters of a model with `config` (the ForPreTraining head by default)."""
    hidden, inner, ffn, vocab = config.hidden_size, config.true_hidden_size, config.intermediate_size, config.vocab_size
    embedding = config.embedding_size

    def linear(inputs: int, outputs: int) -> int:
        return inputs * outputs + outputs

    reads_block_input = config.use_bottleneck and not (config.use_bottleneck_attention
                                                       or config.key_query_shared_bottleneck)
    query_key_width = hidden if reads_block_input else inner
    value_width = inner if config.use_bottleneck_attention else hidden
    layer = (2 * linear(query_key_width, inner) + linear(value_width, inner)        # query, key, value
             + linear(inner, inner) + 2 * inner                                     # attention output + norm
             + config.num_feedforward_networks * (linear(inner, ffn) + linear(ffn, inner) + 2 * inner))
    if config.use_bottleneck:
        bottlenecks = 2 if config.key_query_shared_bottleneck else 1
        layer += bottlenecks * (linear(hidden, inner) + 2 * inner) + linear(inner, hidden) + 2 * hidden
    embeddings = (vocab * embedding + linear(embedding * (3 if config.trigram_input else 1), hidden)
                  + (config.max_position_embeddings + config.type_vocab_size) * hidden + 2 * hidden)
    pooler = linear(hidden, hidden) if config.classifier_activation else 0
    total = embeddings + config.num_hidden_layers * layer + pooler
    if head == "MobileBertForPreTraining":
        total += linear(hidden, hidden) + 2 * hidden + vocab * (hidden - embedding) + vocab + linear(hidden, 2)
    return total


def available_memory_bytes() -> int:
    """What this process may still allocate: the smaller of the kernel's MemAvailable and what is
    left under the address-space limit (`ulimit -v`), when there is one."""
    available = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        try:
            used = int(next(line for line in Path("/proc/self/status").read_text().splitlines()
                            if line.startswith("VmSize:")).split()[1]) * 1024
        except (OSError, ValueError, StopIteration):
            used = 0
        available = soft - used if available is None else min(available, soft - used)
    return max(0, available) if available is not None else 1 << 62


def check_fits_in_memory(config, source: str, bytes_per_parameter: int = TRAINING_BYTES_PER_PARAMETER,
                         models: str = "to train") -> int:
    """Refuse, before any layer is built, a config whose parameters alone need more memory than is
    available. Returns the parameter count."""
    count = parameter_count(config)
    needed, available = count * bytes_per_parameter, available_memory_bytes()
    if needed > available:
        raise UserInputError(f"{source}: {count / 1e6:,.0f}M parameters need {needed / 2**30:,.1f} GiB {models} "
                             f"({bytes_per_parameter} bytes a parameter), more than the {available / 2**30:,.1f} "
                             f"GiB of memory available; use a smaller config")
    return count
