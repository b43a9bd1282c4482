"""An epoch's micro-batches, as lists of example indices, and each process's share of them.

`token_batches` cuts batches by token count (the translation and MLM scripts), `sized_batches` by example count (the
main job); both are functions of (seed, epoch) only, so a resumed run re-creates the order of the run it continues.
`steps_for_process` groups them into optimizer steps and hands each process its share.
"""

from collections.abc import Sequence

import numpy as np

from vanilla_transformer.scripts.training.errors import ArgumentError, DataError


def token_batches(
    lengths: Sequence[int], max_tokens: int, seed: int, epoch: int, shuffle: bool = True
) -> list[list[int]]:
    """Micro-batches of examples of similar length, each of at most `max_tokens` tokens counting padding
    (`len(batch) * longest example`), in an order drawn from (seed, epoch); `shuffle=False`: by length, fixed.

    Examples are sorted by length (ties broken at random) and cut greedily: little padding, as the paper's
    "sentence pairs were batched together by approximate sequence length" (section 5.1)."""
    lengths = np.asarray(lengths)
    if lengths.size and lengths.max() > max_tokens:
        raise ArgumentError(
            f"an example of {lengths.max()} tokens does not fit in --max_tokens {max_tokens}: raise --max_tokens "
            "or lower the maximum length"
        )
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths)) if shuffle else np.arange(len(lengths))
    keys = lengths[order]
    if np.issubdtype(keys.dtype, np.integer) and keys.size and 0 <= keys.min() and keys.max() < 2**16:
        keys = keys.astype(np.uint16)  # numpy's stable sort of 16-bit integers is a radix sort: several times faster
    order = order[np.argsort(keys, kind="stable")]
    ordered = lengths[order]
    # Greedy, in length order: each example is the longest of its batch so far, so a batch of examples of length L
    # or less holds at most max_tokens // L of them. Within a run of equal lengths the batches are full, and only
    # the batch left open at a run's end crosses into the next run: one step per distinct length, not per example.
    run_starts = [0, *(np.flatnonzero(np.diff(ordered)) + 1).tolist()] if len(order) else []
    cuts, open_count = [0], 0  # where batches start; examples in the batch that is still open
    for start, end in zip(run_starts, [*run_starts[1:], len(order)]):
        fit = max_tokens // max(1, int(ordered[start]))
        if open_count >= fit:  # the open batch cannot take one example of this length
            cuts.append(start)
            open_count = 0
        full = start + fit - open_count  # where the open batch is full
        cuts += range(full, end, fit)
        open_count = end - cuts[-1] if full < end else open_count + end - start
    indices = order.tolist()
    batches = [indices[a:b] for a, b in zip(cuts, cuts[1:] + [len(indices)]) if a < b]
    if shuffle:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def sized_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Micro-batches of `batch_size` examples of similar length (the last one shorter), in an order drawn from
    (seed, epoch): examples sorted by length (ties broken at random), cut every `batch_size`, the batches shuffled."""
    lengths = np.asarray(lengths)
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    order = order[np.argsort(lengths[order], kind="stable")].tolist()
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def steps_for_process(
    batches: list[list[int]], num_processes: int, process_index: int, accumulation: int
) -> list[list[list[int]]]:
    """Group an epoch's micro-batches into optimizer steps of `num_processes * accumulation` micro-batches and
    return this process's share: `accumulation` micro-batches per step.

    So that every example is seen exactly once per epoch and every process has the same number of micro-batches,
    the largest micro-batches are split in two until the count is a multiple of the step size (a split batch
    never has more padding than the whole). This depends on the step size only, not on how it is made up."""
    per_step = num_processes * accumulation
    batches = list(batches)
    if sum(len(batch) for batch in batches) < per_step:
        raise DataError(
            f"{sum(len(b) for b in batches)} training examples cannot fill one step of {num_processes} processes x "
            f"{accumulation} accumulated micro-batches: give more training data, or use fewer processes or a lower "
            "--gradient_accumulation_steps"
        )
    while len(batches) % per_step:
        largest = max(range(len(batches)), key=lambda i: len(batches[i]))
        batch = batches[largest]
        batches[largest : largest + 1] = [batch[: len(batch) // 2], batch[len(batch) // 2 :]]
    steps = [batches[start : start + per_step] for start in range(0, len(batches), per_step)]
    return [step[process_index * accumulation : (process_index + 1) * accumulation] for step in steps]
