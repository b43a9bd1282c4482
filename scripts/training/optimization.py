"""The optimizer and learning-rate schedule of every command that trains (our loop, and the fine-tuning Trainer
through its `create_optimizer` / `create_scheduler` hooks):

- `make_optimizer`: Adam with the paper's betas and epsilon by default (section 5.3), decoupled weight decay on the
  weight matrices and embeddings only;
- `learning_rate_factor` / `make_schedule`: linear warmup, then the paper's inverse square root decay, or a linear
  decay to 0 for a run of known length, or one cycle that ends with the run (`run_fraction`: whichever of --max_steps,
  --num_epochs and --max_train_minutes ends it);
- `paper_learning_rate`, `peak_learning_rate`, `loop_optimizer`: a run's peak and its (optimizer, scheduler).
"""

from typing import TYPE_CHECKING

import torch
from torch.optim.lr_scheduler import LambdaLR

from vanilla_transformer.scripts.training.errors import ArgumentError

if TYPE_CHECKING:
    from vanilla_transformer.scripts.training.loop import LoopArguments


def peak_learning_rate(args: "LoopArguments", default: float) -> float:
    """--learning_rate when given (0 is refused, not replaced), else the script's rule (`default`)."""
    return default if args.learning_rate is None else args.learning_rate


def learning_rate_factor(step: int, warmup_steps: int, total_steps: int | None = None,
                         run_fraction: float | None = None) -> float:
    """The learning rate of optimizer step `step` (counted from 1) as a fraction of its peak: a linear warmup to the
    peak at `warmup_steps`, then the paper's inverse square root decay, sqrt(warmup_steps / step) (section 5.3); or,
    given the run's `total_steps`, a linear decay to 0 after the last step (BERT's fine-tuning schedule); or, given
    `run_fraction` (how much of the run is done, 0 to 1, see `run_fraction`), one cycle: the lower of the warmup
    line and a line from the peak at the start of the run down to 0 at its end."""
    warmup = step / warmup_steps if warmup_steps else 1.0
    if run_fraction is not None:
        return max(0.0, min(warmup, 1.0, 1.0 - run_fraction))
    if total_steps is None:
        if warmup_steps < 1:
            raise ArgumentError(f"--warmup_steps {warmup_steps}: the inverse square root decay needs at least 1")
        return min(warmup, (warmup_steps / step) ** 0.5)
    return min(warmup, 1.0, max(0.0, (total_steps - step + 1) / max(1, total_steps - warmup_steps)))


def paper_learning_rate(d_model: int, warmup_steps: int, factor: float = 1.0) -> float:
    """The peak of lrate = d_model^-0.5 * min(step^-0.5, step * warmup^-1.5), reached at step = warmup:
    d_model^-0.5 * warmup^-0.5 (times `factor`)."""
    return factor * d_model**-0.5 * warmup_steps**-0.5


def make_optimizer(model: torch.nn.Module, learning_rate: float, betas: tuple[float, float] = (0.9, 0.98),
                   eps: float = 1e-9, weight_decay: float = 0.0) -> torch.optim.AdamW:
    """Adam (defaults: the paper's betas and epsilon, section 5.3) at `learning_rate`, with decoupled weight decay on
    the weight matrices and embeddings only: biases and norm scales (one dimension) are not decayed."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in parameters if p.ndim >= 2], "weight_decay": weight_decay},
              {"params": [p for p in parameters if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=learning_rate, betas=betas, eps=eps)


def run_fraction(args: "LoopArguments", steps: int, epochs: float, seconds: float) -> float:
    """How much of the run is done, 0 to 1, after `steps` optimizer steps, `epochs` passes over the data and `seconds`
    of training: the largest of steps / --max_steps, epochs / --num_epochs and seconds / --max_train_minutes, since
    the run stops when the first of them reaches 1."""
    done = [0.0]
    if args.max_steps is not None:
        done.append(steps / args.max_steps)
    if args.num_epochs is not None:
        done.append(epochs / args.num_epochs)
    if args.max_train_minutes is not None:
        done.append(seconds / (60 * args.max_train_minutes))
    return min(1.0, max(done))


class Schedule(LambdaLR):
    """`learning_rate_factor` as a scheduler, stepped once per optimizer step. With `one_cycle`, the factor reads
    `run_fraction`: how much of the run will be done after the current step, set by `train()` before each step. The
    state_dict holds it, so that a resumed run goes on from where it stopped."""

    def __init__(self, optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int | None = None,
                 one_cycle: bool = False, clock: bool = False):
        self.run_fraction = 0.0 if one_cycle else None
        self.clock_fraction = 0.0 if clock else None
        # LambdaLR counts scheduler steps from 0; the paper's step_num starts at 1 (no step at learning rate 0). No
        # attribute is named total_steps: accelerate's scheduler wrapper takes a scheduler that has one for OneCycleLR.
        super().__init__(optimizer, lambda index: self.factor(index + 1, warmup_steps, total_steps))

    def factor(self, step: int, warmup_steps: int, total_steps: int | None) -> float:
        """`learning_rate_factor`; with a clock (`clock_fraction`: how much of a time budget is spent, set by the
        fine-tuning Trainer's `TimeBudget`), the linear decay to 0 of a run of `total_steps` follows whichever of the
        steps and the clock is further along: the same schedule when the steps end first."""
        factor = learning_rate_factor(step, warmup_steps, total_steps, self.run_fraction)
        if self.clock_fraction is not None and total_steps:
            by_clock = (1.0 - self.clock_fraction) * total_steps / max(1, total_steps - warmup_steps)
            factor = min(factor, max(0.0, by_clock))
        return factor


def make_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int | None = None,
                  one_cycle: bool = False, clock: bool = False) -> Schedule:
    """`learning_rate_factor` as a scheduler, stepped once per optimizer step (`one_cycle`, `clock`: see
    `Schedule`)."""
    return Schedule(optimizer, warmup_steps, total_steps, one_cycle, clock)


def loop_optimizer(model: torch.nn.Module, args: "LoopArguments", learning_rate: float):
    """The optimizer and schedule of a run of `train()`, from its arguments: (optimizer, scheduler)."""
    optimizer = make_optimizer(model, learning_rate, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon,
                               weight_decay=args.weight_decay)
    return optimizer, make_schedule(optimizer, args.warmup_steps, one_cycle=args.lr_schedule == "one_cycle")
