"""`mobilebert compare HF_SRC PADDLE_DIR`: the Paddle model against HF's PyTorch MobileBERT.

Both models read the same padded batch of real text (attention mask and token types set).
MobileBERT's activations reach ~1e7, so an absolute difference says little; per output
the report gives the relative error (DESIGN.md, Parity)

    rel = max|paddle - torch| / max|torch|

over the real (unpadded) tokens, and separately at [CLS] (position 0), for per-token
outputs; over the whole tensor for per-sequence outputs. With --layers the same is done
for the embedding output and every layer's hidden states. Exit code 1 when any error is
above the tolerance (or not finite).

`relative_error`, `paired_outputs` and `output_errors` are also what the parity tests use
(tests/reference.py delegates here), so the command and the tests measure the same thing.
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
