"""Evaluation under any engine: every process scores its share of the held-out batches, and makes as many forward
passes as the others (`evaluation_share`), which a model sharded by FSDP2 needs (each forward pass is a collective);
`mean_loss` adds the shares up."""

from collections.abc import Callable, Sequence

import torch
from accelerate import Accelerator

from vanilla_transformer.scripts.training.errors import DataError


def evaluation_share(items: Sequence, num_processes: int, process_index: int) -> tuple[list, list]:
    """(this process's share of `items`, padding): every num_processes-th item from the process's own index, and
    copies of the first item up to the size of the largest share. Score the share; run the padding through the
    model too, without counting it. Every process then makes the same number of forward passes (or `generate`
    calls), as a model sharded by FSDP2 needs: each of its forward passes is a collective. Under DDP and in one
    process the scores are those of the share alone."""
    mine = list(items[process_index::num_processes])
    missing = -(-len(items) // num_processes) - len(mine)  # the largest share's size, less this one's
    return mine, [items[0]] * missing if missing else []


@torch.no_grad()
def mean_loss(accelerator: Accelerator, model: torch.nn.Module, batches: Sequence,
              collate: Callable[[object], dict] = lambda batch: batch) -> float:
    """Validation loss per item (target token, masked token) over `batches`, the same list on every process: each
    process scores its share (`evaluation_share`), `collate` making each of its batches a dict of tensors (default:
    they are already), and the summed losses and item counts (labels != -100) of all processes are added up. The
    model must reduce its loss as sum / num_items_in_batch. Runs the bare model: a DDP forward is a collective (its
    buffer broadcast), which an evaluation in eval mode does not need."""
    model = accelerator.unwrap_model(model)
    mine, padding = evaluation_share(batches, accelerator.num_processes, accelerator.process_index)

    def summed_loss(batch) -> tuple[torch.Tensor, torch.Tensor]:
        batch = to_device(collate(batch), accelerator.device)
        with accelerator.autocast():
            loss = model(**batch, num_items_in_batch=1).loss.float()  # num_items_in_batch=1: the sum
        return loss, (batch["labels"] != -100).sum()

    totals = torch.zeros(2, device=accelerator.device)  # summed loss, items
    for batch in mine:
        loss, items = summed_loss(batch)
        totals[0] += loss
        totals[1] += items
    for batch in padding:  # the same number of forward passes on every process; not counted
        summed_loss(batch)
    totals = accelerator.reduce(totals, "sum")
    if totals[1] == 0:
        raise DataError("the validation data gives no item to score (no target or masked token): give more "
                        "validation data")
    return (totals[0] / totals[1]).item()


def to_device(batch: dict, device) -> dict:
    return {key: value.to(device) for key, value in batch.items()}
