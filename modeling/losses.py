"""The loss every head reduces with: cross-entropy over the labelled positions (-100 = ignored)."""

import torch
from torch import nn


def token_cross_entropy(
    logits: torch.Tensor,  # (..., V)
    labels: torch.Tensor,  # (...), -100 = ignored
    num_items_in_batch: int | torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Cross-entropy averaged over the labelled positions (labels != -100), or summed and divided by Trainer's
    `num_items_in_batch` (gradient accumulation: accumulated steps equal one big step). A batch with no labelled
    position has loss 0 and zero gradients: a plain mean divides by zero there, and its NaN gradients would turn every
    weight into NaN at the next optimizer step."""
    loss = nn.functional.cross_entropy(
        logits.float().flatten(0, -2),
        labels.flatten().to(logits.device),
        ignore_index=-100,
        reduction="sum",
        label_smoothing=label_smoothing,
    )
    count = (labels != -100).sum() if num_items_in_batch is None else num_items_in_batch
    if torch.is_tensor(count):
        return loss / count.to(loss.device).clamp(min=1)
    return loss / max(count, 1)
