"""Relative error, the measure of every parity and export check here (ARCHITECTURE.md, Parity):
MobileBERT's activations reach ~1e7, so an absolute bar would say nothing.
"""


from __future__ import annotations

import numpy as np

# ----------------------------------------------------------------------------------------
# Measuring: relative error and which outputs pair up (shared with tests/reference.py)
# ----------------------------------------------------------------------------------------

def relative_error(paddle_value, torch_value, mask=None) -> float:
    """max|paddle - torch| / max|torch| in float64, over `mask`-selected rows if given."""
    paddle_value = np.asarray(paddle_value, dtype=np.float64)
    torch_value = np.asarray(torch_value, dtype=np.float64)
    if mask is not None:
        paddle_value, torch_value = paddle_value[mask], torch_value[mask]
    scale = np.abs(torch_value).max()
    return float(np.abs(paddle_value - torch_value).max() / (scale if scale > 0 else 1.0))
