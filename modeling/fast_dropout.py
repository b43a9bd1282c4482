"""Fast path: dropout with its mask drawn as 32-bit integers on CPU.

Plain computation it equals: `torch.nn.functional.dropout(x, p, training)` (section 5.4): each element zeroed with
probability p, the rest scaled by 1 / (1 - p); the same distribution, drawn from another random stream. Proven by
`tests/test_fast_paths.py::test_cpu_dropout_has_torch_dropout_distribution_and_gradient` and
`test_dropout_module_is_identity_in_eval_and_at_zero`.

Entered from one place, `apply_dropout`: the `Dropout` module of every layer and the eager attention kernel call it.
So that attention dropout is this one too, `MultiHeadAttention.forward` asks `eager_kernel_trains_faster` and runs an
sdpa model's CPU training on the eager kernel, which takes sdpa's masks: the same results as sdpa, proven by
`test_eager_kernel_takes_the_sdpa_masks` and `test_cpu_training_attention_path_equals_sdpa`.
"""

import torch
from torch import nn


class _KeepAndScale(torch.autograd.Function):
    """x * keep / (1 - p), saving the boolean mask for the backward pass, as torch's own dropout does."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return x.mul(keep).mul_(scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (keep,) = ctx.saved_tensors
        return grad.mul(keep).mul_(ctx.scale), None, None


def apply_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Dropout. On CPU the mask is drawn as 32-bit uniform integers (the generator's raw output, two per 64-bit draw)
    compared with a threshold: P(keep) = 1 - p to within 2^-33, about three times faster than torch's per-element
    Bernoulli draws there, a tenth of a small model's training step. Elsewhere (GPU kernels draw in bulk already)
    and under torch.compile it is torch's dropout."""
    if not training or p == 0.0:
        return x
    keep_count = round((1.0 - p) * 2**32)  # of the 2^32 values a 32-bit draw can take, how many keep
    if x.device.type != "cpu" or torch.compiler.is_compiling() or not 0 < keep_count < 2**32:
        return nn.functional.dropout(x, p, training=True)
    n = x.numel()
    draws = torch.empty((n + 1) // 2, dtype=torch.int64).random_(-(2**63), None)  # 64 uniform bits each
    keep = draws.view(torch.int32)[:n].view(x.shape) < keep_count - 2**31  # int32 draws are uniform on [-2^31, 2^31)
    return _KeepAndScale.apply(x, keep, 1.0 / (1.0 - p))


class Dropout(nn.Dropout):
    """`nn.Dropout` (same module, same repr, no weights) drawing its mask with `apply_dropout`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return apply_dropout(x, self.p, self.training)


def eager_kernel_trains_faster(attention: nn.Module, query: torch.Tensor) -> bool:
    """Whether an sdpa model's attention should run the eager kernel instead: in training on CPU with dropout on the
    weights, torch's sdpa runs its math kernel, the same operations as the eager kernel, whose dropout draws its
    mask faster (`apply_dropout`). The eager kernel takes sdpa's masks (boolean, or None with `is_causal`)."""
    return (
        attention.training
        and attention.dropout > 0
        and query.is_cpu
        and attention.config._attn_implementation == "sdpa"
    )
