"""MobileBERT (Sun et al., 2020, arXiv 2004.02984) in PaddlePaddle.

Names are imported lazily: Paddle reads OMP_NUM_THREADS once, when it is first imported,
and the CLI must set it before that happens (importing the package must not import Paddle).
"""

import importlib

_EXPORTS = {
    "MobileBertConfig": "config",
    "MobileBertTokenizer": "tokenizer",
    "MobileBertModel": "model",
    "MobileBertForMaskedLM": "model",
    "MobileBertForPreTraining": "model",
    "MobileBertForNextSentencePrediction": "model",
    "MobileBertForSequenceClassification": "model",
    "MobileBertForQuestionAnswering": "model",
    "MobileBertForTokenClassification": "model",
    "MobileBertForMultipleChoice": "model",
}

__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
