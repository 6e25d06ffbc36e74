"""The optimiser and the learning-rate schedule of every training command: AdamW or LAMB with weight
decay off biases and norm weights, warmup then cosine or linear decay to min_lr at decay_ratio,
per-parameter learning-rate multipliers (distillation's layer schedule), and gradient clipping.
"""


from __future__ import annotations

import math

import paddle

from ..model.network import NoNorm


class WarmupDecaySchedule(paddle.optimizer.lr.LRScheduler):
    """Linear warmup from 0 to the peak over `warmup_steps`, then a cosine (or linear) decay to
    `min_lr` reached at `decay_steps`, then `min_lr` to the end (the recipe's schedule)."""

    def __init__(self, peak_lr: float, min_lr: float, warmup_steps: int, decay_steps: int, shape: str = "cosine"):
        self.peak_lr, self.min_lr, self.shape = peak_lr, min_lr, shape
        self.warmup_steps, self.decay_steps = warmup_steps, max(decay_steps, warmup_steps)
        super().__init__(learning_rate=peak_lr)

    def get_lr(self) -> float:
        step = self.last_epoch
        if step < self.warmup_steps:
            return self.peak_lr * step / self.warmup_steps
        if step >= self.decay_steps:
            return self.min_lr
        progress = (step - self.warmup_steps) / (self.decay_steps - self.warmup_steps)
        factor = 0.5 * (1.0 + math.cos(math.pi * progress)) if self.shape == "cosine" else 1.0 - progress
        return self.min_lr + (self.peak_lr - self.min_lr) * factor


def no_decay_parameter_names(model) -> set[str]:
    """Paddle names of biases and of LayerNorm / NoNorm weights: AdamW does not decay them."""

    names = {param.name for layer in model.sublayers(include_self=True)
             if isinstance(layer, (paddle.nn.LayerNorm, NoNorm)) for param in layer.parameters()}
    names.update(param.name for key, param in model.named_parameters() if key.endswith("bias"))
    return names


class Lamb(paddle.optimizer.Lamb):
    """Paddle's LAMB, with the same state (moments and beta powers under the same names, so
    checkpoints load either way), its per-tensor update computed from faster kernels on CPU.

    Paddle's CPU `lamb_` kernel took 358 ms a step over the 36.6M values of the full-size
    pretraining model (its AdamW: 50; PyTorch's LAMB from foreach ops: 214). Here Paddle's AdamW
    kernel runs at learning rate 1 on a copy of the weight, which turns the copy into
    w - (m_hat / (sqrt(v_hat) + eps) + decay * w): the difference is LAMB's direction, scaled by
    the trust ratio ||w|| / ||direction|| (1 where either norm is 0, and for tensors without
    weight decay unless always_adapt, as Paddle's kernel) times the learning rate: 130 ms.
    Equal to Paddle's LAMB within float rounding (tests/test_train.py). The copy's buffer is
    kept per distinct shape: 16.3M values at full size, 44% of the model's (the two vocabulary
    matrices and one of each layer's shapes). Tensors under SMALL values, off the CPU,
    and with master weights take Paddle's kernel."""

    SMALL = 16384        # fewer values: Paddle's one kernel call beats the ~10 calls here (~70 us of dispatch)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._unit_lr, self._buffers = paddle.ones([1], dtype=paddle.float32), {}

    def _append_optimize_op(self, block, param_and_grad):
        if isinstance(param_and_grad, dict) or not self._cpu_path(*param_and_grad):
            return super()._append_optimize_op(block, param_and_grad)
        param, grad = param_and_grad
        moment1 = self._get_accumulator_master(self._moment1_acc_str, param)
        moment2 = self._get_accumulator_master(self._moment2_acc_str, param)
        beta1_pow = self._get_accumulator_master(self._beta1_pow_acc_str, param)
        beta2_pow = self._get_accumulator_master(self._beta2_pow_acc_str, param)
        excluded = self._exclude_from_weight_decay_fn is not None and self._exclude_from_weight_decay_fn(param)
        weight_decay = 0.0 if excluded else self._lamb_weight_decay
        lr = self._create_param_lr(param_and_grad)
        step = self._buffers.get(tuple(param.shape))
        if step is None:
            step = self._buffers[tuple(param.shape)] = paddle.empty_like(param)
        paddle.assign(param, output=step)
        paddle._C_ops.adamw_(step, grad, self._unit_lr, moment1, moment2, None, beta1_pow, beta2_pow, None, None,
                             self._beta1, self._beta2, self._epsilon, 1.0, weight_decay, weight_decay > 0, False,
                             1000, False, False, False)
        step.subtract_(param)                                    # -(LAMB's direction)
        if weight_decay > 0 or self.always_adapt:
            weight_norm, step_norm = squared_norm(param), squared_norm(step)
            ratio = paddle.where((weight_norm > 0) & (step_norm > 0), paddle.sqrt(weight_norm / step_norm),
                                 paddle.ones_like(weight_norm))
            step.scale_(ratio * lr)
        else:
            step.scale_(lr)
        param.add_(step)
        return None

    def _cpu_path(self, param, grad) -> bool:
        return (math.prod(param.shape) >= self.SMALL and paddle.in_dynamic_mode() and param.place.is_cpu_place()
                and param.dtype == paddle.float32
                and not self._multi_precision and isinstance(self._beta1, float) and isinstance(self._beta2, float)
                and not (hasattr(grad, "is_selected_rows") and grad.is_selected_rows()))


