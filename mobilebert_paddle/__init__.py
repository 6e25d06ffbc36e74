"""MobileBERT (Sun et al., 2020, arXiv 2004.02984) in PaddlePaddle.

Names are imported lazily: Paddle reads OMP_NUM_THREADS once, when it is first imported,
and the CLI must set it before that happens (importing the package must not import Paddle).
"""

import importlib

_EXPORTS = {
    "MobileBertConfig": "model.config",
    "MobileBertTokenizer": "model.tokenizer",
    "MobileBertModel": "model.network",
    "MobileBertForMaskedLM": "model.network",
    "MobileBertForPreTraining": "model.network",
    "MobileBertForNextSentencePrediction": "model.network",
    "MobileBertForSequenceClassification": "model.network",
    "MobileBertForQuestionAnswering": "model.network",
    "MobileBertForTokenClassification": "model.network",
    "MobileBertForMultipleChoice": "model.network",
}

__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
