"""The one run of every command that trains on our loop (translation, masked-LM pretraining, and the main job through
them), in the order fairseq's train.py has: the run folder, the tokenizer and data, the model, training, then the
final folder or an early stop, and a report. A command brings what is its own as a `Recipe`; `run` does the rest,
the same way for every command:

1. the engine (`engine.make_accelerator`) and the seed;
2. what can be checked before any data is read (`Recipe.check`: model arguments, data paths), then the run folder
   (`run_folder.prepare_output_dir`: a fresh run or `--resume` of a run with the same arguments);
3. the data and the tokenizer (`Recipe.load`, the main process first: the others read the caches it wrote);
4. the model (`Recipe.model`), its optimizer and schedule at the recipe's peak learning rate unless --learning_rate
   gives one, prepared for the engine;
5. `training_args.json`, the trackers, and the loop (`loop.train` with the recipe's `TrainingTask`);
6. an early stop (Ctrl-C, a step or time limit of this run) says where the checkpoint is and how to continue; a
   completed run gets the recipe's last word (`Recipe.finish`: e.g. choices made on the validation set), then the
   Hub-ready `final/` (`run_folder.save_final`), the training curves and the recipe's summary line.

`run_tokenizer` is the tokenizer policy the recipes share: the one given; on --resume the run's own (checked
against the checkpoint); else a new one trained on the training text and saved in the run folder.
"""

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import set_seed
from transformers import AutoTokenizer

from vanilla_transformer.scripts.training import run_lock
from vanilla_transformer.scripts.training.engine import end_run, make_accelerator, prepare_for_training
from vanilla_transformer.scripts.training.errors import ArgumentError, CheckpointError
from vanilla_transformer.scripts.training.logs import plot_log
from vanilla_transformer.scripts.training.loop import LoopArguments, TrainingTask, TrainOutcome, train
from vanilla_transformer.scripts.training.optimization import loop_optimizer, peak_learning_rate
from vanilla_transformer.scripts.training.run_folder import ResumePoint, prepare_output_dir, save_final
from vanilla_transformer.scripts.training.tokenizer_checks import tokenizer_fingerprint


@dataclass
class RunContext:
    """What a recipe's steps see of the run."""

    accelerator: Accelerator
    loop: LoopArguments
    output_dir: Path
    resume: ResumePoint | None


class Recipe:
    """What a command brings to `run`: its arguments (dataclasses), and the steps that are its own."""

    name = "run"  # the trackers' project name
    changeable: tuple[str, ...] = ()  # arguments a resumed run may change besides run_folder.CHANGEABLE_ON_RESUME

    def __init__(self, *arguments):
        self.arguments = arguments  # the command's argument dataclasses, LoopArguments last

    def recorded_arguments(self) -> dict:
        """The run's arguments as training_args.json and every checkpoint record them."""
        return {key: value for dataclass_ in self.arguments for key, value in asdict(dataclass_).items()}

    def check(self) -> None:
        """What can be checked before any data is read (model arguments, data paths); raise to refuse."""

    def load(self, run: RunContext) -> None:
        """Read the data, make or load the tokenizer (`self.tokenizer`), tokenize; print what was read."""
        raise NotImplementedError

    def model(self, run: RunContext):
        raise NotImplementedError

    def learning_rate(self, model) -> float:
        """The peak learning rate when --learning_rate does not give one."""
        raise NotImplementedError

    def describe(self, run: RunContext, model, learning_rate: float) -> str:
        """One line before training starts: the model, its learning rate, the batches."""
        raise NotImplementedError

    def task(self, run: RunContext) -> TrainingTask:
        raise NotImplementedError

    def finish(self, run: RunContext, model, outcome: TrainOutcome) -> dict:
        """After a completed run, before final/ is written: {file name in the run folder: JSON content}."""
        return {}

    def summary(self, run: RunContext, outcome: TrainOutcome, final: Path) -> str:
        return f"saved {final}"


