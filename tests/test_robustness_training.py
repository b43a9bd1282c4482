"""Bad inputs and faults against the training scripts (train_translation.py, pretrain_mlm.py, train_tokenizer.py)
and their library (vanilla_transformer.scripts.training): each gets a clear error naming the argument, file,
line or folder and the fix, or a warning with counts; no work is lost; no checkpoint file is trusted to be data
unless it is read as data (a pickle payload in any file of a checkpoint runs nothing).

Errors are caught here by their base classes (ValueError, RuntimeError) and matched on their messages."""

import gzip
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch
from transformers import AutoTokenizer

from vanilla_transformer.scripts.training import mlm_data
from vanilla_transformer.scripts import pretrain_mlm, train_tokenizer, train_translation
from vanilla_transformer.tokenization import train_wordpiece_tokenizer
from vanilla_transformer.scripts.training import checkpoints, loop, optimization
from vanilla_transformer.scripts.training.translation_data import CorpusArguments, load_parallel

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


class DataWasRead(Exception):
    """Raised by a stand-in for a script's data loading: an error before it came before any data was read."""


class Payload:
    """Unpickling this creates the marker file: code run by a checkpoint file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def write_payload(path: Path, marker: Path) -> None:
    torch.save({"state": Payload(marker)}, path)  # what torch.load(weights_only=False) would unpickle


@pytest.fixture(scope="module")
def stopped_translation(tmp_path_factory, run_translation, translation_args, write_translation_corpus):
    """A translation run stopped after 2 of 4 steps (checkpoint step-2), learning rate 3e-3."""
    root = tmp_path_factory.mktemp("stopped")
    corpus = write_translation_corpus(root / "data")
    argv = translation_args(corpus, root / "run", "--max_steps", "4", "--save_steps", "2", "--length_penalties", "1.0")
    outcome = run_translation([*argv, "--max_steps_this_run", "2"])
    assert not outcome.completed and outcome.checkpoint.name == "step-2"
    return corpus, root / "run", argv


@pytest.fixture
def stopped_copy(stopped_translation, tmp_path):
    """A copy of the stopped run to resume (or break) in this test, with its arguments pointing at it."""
    corpus, folder, argv = stopped_translation
    copy = tmp_path / "run"
    shutil.copytree(folder, copy)
    argv = [str(copy) if value == str(folder) else value for value in argv]
    return corpus, copy, argv


# ---------------------------------------------------------------------------------------- hostile checkpoints


def test_a_payload_in_any_checkpoint_file_runs_nothing_on_resume(stopped_copy, tmp_path, run_translation):
    _, folder, argv = stopped_copy
    checkpoint = folder / "checkpoints" / "step-2"
    marker = tmp_path / "payload-ran"
    # Each file of the checkpoint in turn replaced by a pickle payload: refused with a clear error, nothing runs.
    for path in sorted(checkpoint.iterdir()):
        original = path.read_bytes()
        write_payload(path, marker)
        try:
            run_translation([*argv, "--resume"])
            error = None
        except Exception as raised:
            error = raised
        assert not marker.exists(), f"resuming ran the code in {path.name}"
        assert isinstance(error, RuntimeError) and re.search(r"cannot resume from .*step-2.*(corrupt|Error)",
                                                             str(error)), (path.name, error)
        path.write_bytes(original)
    # The pickle files accelerate's load_state reads, planted beside the data files: never opened.
    for name in ("random_states_0.pkl", "custom_checkpoint_0.pkl", "optimizer.bin", "scheduler.bin", "scaler.pt",
                 "pytorch_model.bin"):
        write_payload(checkpoint / name, marker)
    outcome = run_translation([*argv, "--resume", "--max_steps_this_run", "1"])
    assert outcome.global_step == 3 and not marker.exists()

    # A checkpoint of the pickle format alone (accelerate's save_state): refused, naming the reason, nothing runs.
    legacy = folder / "checkpoints" / "step-9"
    legacy.mkdir()
    shutil.copy(checkpoint / "model.safetensors", legacy)
    for name in ("random_states_0.pkl", "custom_checkpoint_0.pkl", "optimizer.bin", "scheduler.bin"):
        write_payload(legacy / name, marker)
    with pytest.raises(RuntimeError, match=r"step-9: it was written by an earlier version .* unpickling runs"):
        run_translation([*argv, "--resume"])
    assert not marker.exists()


def test_checkpoint_code_reads_no_pickle():
    """Checkpoints are data: no torch.load without weights_only=True, no accelerate save_state/load_state (which
    pickle the RNG state and registered objects), no pickle module, in the training scripts."""
    names = ["train_translation.py", "pretrain_mlm.py", "train_tokenizer.py", "main.py"]
    names += [f"training/{path.name}" for path in (SCRIPTS / "training").glob("*.py")]
    assert "training/checkpoints.py" in names and "training/loop.py" in names
    for name in names:
        source = (SCRIPTS / name).read_text()
        for forbidden in ("weights_only=False", "import pickle", "save_state(", "load_state(",
                          "register_for_checkpointing", "torch.load("):
            assert forbidden not in source, f"{name}: {forbidden}"


def test_the_checkpoint_state_files_round_trip_as_data(tmp_path):
    optimizer = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=1e-3, betas=(0.9, 0.98))
    optimizer.zero_grad()
    sum(p.sum() for group in optimizer.param_groups for p in group["params"]).backward()
    optimizer.step()
    state = {"optimizer": optimizer.state_dict(), "rng": checkpoints._rng_state(), "none": None, "nan": float("nan")}
    checkpoints.save_state_file(tmp_path / "s.safetensors", state)
    loaded = checkpoints.load_state_file(tmp_path / "s.safetensors")
    assert loaded["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.98)  # a tuple again
    assert loaded["optimizer"]["state"].keys() == {0, 1}  # int keys again
    for key in ("exp_avg", "exp_avg_sq", "step"):
        assert torch.equal(loaded["optimizer"]["state"][0][key], state["optimizer"]["state"][0][key])
    assert loaded["rng"]["python"] == state["rng"]["python"] and loaded["none"] is None
    assert (loaded["rng"]["numpy"][1] == state["rng"]["numpy"][1]).all()


# ----------------------------------------------------------------------------------------- resume and folders


def test_resume_refuses_a_changed_learning_rate_before_reading_data_and_records_what_ran(
        stopped_copy, monkeypatch, run_translation):
    corpus, folder, argv = stopped_copy
    recorded = json.loads((folder / "training_args.json").read_text())
    assert recorded["learning_rate"] == 3e-3

    def read_data(*args, **kwargs):
        raise DataWasRead

    with monkeypatch.context() as patch:
        patch.setattr(train_translation, "load_parallel", read_data)
        changed = [*argv, "--resume", "--learning_rate", "1e-3", "--seed", "5"]
        with pytest.raises(RuntimeError, match=r"--learning_rate: checkpoint 0.003, now 0.001; --seed: checkpoint 0, "
                                               r"now 5.*Resume with the checkpoint's values"):
            run_translation(changed)
        with pytest.raises(ValueError, match=r"--max_steps 1: the checkpoint .*step-2 is already at step 2"):
            run_translation([*argv, "--resume", "--max_steps", "1"])
    assert json.loads((folder / "training_args.json").read_text()) == recorded

    # evaluation settings may change: recorded as they ran
    outcome = run_translation([*argv, "--resume", "--num_beams", "1"])
    assert outcome.completed and outcome.global_step == 4
    assert json.loads((folder / "final" / "training_args.json").read_text())["num_beams"] == 1
    assert json.loads((folder / "final" / "generation_config.json").read_text())["num_beams"] == 1

    # a resumed run that trains on keeps the earlier final model aside, never beside the newer checkpoints
    run_translation([*argv, "--resume", "--max_steps", "6", "--max_steps_this_run", "1"])
    assert not (folder / "final").exists() and (folder / "final-step-4" / "model.safetensors").is_file()
    assert [p.name for p in (folder / "checkpoints").iterdir() if p.name == "step-5"] == ["step-5"]


def test_the_output_folder_is_checked_before_any_data_is_read(tmp_path, monkeypatch, run_translation, translation_args,
                                                              write_translation_corpus):
    corpus = write_translation_corpus(tmp_path / "data")

    def read_data(*args, **kwargs):
        raise DataWasRead

    monkeypatch.setattr(train_translation, "load_parallel", read_data)
    (tmp_path / "a_file").write_text("")
    with pytest.raises(ValueError, match=r"--output_dir .*a_file/run cannot be written"):
        run_translation(translation_args(corpus, tmp_path / "a_file" / "run", "--max_steps", "1"))
    earlier = tmp_path / "earlier"
    (earlier / "final").mkdir(parents=True)  # an earlier run's model, its checkpoints deleted
    with pytest.raises(RuntimeError, match=r"earlier holds final: the model of an earlier run"):
        run_translation(translation_args(corpus, earlier, "--max_steps", "1"))
    with pytest.raises(FileNotFoundError, match=r"no .*missing\.de or .*missing\.de\.gz"):
        run_translation([*translation_args(corpus, tmp_path / "out", "--max_steps", "1"), "--validation_split",
                         str(tmp_path / "missing")])
    with pytest.raises(ValueError, match=r"model arguments do not make a model: .*100 is not divisible by .* heads 8"):
        run_translation(translation_args(corpus, tmp_path / "out", "--max_steps", "1", "--d_model", "100",
                                         "--attention_heads", "8"))
    with pytest.raises(RuntimeError, match="--resume: no checkpoint"):
        run_translation(translation_args(corpus, tmp_path / "out", "--max_steps", "1", "--resume"))


def test_a_fresh_run_never_reuses_the_tokenizer_an_earlier_run_left(tmp_path, mlm_args, run_mlm, tiny_model_args,
                                                                    write_mlm_corpus):
    """A failed run left a tiny tokenizer (trained on one line) and a log in output_dir: the next run there trains its
    own tokenizer and says what it removed."""
    corpus = write_mlm_corpus(tmp_path / "data")
    output_dir = tmp_path / "run"
    stale = train_wordpiece_tokenizer(["the cat"], vocab_size=8000, show_progress=False)
    stale.save_pretrained(output_dir / "tokenizer")
    (output_dir / "log.jsonl").write_text('{"step": 1, "loss": 9.0}\n')
    with pytest.warns(UserWarning, match=r"removed the leftovers of an earlier run that saved no checkpoint "
                                         r"\(tokenizer, log.jsonl\)"):
        outcome = run_mlm(mlm_args(corpus, output_dir, *tiny_model_args(), "--max_steps", "2"))
    assert outcome.completed
    tokenizer = AutoTokenizer.from_pretrained(output_dir / "final")
    assert len(tokenizer) > len(stale) and tokenizer.unk_token_id not in tokenizer("the dog eats hay")["input_ids"]


def test_resume_with_another_tokenizer_of_the_same_size_is_refused(tmp_path, mlm_args, run_mlm, tiny_model_args,
                                                                   write_mlm_corpus):
    corpus = write_mlm_corpus(tmp_path / "data")
    argv = mlm_args(corpus, tmp_path / "run", *tiny_model_args(), "--max_steps", "4", "--save_steps", "2")
    run_mlm([*argv, "--max_steps_this_run", "2"])
    path = tmp_path / "run" / "tokenizer" / "tokenizer.json"
    definition = json.loads(path.read_text())
    vocab = definition["model"]["vocab"]
    first, second = sorted(token for token in vocab if token.isalpha())[:2]
    vocab[first], vocab[second] = vocab[second], vocab[first]  # the same size, other ids
    path.write_text(json.dumps(definition))
    with pytest.raises(RuntimeError, match=r"cannot resume from .*step-2.*tokenizer: checkpoint '\w+', now '\w+'"):
        run_mlm([*argv, "--resume"])


def test_a_full_disk_while_checkpointing_keeps_the_earlier_checkpoint(tmp_path, monkeypatch, run_translation,
                                                                      translation_args, write_translation_corpus):
    corpus = write_translation_corpus(tmp_path / "data")
    argv = translation_args(corpus, tmp_path / "run", "--max_steps", "4", "--save_steps", "2")

    def full_disk(save):
        def save_or_fail(obj, path, *args, **kwargs):
            if "step-4" in str(path):
                raise RuntimeError("basic_ios::clear: iostream error")  # what torch.save says on a full disk
            return save(obj, path, *args, **kwargs)
        return save_or_fail

    with monkeypatch.context() as patch:
        patch.setattr(safetensors.torch, "save_file", full_disk(safetensors.torch.save_file))
        patch.setattr(torch, "save", full_disk(torch.save))
        with pytest.raises(RuntimeError, match=r"could not write the checkpoint .*step-4 \(RuntimeError: basic_ios.*"
                                               r"Is the disk full\? The earlier checkpoint .*step-2 is intact"):
            run_translation(argv)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-2"]  # no partial folder
    outcome = run_translation([*argv, "--resume", "--max_steps_this_run", "1"])
    assert outcome.global_step == 3


# ---------------------------------------------------------------------------------------------- bad arguments


TRANSLATION_ARGUMENTS = [
    (["--learning_rate", "0"], r"--learning_rate must be a number above 0, got 0"),
    (["--learning_rate", "nan"], r"--learning_rate must be a number above 0"),
    (["--max_steps", "0"], r"--max_steps must be at least 1, got 0"),
    (["--num_epochs", "0"], r"--num_epochs must be at least 1, got 0"),
    (["--max_train_minutes", "-1"], r"--max_train_minutes must be a number above 0"),
    (["--max_steps_this_run", "0"], r"--max_steps_this_run must be at least 1"),
    (["--eval_steps", "0"], r"--eval_steps must be at least 1"),
    (["--adam_beta2", "1.0"], r"--adam_beta2 must be at least 0 and below 1"),
    (["--dropout", "1.5"], r"--dropout must be at least 0 and below 1, got 1.5"),
    (["--label_smoothing", "1"], r"--label_smoothing must be at least 0 and below 1"),
    (["--max_tokens", "16"], r"--max_tokens 16 is below --max_length 24"),
    (["--vocab_size", "3"], r"--vocab_size 3: the joint BPE has 4 special tokens"),
    (["--lr_factor", "0"], r"--lr_factor must be a number above 0"),
]


@pytest.mark.parametrize("extra,message", TRANSLATION_ARGUMENTS, ids=[a[0] for a, _ in TRANSLATION_ARGUMENTS])
def test_translation_arguments_that_cannot_work_are_refused(tmp_path, extra, message, translation_args):
    argv = translation_args(tmp_path, tmp_path / "out", "--max_steps", "1")
    with pytest.raises(ValueError, match=message):
        train_translation.parse_args([*argv, *extra])


@pytest.mark.parametrize("extra,message", [
    (["--mlm_probability", "0"], r"--mlm_probability 0.0: .* must be above 0"),
    (["--mlm_probability", "1.5"], r"--mlm_probability 1.5"),
    (["--batch_size", "0"], r"--batch_size must be at least 1"),
    (["--vocab_size", "5"], r"--vocab_size 5: the WordPiece has 5 special tokens"),
])
def test_pretraining_arguments_that_cannot_work_are_refused(tmp_path, extra, message, mlm_args):
    with pytest.raises(ValueError, match=message):
        pretrain_mlm.parse_args([*mlm_args(tmp_path, tmp_path / "out", "--max_steps", "1"), *extra])


def test_a_too_long_block_is_refused_before_any_data_is_read(tmp_path, monkeypatch, mlm_args, run_mlm,
                                                             write_mlm_corpus):
    def read_data(*args, **kwargs):
        raise DataWasRead

    monkeypatch.setattr(pretrain_mlm, "load_texts", read_data)
    corpus = write_mlm_corpus(tmp_path / "data")
    with pytest.raises(ValueError, match=r"--block_size 1024 exceeds the model's max_position_embeddings \(512\)"):
        run_mlm(mlm_args(corpus, tmp_path / "out", "--max_steps", "1", "--block_size", "1024"))


# ---------------------------------------------------------------------------------------------------- bad files


def _gzip(text: str) -> bytes:
    return gzip.compress(text.encode())


# (file name -> bytes, the split, the message)
PARALLEL_FILES = {
    "not UTF-8": ({"a.de": b"gut\n\xe4rger\n", "a.en": b"good\nanger\n"}, "a",
                  r"a\.de, line 2: byte 0xe4 \(byte 1 of the line\) is not UTF-8"),
    "truncated gz": ({"a.de.gz": _gzip("eins\nzwei\n" * 50)[:-20], "a.en": b"one\ntwo\n" * 50}, "a",
                     r"a\.de\.gz: cannot decompress it after line \d+ .* truncated or corrupt"),
    "empty files": ({"a.de": b"", "a.en": b""}, "a", r"a\.de and .*a\.en are empty"),
    "ragged TSV": ({"b.tsv": b"de\ten\nHund\tdog\nKatze\tcat\tcats\n"}, "b.tsv",
                   r"b\.tsv, line 3: 3 tab-separated fields, but the header \(line 1\) names 2 columns"),
    "TSV without pairs": ({"b.tsv": b"de\ten\n"}, "b.tsv", r"b\.tsv: a header line and no pairs"),
    "TSV without the column": ({"b.tsv": b"de\tfr\nHund\tchien\n"}, "b.tsv",
                               r"b\.tsv \(line 1, the header\): no target column 'en'"),
    "JSON number": ({"c.jsonl": b'{"de": "eins", "en": "one"}\n{"de": 5, "en": "five"}\n'}, "c.jsonl",
                    r"c\.jsonl, line 2: 'de' is a int \(5\), not a string"),
    "JSON broken": ({"c.jsonl": b'{"de": "eins", "en": "one"}\n{"de": "zwei", "en": \n'}, "c.jsonl",
                    r"c\.jsonl, line 2: not valid JSON"),
    "JSON list row": ({"c.jsonl": b'["eins", "one"]\n'}, "c.jsonl", r"c\.jsonl, line 1: a JSON list, not an object"),
}


@pytest.mark.parametrize("case", list(PARALLEL_FILES))
def test_bad_parallel_files_name_the_file_and_line(tmp_path, case):
    files, split, message = PARALLEL_FILES[case]
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    with pytest.raises(ValueError, match=message):
        load_parallel(str(tmp_path / split), CorpusArguments())


@pytest.mark.parametrize("content,message", [
    (b"", r"train\.txt is empty"),
    (b"\n  \n\t\n", r"train\.txt: no text \(3 lines, all blank\)"),
    (b"the cat\n\xff\xfe\n", r"train\.txt, line 2: byte 0xff"),
])
def test_bad_text_files_for_pretraining_name_the_file(tmp_path, content, message, mlm_args, write_mlm_corpus):
    corpus = write_mlm_corpus(tmp_path / "data")
    (corpus / "train.txt").write_bytes(content)
    args, _ = pretrain_mlm.parse_args(mlm_args(corpus, tmp_path / "out", "--max_steps", "1"))
    with pytest.raises(ValueError, match=message):
        mlm_data.load_texts(args)


def test_a_one_line_corpus_is_refused_not_trained_on(tmp_path, mlm_args, run_mlm, tiny_model_args, write_mlm_corpus):
    """A tokenizer trained on one line turns the validation text into [UNK]: refused before training, naming the
    counts and the fix."""
    corpus = write_mlm_corpus(tmp_path / "data")
    (corpus / "train.txt").write_text("ok .\n")
    with pytest.warns(UserWarning, match=r"the tokenizer has \d+ tokens, not --vocab_size 100"), \
            pytest.raises(ValueError, match=r"not made for this text: .* of the .* tokens of the first 40 texts of "
                                            r".*val\.txt \(\d+\.\d%\) become \[UNK\]\. Its training text, .*train\.txt "
                                            r"\(1 documents\), is too small"):
        run_mlm(mlm_args(corpus, tmp_path / "out", *tiny_model_args(), "--max_steps", "2"))
    assert not (tmp_path / "out" / "final").exists()


def test_train_tokenizer_refuses_empty_files_and_counts_a_small_vocabulary(tmp_path):
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(ValueError, match=r"empty\.txt: no text"):
        train_tokenizer.run(train_tokenizer.TokenizerArguments(output_dir=str(tmp_path / "t"),
                                                                files=[str(tmp_path / "empty.txt")]))
    (tmp_path / "one.txt").write_text("ein Hund\n")
    with pytest.warns(UserWarning, match=r"has \d+ tokens, not --vocab_size 8,000: its 1 texts"):
        train_tokenizer.run(train_tokenizer.TokenizerArguments(output_dir=str(tmp_path / "t"),
                                                                files=[str(tmp_path / "one.txt")]))


def test_dropped_pairs_are_counted_in_a_warning(tmp_path, run_translation, translation_args, write_translation_corpus):
    corpus = write_translation_corpus(tmp_path / "data")
    with gzip.open(corpus / "train.de.gz", "at") as de, gzip.open(corpus / "train.en.gz", "at") as en:
        de.write("\n" + "sehr " * 40 + "lang\n")
        en.write("empty source\n" + "very " * 40 + "long\n")
    with pytest.warns(UserWarning, match=r"train\): dropped 3 of 50 pairs: 1 with an empty side, 2 longer than "
                                         r"--max_length 24 tokens"):
        run_translation(translation_args(corpus, tmp_path / "run", "--max_steps", "1", "--length_penalties", "1.0"))


# -------------------------------------------------------------------------------------- nan is not a success


def _tiny_task(loss, evaluate=None):
    return loop.TrainingTask(
        dataset=[{"x": torch.ones(2)} for _ in range(4)],
        collate=lambda rows: {"x": torch.stack([r["x"] for r in rows]), "labels": torch.zeros(len(rows)),
                              "attention_mask": torch.ones(len(rows))},
        epoch_batches=lambda epoch: [[0, 1], [2, 3]],
        loss=loss,
        evaluate=evaluate,
    )


@pytest.mark.parametrize("failure", ["training loss", "validation metric"])
def test_a_nan_loss_or_metric_stops_training_without_saving_it(tmp_path, failure):
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(2, 1)
    args = loop.LoopArguments(output_dir=str(tmp_path), max_steps=4, save_steps=2, logging_steps=1, eval_steps=2,
                              learning_rate=1e-3)
    optimizer, scheduler = optimization.loop_optimizer(model, args, 1e-3)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)

    def loss(model, batch, num_items):
        value = model(batch["x"]).sum() / num_items
        return value * float("nan") if failure == "training loss" else value

    evaluate = (lambda model: {"val_loss": float("nan")}) if failure == "validation metric" else None
    with pytest.raises(RuntimeError, match=r"nan"):
        loop.train(accelerator, model, optimizer, scheduler, _tiny_task(loss, evaluate), args)
    assert not list((tmp_path / "checkpoints").glob("step-*"))  # nothing of the broken model was saved


def test_a_script_prints_a_refusal_without_a_traceback(tmp_path, mlm_args, write_mlm_corpus):
    corpus = write_mlm_corpus(tmp_path / "data")
    (corpus / "val.txt").write_text("\n\n")
    process = subprocess.run(
        [sys.executable, str(SCRIPTS / "pretrain_mlm.py"), *mlm_args(corpus, tmp_path / "out", "--max_steps", "1")],
        capture_output=True, text=True, timeout=120,
    )
    assert process.returncode == 1, process.stderr[-3000:]
    assert "Traceback" not in process.stderr
    assert "error: " in process.stderr and "val.txt: no text (2 lines, all blank)" in process.stderr
