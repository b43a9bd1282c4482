"""Run folders (issue 25): a checkpoint is untrusted data, one run per folder, the final folder complete or absent.

- every field of a checkpoint is checked before anything acts on it (progress.json against its own fields, the
  run's limits and the data; the state files against what they fill); nothing of final/ is touched before; a
  checkpoint (or a file of it) that is a symbolic link is refused, and what it points to is left alone;
- a second run on a folder in use refuses, naming the run that holds it; a stale lock is taken over with a warning;
- a failure or Ctrl-C while the final model is written (our loop's final/, the fine-tuning Trainer's folder) leaves
  none of it, says so and how to write it (--resume), which then does.

Faults are injected by editing files and by monkeypatching the writers, never by timing."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch

from vanilla_transformer.modeling import VanillaBertForMaskedLM
from vanilla_transformer.modeling.hub import save_for_hub
from vanilla_transformer.scripts import finetune_classification, train_translation
from vanilla_transformer.scripts.training import checkpoint_checks, finetuning_trainer, run_folder, run_lock
from vanilla_transformer.scripts.training.checkpoints import TrainingProgress, load_state_file, save_state_file


@pytest.fixture(scope="module")
def stopped(tmp_path_factory, run_translation, translation_args, write_translation_corpus):
    """A translation run stopped after 2 of 4 steps (checkpoint step-2)."""
    root = tmp_path_factory.mktemp("stopped")
    corpus = write_translation_corpus(root / "data")
    argv = translation_args(corpus, root / "run", "--max_steps", "4", "--save_steps", "2", "--length_penalties", "1.0")
    outcome = run_translation([*argv, "--max_steps_this_run", "2"])
    assert not outcome.completed and outcome.checkpoint.name == "step-2"
    return root / "run", argv


@pytest.fixture
def run_copy(stopped, tmp_path):
    """A copy of the stopped run with an earlier final/ in it (which no refused resume may touch), and its argv."""
    folder, argv = stopped
    copy = tmp_path / "run"
    shutil.copytree(folder, copy)
    (copy / "final").mkdir()
    (copy / "final" / "config.json").write_text("{}")
    return copy, [str(copy) if value == str(folder) else value for value in argv]


def edit_progress(folder: Path, **changes) -> Path:
    path = folder / "checkpoints" / "step-2" / "progress.json"
    record = json.loads(path.read_text())
    for key, value in changes.items():
        if key == "max_steps":
            record["arguments"]["max_steps"] = value
        else:
            record[key] = value
    path.write_text(json.dumps(record))
    return path


def assert_untouched(folder: Path) -> None:
    """Nothing of the run folder renamed or deleted by a refused resume."""
    assert (folder / "final" / "config.json").read_text() == "{}" and not list(folder.glob("final-*"))
    assert [p.name for p in (folder / "checkpoints").iterdir()] == ["step-2"]


# --------------------------------------------------------------------------------- a checkpoint is untrusted data


PROGRESS_CASES = [
    # the file's fields against each other and the run's own limits: refused before any data is read
    ({"global_step": 10**18, "step_in_epoch": 10**18},
     r"field 'global_step': 1,000,000,000,000,000,000 steps in [\d.e+-]+ s of training \(train_seconds\) is more than"),
    ({"global_step": 10**18, "step_in_epoch": 10**18, "train_seconds": 1e15},
     r"field 'train_seconds': 1000000000000000.0 is not a time of training \(seconds, 0 to 3,153,600,000\)"),
    ({"global_step": 3}, r"field 'global_step': 3, but in epoch 0 it is step_in_epoch, 2"),
    ({"global_step": 5, "step_in_epoch": 5}, r"field 'global_step': 5 is past the run's own --max_steps 4"),
    ({"train_seconds": float("nan")}, r"field 'train_seconds': nan is not a time of training"),
    ({"epoch": "0"}, r"field 'epoch': '0' is not a whole number 0 or more"),
    ({"epoch": -1}, r"field 'epoch': -1 is not a whole number 0 or more"),
    ({"step_in_epoch": True}, r"field 'step_in_epoch': True is not a whole number"),
    ({"arguments": []}, r"field 'arguments': list, not a mapping"),
    ({"bogus": 1}, r"field 'bogus': not a field of a progress record \(those are arguments, epoch, "),
    # against the data, once read: only epochs of 1 step make this (this corpus's have several)
    ({"epoch": 1, "step_in_epoch": 1, "global_step": 2},
     r"field 'global_step': 2, but epoch 1 and step_in_epoch 1 at \d+ steps per epoch make \d+"),
]


@pytest.mark.parametrize("changes, message", PROGRESS_CASES, ids=[str(c) for c, _ in PROGRESS_CASES])
def test_every_field_of_progress_json_is_checked_before_final_is_touched(run_copy, run_translation, changes, message):
    folder, argv = run_copy
    edit_progress(folder, **changes)
    with pytest.raises(RuntimeError, match=r"cannot resume from .*step-2: progress\.json, " + message + r".*The file "
                                           r"was changed or is damaged.*delete this folder"):
        run_translation([*argv, "--resume"])
    assert_untouched(folder)


def test_the_progress_record_is_the_training_progress():
    assert set(checkpoint_checks.PROGRESS_FIELDS) == set(TrainingProgress().state_dict())
    with pytest.raises(ValueError, match=r"unknown progress fields \['bogus'\]"):
        TrainingProgress().load_state_dict({"epoch": 1, "bogus": 2})


def command_alone(argv: list[str], timeout: int = 240) -> subprocess.CompletedProcess:
    """train_translation as a command in a process of its own (a resume that spins is then a timeout, not a hang)."""
    code = "import sys; from vanilla_transformer.scripts import train_translation as t; sys.exit(t.main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.parametrize("changes, field", [
    ({"step_in_epoch": 10**18}, r"field 'step_in_epoch': 1,000,000,000,000,000,000 is above global_step 2"),
    # believable by itself (the run's --max_steps raised to 1000), not by the data: an epoch has fewer steps
    ({"step_in_epoch": 999, "global_step": 999, "train_seconds": 100.0, "max_steps": 1000},
     r"field 'step_in_epoch': 999, but an epoch of this run's data has \d+ steps"),
], ids=["10^18", "past the epoch"])
def test_a_step_past_the_epoch_is_refused_instead_of_spinning(run_copy, changes, field):
    """Before: the loop that skips the done steps had none left to run and spun at full CPU, past the stop and signal
    checks, after final/ had been renamed."""
    folder, argv = run_copy
    edit_progress(folder, **changes)
    result = command_alone([*argv, "--resume", "--max_steps", str(changes.get("max_steps", 4))])
    assert result.returncode == 1, result.stderr[-3000:]
    assert re.search(r"error: cannot resume from .*step-2: progress\.json, " + field, result.stderr), result.stderr
    assert_untouched(folder)


STATE_CASES = [
    ("scheduler.safetensors", lambda state: {**state, "optimizer": 1},
     r"scheduler\.safetensors: unknown keys \['optimizer'\]"),
    ("scheduler.safetensors", lambda state: {**state, "last_epoch": 10**18},
     r"scheduler\.safetensors: last_epoch 1000000000000000000 is not within the checkpoint's 2 steps"),
    ("scheduler.safetensors", lambda state: {**state, "base_lrs": [float("inf")] * len(state["base_lrs"])},
     r"scheduler\.safetensors\.base_lrs\[0\] is inf, not a finite float"),
    ("optimizer.safetensors",
     lambda state: {**state, "param_groups": [{**g, "lr": float("nan")} for g in state["param_groups"]]},
     r"optimizer\.safetensors: param_groups\[0\]: lr nan is not a learning rate"),
    ("optimizer.safetensors",
     lambda state: {**state, "param_groups": [{**g, "betas": (0.5, 0.5)} for g in state["param_groups"]]},
     r"optimizer\.safetensors: param_groups\[0\]: betas \(0\.5, 0\.5\), where this run has \(0\.9, 0\.98\)"),
    ("optimizer.safetensors",
     lambda state: {**state, "state": {**state["state"], 0: {**state["state"][0],
                                                             "step": state["state"][0]["step"] * 10**17}}},
     r"optimizer\.safetensors: state\[0\]\.step: \[[\d.]+e\+17\] is not within the checkpoint's 2 steps"),
    ("optimizer.safetensors",
     lambda state: {**state, "state": {**state["state"], 0: {**state["state"][0],
                                                             "exp_avg": state["state"][0]["exp_avg"][:1]}}},
     r"optimizer\.safetensors: state\[0\]\.exp_avg: not finite, or not of its parameter's shape"),
    ("rng_state_0.safetensors", lambda state: {**state, "extra": 1},
     r"rng_state_0\.safetensors: keys \['extra', 'numpy', 'python', 'torch'\], where python, numpy, torch"),
]


@pytest.mark.parametrize("name, change, message", STATE_CASES, ids=[f"{n}-{i}" for i, (n, _, _) in
                                                                    enumerate(STATE_CASES)])
def test_the_state_files_are_checked_against_what_they_fill(run_copy, run_translation, name, change, message):
    folder, argv = run_copy
    path = folder / "checkpoints" / "step-2" / name
    save_state_file(path, change(load_state_file(path)))
    with pytest.raises(RuntimeError, match=r"cannot resume from .*step-2: ValueError: " + message):
        run_translation([*argv, "--resume"])
    assert_untouched(folder)


def test_non_finite_weights_in_a_checkpoint_are_refused(run_copy, run_translation):
    folder, argv = run_copy
    path = folder / "checkpoints" / "step-2" / "model.safetensors"
    weights = safetensors.torch.load_file(path)
    name = sorted(weights)[0]
    weights[name] = weights[name] * float("nan")
    safetensors.torch.save_file(weights, path, metadata={"format": "pt"})
    with pytest.raises(RuntimeError, match=rf"model\.safetensors: {re.escape(name)} holds NaN or inf"):
        run_translation([*argv, "--resume"])


def test_a_checkpoint_that_is_a_link_is_refused_and_what_it_points_to_is_left_alone(run_copy, tmp_path,
                                                                                    run_translation):
    folder, argv = run_copy
    checkpoint, elsewhere = folder / "checkpoints" / "step-2", tmp_path / "elsewhere"
    shutil.move(checkpoint, elsewhere)
    checkpoint.symlink_to(elsewhere)
    with pytest.raises(RuntimeError, match=r"step-2 is a symbolic link \(to .*elsewhere\): a run reads, averages and "
                                           r"deletes its checkpoints.*cp -rL"):
        run_translation([*argv, "--resume"])
    assert (elsewhere / "model.safetensors").is_file() and checkpoint.is_symlink()
    assert (folder / "final" / "config.json").read_text() == "{}"

    # a file of the checkpoint that is a link (a pipe would be no better: reading it never ends)
    checkpoint.unlink()
    shutil.copytree(elsewhere, checkpoint)
    (checkpoint / "progress.json").unlink()
    (checkpoint / "progress.json").symlink_to(elsewhere / "progress.json")
    with pytest.raises(RuntimeError, match=r"step-2: progress\.json is a symbolic link \(to .*elsewhere/progress\.json"
                                           r"\), where a checkpoint holds plain files only"):
        run_translation([*argv, "--resume"])
    assert_untouched(folder)


# ------------------------------------------------------------------------------------------- one run per folder


# A run of train_translation that holds its folder: it stops where it would read the data, until told to go on.
HOLDING_RUN = """
import sys
from vanilla_transformer.scripts import train_translation