def run(recipe: Recipe, loop: LoopArguments) -> TrainOutcome:
    try:
        return _run(recipe, loop)
    finally:  # however the run ends: the run folder is free again (prepare_output_dir took it: run_lock)
        run_lock.release(loop.output_dir)


def _run(recipe: Recipe, loop: LoopArguments) -> TrainOutcome:
    accelerator = make_accelerator(loop)
    set_seed(loop.seed)
    recipe.check()
    arguments = recipe.recorded_arguments()
    resume = prepare_output_dir(accelerator, loop, arguments, changeable=recipe.changeable)
    context = RunContext(accelerator, loop, Path(loop.output_dir), resume)
    with accelerator.main_process_first():  # the other processes then read the caches the main one wrote
        recipe.load(context)

    model = recipe.model(context)
    learning_rate = peak_learning_rate(loop, recipe.learning_rate(model))
    optimizer, scheduler = loop_optimizer(model, loop, learning_rate)
    model, optimizer, scheduler = prepare_for_training(accelerator, loop, model, optimizer, scheduler)
    accelerator.print(recipe.describe(context, accelerator.unwrap_model(model), learning_rate))
    if accelerator.is_main_process:
        (context.output_dir / "training_args.json").write_text(json.dumps(arguments, indent=1) + "\n")
    if loop.report_to:
        accelerator.init_trackers(recipe.name, config={key: value for key, value in arguments.items()
                                                       if isinstance(value, (int, float, str, bool))})

    outcome = train(accelerator, model, optimizer, scheduler, recipe.task(context), loop, arguments)
    if not outcome.completed:
        accelerator.print(f"stopped early ({outcome.stop_reason}); checkpoint {outcome.checkpoint}: continue with "
                          "the same command and --resume")
    else:
        model.eval()
        extra = recipe.finish(context, model, outcome)
        # every process: the weights of a sharded model are gathered together
        final = save_final(accelerator, model, recipe.tokenizer, context.output_dir, arguments, outcome.checkpoint,
                           extra=extra)
        if final is None:  # Ctrl-C while final/ was written: nothing of it kept, save_final said how to write it
            outcome.completed, outcome.stop_reason = False, "interrupted"
        elif accelerator.is_main_process:
            plot_log(context.output_dir / "log.jsonl", context.output_dir / "training_curves.png")
            accelerator.print(recipe.summary(context, outcome, final)
                              + f"; curves in {context.output_dir / 'training_curves.png'}")
    model = accelerator.unwrap_model(model)  # see end_run: no prepared wrapper outlives the run
    end_run(accelerator)
    return outcome


def load_tokenizer(name, what: str):
    try:
        return AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as error:
        raise ArgumentError(f"{what} {name}: no tokenizer could be loaded from it ({error})") from None


def run_tokenizer(run: RunContext, given: str | None, given_as: str, train_new: Callable[[], object]):
    """The run's tokenizer and whether this run trained it: `given` (a folder or Hub id, named `given_as` in
    messages); on --resume (and on the processes other than the main one) the run's own, output_dir/tokenizer,
    checked against the checkpoint; else `train_new()`, saved there by the main process. A tokenizer from an earlier
    run is never reused for a new one."""
    folder = run.output_dir / "tokenizer"
    trained_here = False
    if given:
        tokenizer = load_tokenizer(given, given_as)
    elif run.resume is not None or not run.accelerator.is_main_process:
        if not (folder / "tokenizer.json").is_file():
            raise CheckpointError(f"{folder} is missing: the tokenizer this run was trained with. Resume needs it; "
                                  "start a new --output_dir")
        tokenizer = load_tokenizer(folder, "the run's tokenizer")
    else:
        tokenizer = train_new()
        tokenizer.save_pretrained(folder)
        trained_here = True
    if run.resume is not None:
        run.resume.check_signature(tokenizer=tokenizer_fingerprint(tokenizer))
    return tokenizer, trained_here
