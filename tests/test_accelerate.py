"""The Accelerate side of the training loop (vanilla_transformer.scripts.training.loop): several processes (DDP) train to
the same weights as one, Ctrl-C under `accelerate launch` saves a checkpoint that resumes exactly, mixed precision
runs, and the learning rate follows the paper's schedule (or BERT's fine-tuning one)."""

import contextlib
import math
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import safetensors.torch
import torch


from vanilla_transformer.scripts.training.loop import LoopArguments
from vanilla_transformer.scripts.training.optimization import (
    learning_rate_factor,
    loop_optimizer,
    make_optimizer,
    make_schedule,
    paper_learning_rate,
    run_fraction,
)

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.fixture
def launched(launch_command):
    """launched(argv, num_processes, mixed_precision="no"): a context manager, the running `accelerate launch` of
    train_translation.py; its whole process group is killed on the way out if still there (a failed or timed-out
    test must not leave workers waiting in a collective)."""

    @contextlib.contextmanager
    def _launched(argv: list[str], num_processes: int, mixed_precision: str = "no"):
        process = subprocess.Popen(
            launch_command(num_processes, mixed_precision) + [str(SCRIPTS / "train_translation.py"), *argv],
            env={**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"},
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,  # its own process group, as a terminal's job: Ctrl-C and cleanup reach them all
        )
        try:
            yield process
        finally:
            with contextlib.suppress(ProcessLookupError):  # nothing left: the usual case
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    return _launched


@pytest.fixture
def launch(launched):
    """launch(argv, num_processes, mixed_precision="no") -> its output, after checking that it succeeded."""

    def _launch(argv: list[str], num_processes: int, mixed_precision: str = "no") -> str:
        with launched(argv, num_processes, mixed_precision) as process:
            output = process.communicate(timeout=180)[0]
        assert process.returncode == 0, output[-6000:]
        return output

    return _launch


def test_ctrl_c_under_accelerate_launch_saves_a_checkpoint_that_resumes_exactly(tmp_path, launch, launched,
                                                                                run_translation, translation_args,
                                                                                write_translation_corpus):
    """The terminal's Ctrl-C reaches the launcher and both processes (one process group); the launcher forwards
    it once more. Both processes stop after the same step and save one checkpoint."""
    corpus = write_translation_corpus(tmp_path / "data")
    argv = translation_args(corpus, tmp_path / "two", "--dropout", "0", "--save_steps", "100000")
    log = tmp_path / "two" / "log.jsonl"
    with launched([*argv, "--max_steps", "100000"], num_processes=2) as process:
        deadline = time.monotonic() + 120
        while not (log.is_file() and len(log.read_text().splitlines()) >= 3):
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()[0][-3000:]
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
        output = process.communicate(timeout=120)[0]
    (checkpoint,) = (tmp_path / "two" / "checkpoints").iterdir()
    stopped_at = int(checkpoint.name.removeprefix("step-"))
    assert {"rng_state_0.safetensors", "rng_state_1.safetensors", "model.safetensors"} <= {
        p.name for p in checkpoint.iterdir()}
    assert "interrupted: saving a checkpoint" in output, output[-3000:]
    assert "engine: DDP (CPU), 2 processes on 1 machine, cpu, mixed precision no" in output

    launch([*argv, "--max_steps", str(stopped_at + 2), "--resume"], num_processes=2)
    reference = run_translation(translation_args(corpus, tmp_path / "one", "--dropout", "0", "--save_steps", "100000",
                             "--max_steps", str(stopped_at + 2), "--gradient_accumulation_steps", "2"))
    resumed = safetensors.torch.load_file(tmp_path / "two" / "checkpoints" / f"step-{stopped_at + 2}"
                                          / "model.safetensors")
    expected = safetensors.torch.load_file(reference.checkpoint / "model.safetensors")
    for key in expected:
        torch.testing.assert_close(resumed[key], expected[key], rtol=1e-4, atol=1e-5, msg=key)


def test_bf16_mixed_precision_through_accelerate_launch(tmp_path, launch, log_records, run_translation,
                                                        translation_args, write_translation_corpus):
    corpus = write_translation_corpus(tmp_path / "data")
    argv = ["--max_steps", "3", "--save_steps", "3"]
    # --force_bf16: bf16 even where this CPU only emulates it (the run is 3 tiny steps; test_cpu_precision.py covers
    # the fallback to fp32 that a CPU without native bf16 gets otherwise)
    launch(translation_args(corpus, tmp_path / "bf16", *argv, "--force_bf16"), num_processes=1, mixed_precision="bf16")
    reference = run_translation(translation_args(corpus, tmp_path / "fp32", *argv))
    bf16_losses = [r["loss"] for r in log_records(tmp_path / "bf16") if "loss" in r]
    fp32_losses = [r["loss"] for r in log_records(tmp_path / "fp32") if "loss" in r]
    assert len(bf16_losses) == 3 and all(math.isfinite(loss) for loss in bf16_losses)
    # bf16 matmuls round: close to the fp32 losses, not equal (autocast was on)
    assert bf16_losses == pytest.approx(fp32_losses, rel=0.05) and bf16_losses != fp32_losses
    weights = safetensors.torch.load_file(tmp_path / "bf16" / "final" / "model.safetensors")
    assert all(w.dtype == torch.float32 for w in weights.values())  # fp32 master weights
    assert reference.completed


def test_learning_rate_follows_the_papers_schedule():
    args = LoopArguments(output_dir="unused", max_steps=1, warmup_steps=100)
    peak = paper_learning_rate(d_model=512, warmup_steps=100, factor=2.0)
    assert peak == pytest.approx(2 * 512**-0.5 * 100**-0.5)
    optimizer, scheduler = loop_optimizer(torch.nn.Linear(2, 2), args, peak)
    used = []  # the rate each optimizer step (1, 2, ...) is taken with
    for _ in range(400):
        used.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    paper = [2 * 512**-0.5 * min(step**-0.5, step * 100**-1.5) for step in range(1, 401)]  # lrate, section 5.3
    assert used == pytest.approx(paper)
    assert used[99] == pytest.approx(peak) and used[399] == pytest.approx(peak / 2) and used[0] > 0
    assert learning_rate_factor(100, 100) == 1.0
    assert optimizer.defaults["betas"] == (0.9, 0.98) and optimizer.defaults["eps"] == 1e-9  # the paper's Adam


def test_fine_tuning_schedule_decays_linearly_to_zero_and_biases_and_norms_are_not_decayed():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    optimizer = make_optimizer(model, 1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    decayed = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    assert decayed == {id(model[0].weight): 0.01, id(model[0].bias): 0.0, id(model[1].weight): 0.0,
                       id(model[1].bias): 0.0}
    scheduler = make_schedule(optimizer, warmup_steps=4, total_steps=10)
    used = []
    for _ in range(10):
        used.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    # warmup to the peak at step 4, then linearly down: 6 steps after the warmup, the last one at 1/6 of the peak
    expected = [1e-3 * f for f in (0.25, 0.5, 0.75, 1.0, 1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6)]
    assert used == pytest.approx(expected)
    assert scheduler.get_last_lr()[0] == 0.0  # after the last step
    assert learning_rate_factor(3, warmup_steps=0, total_steps=4) == pytest.approx(0.5)  # no warmup
    with pytest.raises(ValueError, match="inverse square root decay needs at least 1"):
        learning_rate_factor(1, warmup_steps=0)


def test_one_cycle_schedule_falls_to_zero_at_the_first_limit_of_the_run():
    """--lr_schedule one_cycle: the lower of the warmup line and a line from the peak down to 0 at the end of the run,
    which is the first of --max_steps, --num_epochs and --max_train_minutes to be reached (`run_fraction`)."""
    args = LoopArguments(output_dir="unused", max_steps=10, num_epochs=4, max_train_minutes=1.0, warmup_steps=2,
                         lr_schedule="one_cycle")
    assert run_fraction(args, steps=5, epochs=1.0, seconds=6.0) == 0.5  # the steps come first
    assert run_fraction(args, steps=1, epochs=3.0, seconds=6.0) == 0.75  # the epochs
    assert run_fraction(args, steps=1, epochs=0.5, seconds=45.0) == 0.75  # the clock
    assert run_fraction(args, steps=11, epochs=0.5, seconds=0.0) == 1.0
    optimizer, scheduler = loop_optimizer(torch.nn.Linear(2, 2), args, 1e-3)
    used = []
    for step in range(1, 11):
        scheduler.run_fraction = step / 10  # what train() sets before each step: the run done after it
        used.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    # step 1: the warmup line (1/2); step 2: the decay line (1 - 1/10) is lower than the warmup's 2/2
    assert used == pytest.approx([1e-3 * f for f in (0.5, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1)])
    assert scheduler.get_last_lr()[0] == 0.0
    assert scheduler.state_dict()["run_fraction"] == 1.0  # checkpointed: a resumed run goes on from there
    assert learning_rate_factor(3, warmup_steps=2, run_fraction=0.25) == 0.75
    # the default is still the paper's: no run fraction
    default = LoopArguments(output_dir="unused", max_steps=1)
    assert loop_optimizer(torch.nn.Linear(2, 2), default, 1e-3)[1].run_fraction is None
    with pytest.raises(ValueError, match="--lr_schedule cosine: choose from inverse_sqrt, one_cycle"):
        LoopArguments(output_dir="unused", max_steps=1, lr_schedule="cosine")