def build_optimizer(model, scheduler, config) -> paddle.optimizer.Optimizer:
    """AdamW or LAMB over every parameter; neither decays biases or norm weights (LAMB also
    skips its trust ratio for them, as Google's LAMB does). A parameter's learning rate is the
    schedule's times its multiplier (set_learning_rate_multipliers)."""
    no_decay = no_decay_parameter_names(model)
    if getattr(config, "optimizer", "adamw") == "lamb":
        return Lamb(learning_rate=scheduler, lamb_weight_decay=config.weight_decay,
                                     beta1=config.adam_beta1, beta2=config.adam_beta2, epsilon=config.adam_epsilon,
                                     parameters=model.parameters(),
                                     exclude_from_weight_decay_fn=lambda param: param.name in no_decay)
    return paddle.optimizer.AdamW(learning_rate=scheduler, beta1=config.adam_beta1, beta2=config.adam_beta2,
                                  epsilon=config.adam_epsilon, parameters=model.parameters(),
                                  weight_decay=config.weight_decay,
                                  apply_decay_param_fun=lambda name: name not in no_decay)


def set_learning_rate_multipliers(model, multipliers: dict[str, float], named_parameters=None) -> None:
    """Scale each named parameter's learning rate (the others get 1). Paddle's optimizers read
    `optimize_attr["learning_rate"]` at every step and use schedule x multiplier for the update
    and the decoupled weight decay alike, so a multiplier of 0 leaves a parameter bit-identical
    (tests/test_pretraining.py checks AdamW and LAMB). `named_parameters`: the model's
    (path, parameter) list when the caller holds it (walking the layers costs ~5 ms at full size)."""
    named = list(model.named_parameters()) if named_parameters is None else named_parameters
    unknown = set(multipliers) - {path for path, _ in named}
    if unknown:
        raise ValueError(f"learning-rate multipliers for no parameter of the model: {sorted(unknown)[:4]}")
    for path, param in named:
        param.optimize_attr["learning_rate"] = float(multipliers.get(path, 1.0))


def clip_gradients(parameters, max_norm: float) -> float:
    """The global L2 norm of the parameters' gradients; when max_norm > 0 and the norm exceeds
    it, every gradient is scaled by max_norm / (norm + 1e-6) (paddle.nn.utils.clip_grad_norm_'s
    rule; Google's clip_by_global_norm differs by the 1e-6). Returns the norm before clipping.

    Each tensor's squared norm is one fused pass (squared_norm): Paddle's clip_grad_norm_ and
    paddle.linalg.norm take several passes per tensor (227 ms a step over the 36.6M gradients of
    MobileBERT's pretraining head on one core, against 21 here; PyTorch's clip_grad_norm_: 27) and
    add up the squares less accurately (relative error 3e-4 on the full model's norm, against 1e-7
    here; tests/test_train.py)."""
    gradients = [param.grad for param in parameters if param.grad is not None]
    if not gradients:
        return 0.0
    with paddle.no_grad():
        squares = [squared_norm(gradient if gradient.dtype == paddle.float32 else gradient.astype("float32"))
                   for gradient in gradients]             # astype copies even to the same dtype
        norm = float(paddle.sqrt(paddle.add_n(squares)).reshape([]))
    if max_norm > 0 and math.isfinite(norm):
        coefficient = max_norm / (norm + 1e-6)
        if coefficient < 1.0:             # a factor of 1 would leave every gradient as it is
            with paddle.no_grad():
                for gradient in gradients:
                    gradient.scale_(coefficient)
    return norm


def squared_norm(tensor):
    """sum(tensor ** 2) as a 1-element tensor, in one pass: the kernel Paddle's own
    ClipGradByGlobalNorm uses (square then sum is two passes: 59 ms against 21 over 36.6M values)."""
    try:
        from paddle.nn.clip import _squared_l2_norm
    except ImportError:                   # a private helper: fall back to the public two-pass form
        return paddle.square(tensor).sum()
    return _squared_l2_norm(tensor)