def hold(*args, **kwargs):
    print("holding", flush=True)
    sys.stdin.read()
    raise SystemExit(3)

train_translation.load_parallel = hold
sys.exit(train_translation.main(sys.argv[1:]))
"""


def test_a_second_run_on_a_folder_in_use_refuses_and_a_stale_lock_is_taken_over(
        tmp_path, run_translation, translation_args, write_translation_corpus):
    corpus = write_translation_corpus(tmp_path / "data")
    folder = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLDING_RUN,
                               *translation_args(corpus, folder, "--max_steps", "2", "--seed", "1")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        assert "holding\n" in iter(holder.stdout.readline, ""), holder.stderr.read()  # after the engine line
        assert json.loads((folder / ".lock").read_text())["pid"] == holder.pid
        before = sorted(p.name for p in folder.iterdir())
        with pytest.raises(RuntimeError, match=rf"--output_dir .*run is in use by another run: '-c .*' \(pid "
                                               rf"{holder.pid} on {re.escape(socket.gethostname())}, started [\d :-]+"
                                               rf"\)\. Two runs in one folder would mix .* kill {holder.pid}\)"):
            run_translation(translation_args(corpus, folder, "--max_steps", "2", "--seed", "2"))
        assert sorted(p.name for p in folder.iterdir()) == before  # the second run wrote and removed nothing
    finally:
        holder.kill()  # kill -9: its lock stays behind
        holder.communicate()
    assert json.loads((folder / ".lock").read_text())["pid"] == holder.pid
    with pytest.warns(run_lock.StaleLockWarning, match=rf"took over the lock of a run that is no longer running, "
                                                       rf"'-c .*' \(pid {holder.pid} on "):
        outcome = run_translation(translation_args(corpus, folder, "--max_steps", "2", "--seed", "2"))
    assert outcome.completed and not (folder / ".lock").exists()  # released at the end
    assert json.loads((folder / "final" / "training_args.json").read_text())["seed"] == 2


def test_a_lock_of_another_machine_is_never_taken_over(tmp_path, run_translation, translation_args,
                                                       write_translation_corpus):
    corpus = write_translation_corpus(tmp_path / "data")
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / ".lock").write_text(json.dumps({"host": "node-17", "pid": 4242, "started": "2030-01-01 00:00:00",
                                              "command": "train-translation --seed 1"}))
    with pytest.raises(RuntimeError, match=r"in use by another run: 'train-translation --seed 1' \(pid 4242 on node-17"
                                           r".*If you are sure it no longer runs \(its machine crashed\), delete "
                                           r".*run/\.lock and start again"):
        run_translation(translation_args(corpus, folder, "--max_steps", "1"))
    (folder / ".lock").write_text("")  # not a lock of ours: never taken over either
    with pytest.raises(RuntimeError, match=r"its lock .*\.lock cannot be read .* delete .*\.lock and start again"):
        run_translation(translation_args(corpus, folder, "--max_steps", "1"))


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory, finetune_tokenizer, tiny_bert_config):
    folder = tmp_path_factory.mktemp("bert") / "mlm"
    return save_for_hub(VanillaBertForMaskedLM(tiny_bert_config(vocab_size=len(finetune_tokenizer))), folder,
                        finetune_tokenizer)


@pytest.fixture
def finetune_argv(tmp_path, bert_folder, finetune_rows, finetune_args):
    train = tmp_path / "train.tsv"
    train.write_text("sentence\tlabel\n" + "".join(f"{text}\t{label}\n" for text, label in finetune_rows))
    return ["--model_name_or_path", str(bert_folder), "--max_seq_length", "16",
            *finetune_args(tmp_path / "out", train_file=train)]


def test_a_fine_tune_refuses_a_folder_another_run_holds(tmp_path, finetune_argv):
    folder = tmp_path / "out"
    folder.mkdir()
    code = ("import sys; from vanilla_transformer.scripts.training import run_lock; run_lock.acquire(sys.argv[1]); "
            "print('holding', flush=True); sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "holding\n"
        with pytest.raises(RuntimeError, match=rf"--output_dir .*out is in use by another run: .*pid {holder.pid}"):
            finetune_classification.run(finetune_argv)
        assert [p.name for p in folder.iterdir()] == [".lock"]
    finally:
        holder.communicate("")  # it ends, releasing its lock
    assert not (folder / ".lock").exists()
    results = finetune_classification.run(finetune_argv)
    assert "train" in results and not (folder / ".lock").exists()


# ------------------------------------------------------------------------------- the final folder, whole or absent


def interrupt_after_writing(save):
    """`save_whole_for_hub` that writes the model, then stops as Ctrl-C would (before its other files)."""
    def cut(model, folder, tokenizer, weights):
        save(model, folder, tokenizer, weights)
        assert (Path(folder) / "model.safetensors").is_file()
        raise KeyboardInterrupt

    return cut


def full_disk(model, folder, tokenizer, weights):
    (Path(folder) / "config.json").write_text("{")
    raise OSError(28, "No space left on device")


@pytest.mark.parametrize("fault", ["ctrl-c", "full disk"])
def test_a_final_save_cut_short_leaves_no_half_folder_and_resume_writes_it(
        tmp_path, monkeypatch, capsys, run_translation, translation_args, write_translation_corpus, fault):
    corpus = write_translation_corpus(tmp_path / "data")
    folder = tmp_path / "run"
    argv = translation_args(corpus, folder, "--max_steps", "2", "--length_penalties", "1.0")
    with monkeypatch.context() as patch:
        if fault == "ctrl-c":
            patch.setattr(run_folder, "save_whole_for_hub", interrupt_after_writing(run_folder.save_whole_for_hub))
            assert train_translation.main(argv) == 130
            assert re.search(r"interrupted while writing .*run/final: nothing of it was kept; the trained weights "
                             r"are in .*step-2: run the same command with --resume to write final/",
                             capsys.readouterr().out)
        else:
            patch.setattr(run_folder, "save_whole_for_hub", full_disk)
            with pytest.raises(RuntimeError, match=r"could not write .*final \(OSError: \[Errno 28\] No space left "
                                                   r"on device\)\. Is the disk full\? Nothing of it was kept; the "
                                                   r"trained weights are in .*step-2.*--resume to write final/"):
                run_translation(argv)
    assert not (folder / "final").exists() and not list(folder.glob(".partial-*"))
    assert not (folder / ".lock").exists()
    outcome = run_translation([*argv, "--resume"])
    assert outcome.completed
    assert {"config.json", "model.safetensors", "tokenizer.json", "training_args.json"} <= {
        p.name for p in (folder / "final").iterdir()}
    assert not list(folder.glob(".partial-*"))


def test_ctrl_c_while_the_fine_tuned_model_is_written_keeps_none_of_it(tmp_path, monkeypatch, caplog, finetune_argv):
    folder = tmp_path / "out"
    with monkeypatch.context() as patch:
        patch.setattr(finetuning_trainer, "save_whole_for_hub",
                      interrupt_after_writing(finetuning_trainer.save_whole_for_hub))
        assert finetune_classification.main(finetune_argv) == 130
    assert re.search(r"interrupted while writing the fine-tuned model: nothing of it was kept in .*out; the trained "
                     r"weights are in .*checkpoint-3: run the same command with --resume", caplog.text)
    names = {p.name for p in folder.iterdir()}
    assert not names & {"config.json", "model.safetensors", "results.json"}, names
    assert "checkpoint-3" in names and not [name for name in names if name.startswith((".partial", ".lock"))]
    results = finetune_classification.run([*finetune_argv, "--resume"])
    assert "train" in results and {"config.json", "model.safetensors", "results.json"} <= {
        p.name for p in folder.iterdir()}
    assert not list(folder.glob("checkpoint-*")) and not list(folder.glob(".partial*"))


def test_a_changed_trainer_checkpoint_is_refused(tmp_path, monkeypatch, finetune_argv):
    """Trainer's checkpoints too: a global step that is not the folder's, or a checkpoint that is a link."""
    folder = tmp_path / "out"
    with monkeypatch.context() as patch:  # a run whose model was not written: its checkpoint-3 is what resumes
        patch.setattr(finetuning_trainer, "save_whole_for_hub", full_disk)
        with pytest.raises((OSError, RuntimeError), match="No space left on device"):
            finetune_classification.run(finetune_argv)
    state = folder / "checkpoint-3" / "trainer_state.json"
    original = state.read_text()
    state.write_text(json.dumps({**json.loads(original), "global_step": 10**18}))
    with pytest.raises(RuntimeError, match=r"checkpoint-3/trainer_state\.json, field 'global_step': 10+, where the "
                                           r"checkpoint's name says 3\. The file was changed"):
        finetune_classification.run([*finetune_argv, "--resume"])
    state.write_text(original)
    elsewhere = tmp_path / "elsewhere"
    shutil.move(folder / "checkpoint-3", elsewhere)
    (folder / "checkpoint-3").symlink_to(elsewhere)
    with pytest.raises(RuntimeError, match=r"checkpoint-3 is a symbolic link \(to .*elsewhere\)"):
        finetune_classification.run([*finetune_argv, "--resume"])
    assert (elsewhere / "trainer_state.json").is_file()
