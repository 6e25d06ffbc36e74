"""Masked-LM masking, drawn when a batch is drawn: BERT's create_masked_lm_predictions (15% of the
tokens, whole words, 80% [MASK] / 10% random / 10% kept, never a special token), vectorised, from
a counter-based generator keyed by (seed, step, row id, position): a row's mask does not depend
on the batch split, the process count or what came before, so resume is exact.
"""


from __future__ import annotations

from typing import Sequence

import numpy as np

# --------------------------------------------------------------------------------------------
# Masking, drawn per batch from (seed, step, row): BERT's create_masked_lm_predictions, vectorised
# --------------------------------------------------------------------------------------------

def default_max_predictions(max_seq_length: int, masked_lm_prob: float = 0.15) -> int:
    """The most positions BERT's count rule can ask for in a full row (19 for 128 tokens; BERT used 20)."""
    return max(1, int(np.rint(max_seq_length * masked_lm_prob)))


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(values: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser (a bijection of uint64 with full avalanche), after a Weyl step."""
    z = values + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def position_random(seed: int, step: int, row_ids: np.ndarray, positions: np.ndarray, stream: int) -> np.ndarray:
    """uint64 random bits for each (row id, position) pair (broadcast together) that depend only on
    (seed, step, row id, position, stream): a counter-based generator, so a row's mask is the same
    whatever batch or process holds it."""
    with np.errstate(over="ignore"):
        key = _mix(np.array([seed], dtype=np.uint64))
        key = _mix(key ^ np.uint64(step))
        key = _mix(key ^ np.asarray(row_ids, dtype=np.int64).astype(np.uint64))
        return _mix(key ^ (np.asarray(positions, dtype=np.uint64) * np.uint64(4) + np.uint64(stream)))


def _uniform(bits: np.ndarray) -> np.ndarray:
    return (bits >> np.uint64(11)).astype(np.float64) * 2.0 ** -53       # [0, 1), 53 random bits


def mask_tokens(input_ids: np.ndarray, attention_mask: np.ndarray, row_ids: np.ndarray, seed: int, step: int, *,
                vocab_size: int, mask_token_id: int, special_ids: Sequence[int], max_predictions: int,
                masked_lm_prob: float = 0.15, whole_word: bool = False,
                continuation: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Masked-LM inputs and targets for a batch, as BERT's create_masked_lm_predictions makes them.

    Per row: n = min(max_predictions, max(1, round(length * masked_lm_prob))) positions (length
    counts [CLS] and [SEP]s, as BERT) among real non-special tokens, in a random order of words
    (a word is a token and its "##" pieces with whole_word, else each token; a word that would
    pass n is skipped, as BERT); each chosen token becomes [MASK] 80%, a random id of the
    vocabulary 10%, itself 10%. Returns input_ids (b, T) int32 masked; masked_positions,
    masked_labels (b, P) int64 and masked_weights (b, P) float32, P = max_predictions, sorted
    by position, padded with position 0, label 0, weight 0 (Google's gather format).
    """
    input_ids = np.asarray(input_ids)
    batch, length = input_ids.shape
    candidate = (np.asarray(attention_mask) > 0) & ~np.isin(input_ids, np.asarray(special_ids))      # (b, T)
    counts = np.minimum(max_predictions, np.maximum(1, np.rint((np.asarray(attention_mask) > 0).sum(1)
                                                               * masked_lm_prob).astype(np.int64)))  # (b,)
    word_start = candidate.copy()
    if whole_word:
        if continuation is None:
            raise ValueError("whole_word masking needs the vocabulary's continuation array")
        follows_candidate = np.zeros_like(candidate)
        follows_candidate[:, 1:] = candidate[:, :-1]
        word_start &= ~(np.asarray(continuation)[input_ids] & follows_candidate)
    keys = _uniform(position_random(seed, step, np.asarray(row_ids)[:, None], np.arange(length)[None, :], 0))  # (b, T)
    chosen = choose_words(candidate, word_start, counts, keys)
    return apply_masks(input_ids, chosen, seed, step, row_ids, vocab_size, mask_token_id, max_predictions)


def choose_words(candidate: np.ndarray, word_start: np.ndarray, counts: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """(b, T) bool: the tokens of words taken in the order of their start's key, skipping a word
    that would bring the row past its count (BERT's rule)."""
    batch, length = candidate.shape
    positions = np.arange(length)
    # Each candidate token's word start: the last start at or before it.
    start_of = np.maximum.accumulate(np.where(word_start, positions, 0), axis=1)                 # (b, T)
    flat_start = (np.arange(batch)[:, None] * length + start_of)[candidate]
    word_length = np.bincount(flat_start, minlength=batch * length).reshape(batch, length)        # at starts
    order = np.argsort(np.where(word_start, keys, np.inf), axis=1, kind="stable")               # (b, T)
    sorted_length = np.take_along_axis(np.where(word_start, word_length, 0), order, axis=1)
    if sorted_length.max(initial=0) <= 1:       # single tokens: the first `count` in key order
        taken = (np.cumsum(sorted_length, axis=1) <= counts[:, None]) & (sorted_length > 0)
    else:
        taken = np.zeros_like(sorted_length, dtype=bool)
        total = np.zeros(batch, dtype=np.int64)
        for slot in range(int(word_start.sum(1).max(initial=0))):
            fits = (sorted_length[:, slot] > 0) & (total + sorted_length[:, slot] <= counts)
            taken[:, slot], total = fits, total + np.where(fits, sorted_length[:, slot], 0)
    chosen_start = np.zeros((batch, length), dtype=bool)
    np.put_along_axis(chosen_start, order, taken, axis=1)
    return candidate & np.take_along_axis(chosen_start, start_of, axis=1)


def apply_masks(input_ids: np.ndarray, chosen: np.ndarray, seed: int, step: int, row_ids: np.ndarray,
                vocab_size: int, mask_token_id: int, max_predictions: int) -> dict[str, np.ndarray]:
    """80% [MASK] / 10% random id / 10% unchanged at the chosen tokens, and the gather format."""
    batch = len(input_ids)
    rows, columns = np.nonzero(chosen)                    # row-major: increasing position within a row
    row_ids = np.asarray(row_ids)[rows]
    decision = _uniform(position_random(seed, step, row_ids, columns, 1))
    random_ids = (position_random(seed, step, row_ids, columns, 2) % np.uint64(vocab_size)).astype(np.int64)
    original = input_ids[rows, columns]
    masked = input_ids.astype(np.int32, copy=True)
    masked[rows, columns] = np.where(decision < 0.8, mask_token_id, np.where(decision < 0.9, original, random_ids))
    # Gather format: a row's k-th chosen position goes to slot k.
    slots = np.cumsum(chosen, axis=1)[rows, columns] - 1
    positions = np.zeros((batch, max_predictions), dtype=np.int64)                              # (b, P)
    labels = np.zeros((batch, max_predictions), dtype=np.int64)
    weights = np.zeros((batch, max_predictions), dtype=np.float32)
    positions[rows, slots], labels[rows, slots], weights[rows, slots] = columns, original, 1.0
    return {"input_ids": masked, "masked_positions": positions, "masked_labels": labels, "masked_weights": weights}
