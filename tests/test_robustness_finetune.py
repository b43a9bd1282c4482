"""Bad inputs and faults against scripts/finetune_classification.py, evaluate_translation.py, visualize_attention.py
and publish.py (issue 13): each gets a clear error naming the file, line or option and the fix (before the expensive
work), or a warning with counts; no work is lost; no file is trusted that should not be.

- labels: classes come from the training split; unlabelled validation/test rows (-1, empty) are predicted, not
  scored; any other unknown label is an error;
- bad files, bad arguments, bad model folders: the message names the problem and the fix;
- work: --output_dir is never the model folder; a fine-tune interrupted (Ctrl-C, or killed) resumes with --resume
  to the weights of an uninterrupted run; checkpoints hold no pickle of ours; a diverged run is not reported;
- code: a folder's own .py files run only with --trust_remote_code.
Tiny models and a few rows: each run takes about a second."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch
from huggingface_hub import ModelCard
from transformers import BertConfig, BertForMaskedLM, TrainerCallback

from vanilla_transformer.modeling import VanillaBertForMaskedLM, VanillaTransformerForConditionalGeneration
from vanilla_transformer.modeling.hub import save_for_hub
from vanilla_transformer.scripts import evaluate_translation, finetune_classification, publish, visualize_attention
from vanilla_transformer.tokenization import special_token_ids, train_bpe_tokenizer
from vanilla_transformer.scripts.training.precision import ASSUME_CPU_BF16, CpuBf16Warning

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
PAIRS = [("ein kleiner Hund läuft", "a small dog runs"), ("zwei Katzen schlafen", "two cats sleep")] * 3


def write_tsv(path, rows, header="sentence\tlabel"):
    path.write_text("\n".join([header] + [f"{text}\t{label}" for text, label in rows]) + "\n")
    return path


def digest(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory, finetune_tokenizer, tiny_bert_config):
    """A Hub-ready MLM checkpoint with dropout on: a resumed run matches only if the RNG state is restored too."""
    folder = tmp_path_factory.mktemp("bert") / "mlm"
    config = tiny_bert_config(vocab_size=len(finetune_tokenizer), hidden_dropout_prob=0.1,
                              attention_probs_dropout_prob=0.1)
    return save_for_hub(VanillaBertForMaskedLM(config), folder, finetune_tokenizer)


@pytest.fixture(scope="module")
def translation_folder(tmp_path_factory, tiny_transformer_config):
    tokenizer = train_bpe_tokenizer([s for pair in PAIRS for s in pair], vocab_size=60, min_frequency=1,
                                    show_progress=False)
    model = VanillaTransformerForConditionalGeneration(tiny_transformer_config(**special_token_ids(tokenizer)))
    model.generation_config.update(max_new_tokens=6, num_beams=1)
    return save_for_hub(model.eval(), tmp_path_factory.mktemp("translation") / "model", tokenizer)


@pytest.fixture(scope="module")
def train_tsv(tmp_path_factory, finetune_rows):
    return write_tsv(tmp_path_factory.mktemp("data") / "train.tsv", finetune_rows)


@pytest.fixture(scope="module")
def finetune(finetune_args):
    """finetune(folder, output_dir, *extra, **files) -> finetune_classification's results (its errors raised)."""

    def _finetune(folder, output_dir, *extra, **files):
        return finetune_classification.run(["--model_name_or_path", str(folder), "--max_seq_length", "16",
                                            *finetune_args(output_dir, **files), *extra])

    return _finetune


# ------------------------------------------------------------------------------------------------ labels


def test_classes_come_from_training_and_unlabelled_rows_are_predicted_not_scored(
        tmp_path, bert_folder, train_tsv, finetune, finetune_rows):
    """A GLUE-style test file (every label -1) and a validation file with some -1 rows: a binary model, binary F1
    on the labelled rows, predictions of every row, no test accuracy at all (not 0.0)."""
    validation = write_tsv(tmp_path / "dev.tsv",
                           [(t, -1 if i % 4 == 0 else y) for i, (t, y) in enumerate(finetune_rows)])
    test = write_tsv(tmp_path / "test.tsv", [(t, -1) for t, _ in finetune_rows])
    output = tmp_path / "out"
    results = finetune(bert_folder, output, train_file=train_tsv, validation_file=validation, test_file=test)

    config = json.loads((output / "config.json").read_text())
    assert config["id2label"] == {"0": "0", "1": "1"} and results["classes"] == ["0", "1"]
    assert results["test"]["test_rows"] == 16 and results["test"]["test_scored"] == 0
    assert not any(key.endswith(("accuracy", "f1", "loss")) for key in results["test"])
    lines = (output / "test_predictions.tsv").read_text().splitlines()
    assert lines[0] == "line\tlabel\tprediction" and len(lines) == 17
    assert all(row.split("\t")[1] == "" and row.split("\t")[2] in ("0", "1") for row in lines[1:])

    rows = [line.split("\t") for line in (output / "validation_predictions.tsv").read_text().splitlines()[1:]]
    scored = [(label, prediction) for _, label, prediction in rows if label]
    assert results["validation"]["validation_scored"] == len(scored) == 12
    assert results["validation"]["validation_accuracy"] == pytest.approx(sum(a == b for a, b in scored) / 12)
    true_positive = sum(a == b == "1" for a, b in scored)
    predicted, actual = sum(b == "1" for _, b in scored), sum(a == "1" for a, _ in scored)
    f1 = 2 * true_positive / (predicted + actual) if predicted + actual else 0.0
    assert results["validation"]["validation_f1"] == pytest.approx(f1)  # binary F1 of class "1", not macro


def test_a_label_that_is_not_a_training_class_is_an_error(tmp_path, bert_folder, train_tsv, finetune, finetune_rows):
    test = write_tsv(tmp_path / "test.tsv", [(t, 2 if i == 2 else y) for i, (t, y) in enumerate(finetune_rows)])
    with pytest.raises(ValueError, match=r"test\.tsv: 1 row\(s\) have a label that is not a class of the training "
                                         r"data .*'2' at line 4\); the classes are \['0', '1'\]"):
        finetune(bert_folder, tmp_path / "out", train_file=train_tsv, test_file=test)


def test_glue_from_the_hub_with_unlabelled_test_split(monkeypatch, tmp_path, bert_folder, finetune_args, finetune_rows):
    """GLUE's own test splits carry the ClassLabel id -1: predicted, not scored, and the classes are the names."""
    import datasets

    features = datasets.Features({"sentence": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["negative", "positive"])})
    glue = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"sentence": [t for t, _ in finetune_rows],
                                             "label": [y for _, y in finetune_rows]}, features=features),
        "test": datasets.Dataset.from_dict({"sentence": [t for t, _ in finetune_rows],
                                            "label": [-1] * len(finetune_rows)}, features=features),
    })
    monkeypatch.setattr(datasets, "load_dataset", lambda name, config=None: glue)
    output = tmp_path / "out"
    results = finetune_classification.run(["--model_name_or_path", str(bert_folder), "--dataset_name", "glue",
                                  "--dataset_config_name", "sst2", *finetune_args(output)])
    assert results["classes"] == ["negative", "positive"]
    assert results["test"]["test_scored"] == 0 and "test_accuracy" not in results["test"]
    lines = (output / "test_predictions.tsv").read_text().splitlines()
    assert lines[0] == "row\tlabel\tprediction" and lines[1].startswith("0\t\t") and len(lines) == 17


# -------------------------------------------------------------------------------------------- bad files

BAD_FILES = {
    "empty": ("train.tsv", b"", r"train\.tsv is empty: expected a header line"),
    "blank": ("train.tsv", b"\n  \n\n", r"train\.tsv is empty"),
    "header only": ("train.tsv", b"sentence\tlabel\n", r"train\.tsv has a header \(sentence, label\) but no rows"),
    "not UTF-8": ("train.tsv", b"sentence\tlabel\na fine film\t1\ncaf\xe9 noir\t0\n",
                  r"train\.tsv, line 3: byte 0xe9 \(byte 4 of the line\) is not UTF-8\. The file must be UTF-8 text"),
    "ragged TSV": ("train.tsv", b"sentence\tlabel\na fine film\t1\nbad\tfilm\t0\nok\n",
                   r"train\.tsv, line 3: 3 tab-separated fields, but the header \(line 1\) names 2 columns "
                   r"\['sentence', 'label'\]; 2 such rows: line 3 has 3, line 4 has 1\. A tab inside a text"),
    "ragged CSV": ("train.csv", b"sentence,label\na fine film,1\nbad, film,0\n",
                   r"train\.csv, line 3: 3 comma-separated fields, but the header \(line 1\) names 2 columns .* "
                   r"Quote the field"),
    "JSON line of the wrong type": ("train.jsonl", b'{"sentence": "a fine film", "label": 1}\n[1, 2]\n',
                                    r"train\.jsonl, line 2: a JSON list, not an object \(\[1, 2\]\)"),
    "invalid JSON line": ("train.jsonl", b'{"sentence": "a fine film", "label": 1}\n{"sentence": \n',
                          r"train\.jsonl, line 2: not valid JSON"),
    "text not a string": ("train.jsonl", b'{"sentence": "a fine film", "label": 1}\n{"sentence": 5, "label": 0}\n',
                          r"train\.jsonl: 1 row\(s\) of the wrong type: line 2: 'sentence' is 5, not text"),
    "label a list": ("train.jsonl", b'{"sentence": "a fine film", "label": [1]}\n{"sentence": "b", "label": 0}\n',
                     r"line 1: 'label' is \[1\] \(a list\), not a class"),
    "no text column": ("train.tsv", b"text\tlabel\na fine film\t1\n",
                       r"train\.tsv has no column 'sentence' \(--text_column\); its columns are \['text', 'label'\]"),
    "unlabelled training row": ("train.tsv", b"sentence\tlabel\na fine film\t1\na bad film\t\nfine\t0\n",
                                r"train\.tsv: 1 of 3 training rows have no label \(line 3\)"),
    "one class": ("train.tsv", b"sentence\tlabel\na fine film\t1\na good film\t1\n",
                  r"every training row has the label '1'; a classifier needs at least two classes"),
    "regression labels": ("train.tsv", b"sentence\tlabel\na fine film\t3.8\na bad film\t0.5\n",
                          r"the labels are real numbers \(0\.5, 3\.8, \.\.\.\): this script trains a classifier"),
    "unsupported type": ("train.txt", b"a fine film\n", r"train\.txt: unsupported data file type '\.txt'"),
}


@pytest.mark.parametrize("case", BAD_FILES, ids=list(BAD_FILES))
def test_a_bad_data_file_names_the_file_the_line_and_the_fix(case, tmp_path, bert_folder, finetune):
    name, content, message = BAD_FILES[case]
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ValueError, match=message):
        finetune(bert_folder, tmp_path / "out", train_file=tmp_path / name)


def test_a_missing_data_file_is_named(tmp_path, bert_folder, finetune):
    with pytest.raises(ValueError, match=r"--validation_file .*dev\.tsv: no such file"):
        finetune(bert_folder, tmp_path / "out", validation_file=tmp_path / "dev.tsv")


# ---------------------------------------------------------------------------------------- bad arguments

BAD_ARGUMENTS = {
    "zero epochs": (["--num_train_epochs", "0"], r"--num_train_epochs must be a positive number, got 0"),
    "negative learning rate": (["--learning_rate=-1e-4"], r"--learning_rate must be a positive number"),
    "zero batch size": (["--per_device_train_batch_size", "0"], r"--per_device_train_batch_size must be at least 1"),
    "zero training rows": (["--max_train_samples", "0"], r"--max_train_samples must be at least 1"),
    "longer than the model": (["--max_seq_length", "100"],
                              r"--max_seq_length 100 is longer than the model's max_position_embeddings 64"),
    "same column twice": (["--text_column", "label"], r"--text_column, --text_pair_column and --label_column must "
                                                      r"differ"),
    "unknown precision": (["--mixed_precision", "fp32"], r"--mixed_precision fp32: use no, bf16 or fp16"),
    "hub and files": (["--dataset_name", "glue"], r"give either --dataset_name or local files"),
}


@pytest.mark.parametrize("case", BAD_ARGUMENTS, ids=list(BAD_ARGUMENTS))
def test_a_bad_argument_is_refused_before_any_work(case, tmp_path, bert_folder, train_tsv, finetune):
    extra, message = BAD_ARGUMENTS[case]
    with pytest.raises(ValueError, match=message):
        finetune(bert_folder, tmp_path / "out", *extra, train_file=train_tsv)


# ------------------------------------------------------------------------------------- bad model folders


def make_folder(case: str, tmp_path, bert_folder, translation_folder):
    """A model folder that is wrong in one way."""
    folder = tmp_path / "model"
    if case == "missing":
        return tmp_path / "nope"
    if case == "a training output":  # the folder the training script was given, not its final/
        shutil.copytree(bert_folder, tmp_path / "run" / "final")
        (tmp_path / "run" / "log.jsonl").write_text("{}\n")
        return tmp_path / "run"
    if case == "a Hub id not in the cache":
        return "someone/not-in-the-cache"
    if case == "a translation model":
        return translation_folder
    shutil.copytree(bert_folder, folder)
    if case == "no weights":
        (folder / "model.safetensors").unlink()
    elif case == "truncated weights":
        (folder / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes()[:100])
    elif case == "no tokenizer":
        for name in ("tokenizer.json", "tokenizer_config.json"):
            (folder / name).unlink()
    elif case == "damaged config":
        (folder / "config.json").write_text('{"model_type": "vanilla_bert",\n  "hidden_size": }')
    elif case == "NaN weights in a Hugging Face BERT":  # (our own classes refuse them in from_pretrained)
        shutil.rmtree(folder)
        config = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=37, max_position_embeddings=64)
        bert = BertForMaskedLM(config)
        with torch.no_grad():
            bert.bert.embeddings.word_embeddings.weight[3, 0] = float("nan")  # a diverged run
        bert.save_pretrained(folder)
        shutil.copy(bert_folder / "tokenizer.json", folder)
        shutil.copy(bert_folder / "tokenizer_config.json", folder)
    elif case == "a file":
        return folder / "model.safetensors"
    return folder


BAD_FOLDERS = {
    "missing": r"--model_name_or_path .*nope: no such folder \(.* exists, but not nope\)",
    "a training output": r"run is not a model folder \(no config\.json\); did you mean .*run/final\?",
    "a Hub id not in the cache": r"someone/not-in-the-cache: no such local folder .*and not loadable as a Hub model "
                                 r"id \(HF_HUB_OFFLINE is set",
    "a translation model": r"holds a model of type 'vanilla_transformer'; this script needs a BERT or vanilla_bert",
    "no weights": r"has a config\.json but no weights",
    "truncated weights": r"model\.safetensors is not a readable safetensors file",
    "no tokenizer": r"has no tokenizer",
    "damaged config": r"config\.json line 2: not valid JSON",
    "NaN weights in a Hugging Face BERT": r"model has NaN or inf weights in 1 of .* tensors "
                                          r"\(bert\.embeddings\.embed_tokens\.weight\): the training that saved it "
                                          r"diverged",
    "a file": r"model\.safetensors is a file, not a model folder",
}


@pytest.mark.parametrize("case", BAD_FOLDERS, ids=list(BAD_FOLDERS))
def test_a_bad_model_folder_says_what_is_wrong(case, tmp_path, bert_folder, translation_folder, train_tsv, finetune):
    folder = make_folder(case, tmp_path, bert_folder, translation_folder)
    with pytest.raises(ValueError, match=BAD_FOLDERS[case]):
        finetune(folder, tmp_path / "out", train_file=train_tsv)


# ------------------------------------------------------------------------------------------ no work lost


def test_the_model_folder_is_never_the_output(tmp_path, bert_folder, train_tsv, finetune):
    folder = shutil.copytree(bert_folder, tmp_path / "mlm")
    before = digest(folder)
    with pytest.raises(ValueError, match=r"--output_dir .*mlm is the model folder .*: writing there would replace "
                                         r"the model it starts from"):
        finetune(folder, folder, train_file=train_tsv)
    assert digest(folder) == before

    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("keep me")
    with pytest.raises(RuntimeError, match=r"--output_dir .*notes is not empty: it holds other files \(todo\.txt\) "
                                           r"and is not a run of this script"):
        finetune(folder, other, train_file=train_tsv)


class StopAt(TrainerCallback):
    """Ctrl-C (SIGINT to this process) or a crash (an exception: the process dies without a word) after a step."""

    def __init__(self, step: int, how: str):
        self.step, self.how = step, how

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            if self.how == "ctrl-c":
                os.kill(os.getpid(), signal.SIGINT)
            else:
                raise RuntimeError("power cut")


def test_an_interrupted_fine_tune_resumes_to_the_uninterrupted_result(monkeypatch, tmp_path, bert_folder, train_tsv,
                                                                      finetune, finetune_args):
    """2 epochs of 3 steps, a checkpoint every 2 steps, dropout on. Ctrl-C after step 3 (an epoch's end) saves and
    stops; a crash after step 5 leaves the checkpoint of step 4 (mid-epoch). Both resume to the same weights."""
    settings = ["--num_train_epochs", "2", "--save_steps", "2"]
    finetune(bert_folder, tmp_path / "whole", *settings, train_file=train_tsv)
    whole = safetensors.torch.load_file(tmp_path / "whole" / "model.safetensors")

    script = finetune_classification
    build_trainer = script.build_trainer
    for how, step, resumed_from in (("ctrl-c", 3, "checkpoint-3"), ("crash", 5, "checkpoint-4")):
        output = tmp_path / how

        def interrupted(*args, **kwargs):
            trainer = build_trainer(*args, **kwargs)
            trainer.add_callback(StopAt(step, how))
            return trainer

        monkeypatch.setattr(script, "build_trainer", interrupted)
        argv = ["--model_name_or_path", str(bert_folder), "--max_seq_length", "16",
                *finetune_args(output, train_file=train_tsv), *settings]
        if how == "ctrl-c":
            assert script.run(argv)["interrupted_at_step"] == 3
        else:
            with pytest.raises(RuntimeError, match="power cut"):
                script.run(argv)
        monkeypatch.setattr(script, "build_trainer", build_trainer)
        assert (output / resumed_from / "trainer_state.json").is_file()
        assert not list(output.glob("checkpoint-*/training_args.bin"))  # no pickle of ours in a checkpoint
        assert not (output / "config.json").exists()

        with pytest.raises(RuntimeError, match=r"holds checkpoints of an interrupted run: add --resume"):
            script.run(argv)
        with pytest.raises(RuntimeError, match=r"with other settings \(--learning_rate: checkpoint 0\.0001, now "
                                               r"0\.0002\)"):
            script.run([*argv, "--resume", "--learning_rate", "2e-4"])
        results = script.run([*argv, "--resume"])
        resumed = safetensors.torch.load_file(output / "model.safetensors")
        assert resumed.keys() == whole.keys()
        for key in whole:
            assert torch.equal(resumed[key], whole[key]), (how, key)
        assert results["train"]["epoch"] == 2.0 and not list(output.glob("checkpoint-*"))  # complete: cleaned up
        with pytest.raises(RuntimeError, match=r"the run in .* has finished \(results\.json\); nothing to continue"):
            script.run([*argv, "--resume"])
        with pytest.raises(RuntimeError, match=r"holds a finished fine-tuning run, which this run would overwrite"):
            script.run(argv)


def test_resume_without_a_run_is_refused(tmp_path, bert_folder, train_tsv, finetune):
    with pytest.raises(RuntimeError, match=r"--resume: .*out holds no run of this script to continue \(no "
                                           r"finetune_args\.json\); drop --resume to start one"):
        finetune(bert_folder, tmp_path / "out", "--resume", train_file=train_tsv)


@pytest.mark.parametrize("every", [["--logging_steps", "1"], ["--logging_steps", "100", "--save_steps", "1"]],
                         ids=["loss logged every step", "a checkpoint every step"])
def test_a_diverged_run_is_an_error_not_a_result(every, tmp_path, bert_folder, train_tsv, finetune):
    """Seen in the logged loss (every step) or, logged rarely, in the weights of a checkpoint: the run stops, no model
    and no scores are written, and no checkpoint with NaN weights is left to resume from."""
    output = tmp_path / "out"
    with pytest.raises(RuntimeError, match=r"training diverged: the (loss|grad norm|weights) (is nan|hold NaN or inf) "
                                           r"at step \d+; nothing was saved after it \(no model, no scores\)\. "
                                           r"Lower --learning_rate \(it is 1000000\.0\)"):
        finetune(bert_folder, output, "--learning_rate", "1e6", *every, train_file=train_tsv, test_file=train_tsv)
    assert not (output / "results.json").exists() and not (output / "config.json").exists()
    for checkpoint in output.glob("checkpoint-*"):
        weights = safetensors.torch.load_file(checkpoint / "model.safetensors")
        assert all(torch.isfinite(tensor).all() for tensor in weights.values()), checkpoint


def test_bf16_from_accelerate_launch_on_a_cpu_without_it_trains_in_fp32_and_says_so(
    monkeypatch, tmp_path, bert_folder, train_tsv, fresh_accelerate_state, finetune_args
):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # what `accelerate launch --mixed_precision bf16` sets
    monkeypatch.setenv(ASSUME_CPU_BF16, "0")
    script = finetune_classification
    trainers = []
    build_trainer = script.build_trainer

    def kept(*args, **kwargs):
        trainers.append(build_trainer(*args, **kwargs))
        return trainers[-1]

    monkeypatch.setattr(script, "build_trainer", kept)
    with pytest.warns(CpuBf16Warning, match="Training in fp32 instead"):
        results = script.run(["--model_name_or_path", str(bert_folder), *finetune_args(tmp_path / "out",
                                                                                      train_file=train_tsv)])
    assert (results["args"]["mixed_precision"], results["args"]["requested_mixed_precision"]) == ("no", "bf16")
    assert trainers[0].accelerator.mixed_precision == "no"
    recorded = json.loads((tmp_path / "out" / "results.json").read_text())["args"]
    assert recorded["mixed_precision"] == "no"


# ------------------------------------------------------------------------------------ evaluate_translation


def evaluate(*argv):
    return evaluate_translation.run(*evaluate_translation.parse_args(list(argv)))


@pytest.fixture
def split_tsv(tmp_path):
    return write_tsv(tmp_path / "test.tsv", PAIRS, header="de\ten")


EVALUATION_CASES = {
    "output is a folder": (lambda tmp, model: ["--output_file", str(tmp)], r"--output_file .* is a folder; name a "
                                                                            r"file in it"),
    "output under a file": (lambda tmp, model: ["--output_file", str(tmp / "test.tsv" / "scores.json")],
                            r"test\.tsv is a file, so no folder can be made there"),
    "output over the model's config": (lambda tmp, model: ["--output_file", str(model / "config.json")],
                                       r"config\.json is a file of the model folder .*: writing it would damage the "
                                       r"model"),
    "a training output as model": (lambda tmp, model: ["--model_dir", str(model.parent)],
                                   r"is not a model folder \(no config\.json\); did you mean .*/model\?"),
    "a BERT folder as model": (lambda tmp, model: ["--model_dir", "BERT"],
                               r"holds a model of type 'vanilla_bert' \(an encoder\); this script needs a translation "
                               r"model folder"),
    "zero beams": (lambda tmp, model: ["--num_beams", "0"], r"--num_beams must be at least 1, got 0"),
}


@pytest.mark.parametrize("case", EVALUATION_CASES, ids=list(EVALUATION_CASES))
def test_evaluate_translation_checks_before_translating(case, monkeypatch, tmp_path, translation_folder, bert_folder,
                                                        split_tsv):
    def translate(*args, **kwargs):
        raise AssertionError("translated before the check")

    monkeypatch.setattr(evaluate_translation, "translate", translate)
    extra = EVALUATION_CASES[case][0](tmp_path, translation_folder)
    extra = [str(bert_folder) if value == "BERT" else value for value in extra]
    before = digest(translation_folder)
    with pytest.raises(ValueError, match=EVALUATION_CASES[case][1]):
        evaluate("--model_dir", str(translation_folder), "--split", str(split_tsv), "--output_file",
                 str(tmp_path / "scores.json"), *extra)
    assert digest(translation_folder) == before


# ----------------------------------------------------------------------------------- visualize_attention


def evil_folder(tmp_path, bert_folder):
    """A folder whose model type only its own code knows (auto_map); that code leaves a mark when it runs."""
    folder = shutil.copytree(bert_folder, tmp_path / "custom")
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="custom_bert", auto_map={"AutoConfig": "custom.CustomConfig",
                                                      "AutoModel": "custom.CustomModel"})
    (folder / "config.json").write_text(json.dumps(config))
    marker = tmp_path / "the-folder-code-ran"
    (folder / "custom.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n"
                                      "raise RuntimeError('the folder code ran')\n")
    return folder, marker


def test_visualize_runs_a_folders_code_only_with_trust_remote_code(tmp_path, bert_folder):
    folder, marker = evil_folder(tmp_path, bert_folder)
    argv = ["--model_dir", str(folder), "--text", "a fine film", "--output_dir", str(tmp_path / "out")]
    with pytest.raises(ValueError, match=r"holds a model of type 'custom_bert' whose code is the folder's own "
                                         r"Python files \(.*custom\.py.*\); they run only if you ask: read them, then "
                                         r"pass --trust_remote_code"):
        visualize_attention.run(visualize_attention.parse_args(argv))
    assert not marker.exists()
    with pytest.raises(RuntimeError, match="the folder code ran"):  # asked for: it runs
        visualize_attention.run(visualize_attention.parse_args([*argv, "--trust_remote_code"]))
    assert marker.exists()


def test_visualize_as_a_script_loads_our_folders_without_their_code(tmp_path, bert_folder):
    """Run as a command (a fresh process, our package not imported before the script): transformers never imports
    the folder's own .py files, though the folder carries them (auto_map)."""
    argv = ["visualize_attention.py", "--model_dir", str(bert_folder), "--text", "a fine film", "--output_dir",
            str(tmp_path)]
    code = ("import runpy, sys\n"
            "import transformers.dynamic_module_utils as dynamic\n"
            "def refuse(name, path, *args, **kwargs):\n"
            "    raise SystemExit(f'the folder code was imported: {path}')\n"
            "dynamic.get_class_in_module = refuse\n"
            f"sys.argv = {argv!r}\n"
            f"runpy.run_path({str(SCRIPTS / 'visualize_attention.py')!r}, run_name='__main__')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "self_attention_layer2.png").is_file()


def test_visualize_names_the_model_folder_it_meant(tmp_path, bert_folder):
    shutil.copytree(bert_folder, tmp_path / "run" / "final")
    with pytest.raises(ValueError, match=r"--model_dir .*run is not a model folder \(no config\.json\); did you mean "
                                         r".*run/final\?"):
        visualize_attention.run(visualize_attention.parse_args(
            ["--model_dir", str(tmp_path / "run"), "--text", "a fine film", "--output_dir", str(tmp_path / "out")]))
    with pytest.raises(ValueError, match="--text is empty"):
        visualize_attention.parse_args(["--model_dir", str(bert_folder), "--text", " ", "--output_dir", "x"])


# ---------------------------------------------------------------------------------------------- publish


def publish_args(model_dir, output_dir, **overrides):
    return publish.PublishArguments(model_dir=str(model_dir), output_dir=str(output_dir), **overrides)


def test_publish_never_writes_over_the_model(tmp_path, translation_folder):
    folder = shutil.copytree(translation_folder, tmp_path / "model")
    before = digest(folder)
    with pytest.raises(ValueError, match=r"--output_dir .*model is the model folder"):
        publish.publish(publish_args(folder, folder))
    assert digest(folder) == before

    output = publish.publish(publish_args(folder, tmp_path / "hub"))
    assert "vanilla-transformer" in ModelCard.load(output / "README.md").data.tags
    publish.publish(publish_args(folder, tmp_path / "hub"))  # an earlier output of publish.py: written again

    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(ValueError, match=r"--output_dir .*notes is not empty and not an earlier output of publish"):
        publish.publish(publish_args(folder, tmp_path / "notes"))


METRICS_FILES = {
    "not JSON": ("{'sacrebleu': 38.7}", r"--metrics_file .*scores\.json: line 1: not valid JSON"),
    "a list": ("[38.7]", r"--metrics_file .*scores\.json holds a JSON list; expected an object"),
    "NaN": ('{"sacrebleu": NaN, "chrf": 61.2}', r"\{'sacrebleu': nan\} is not a score to publish"),
}


@pytest.mark.parametrize("case", METRICS_FILES, ids=list(METRICS_FILES))
def test_publish_refuses_a_bad_metrics_file_before_writing(case, tmp_path, translation_folder):
    content, message = METRICS_FILES[case]
    (tmp_path / "scores.json").write_text(content)
    with pytest.raises(ValueError, match=message):
        publish.publish(publish_args(translation_folder, tmp_path / "hub", metrics_file=str(tmp_path / "scores.json")))
    assert not (tmp_path / "hub").exists()


def test_publish_refuses_a_bad_repo_id_before_writing(tmp_path, translation_folder):
    with pytest.raises(ValueError, match=r"--push_to_hub not a repo! is not a Hub repo id"):
        publish.publish(publish_args(translation_folder, tmp_path / "hub", push_to_hub="not a repo!"))
    assert not (tmp_path / "hub").exists()


def test_publish_runs_no_tokenizer_code_of_the_folder(tmp_path, translation_folder):
    """A folder of ours whose tokenizer is a class of the folder's own code: publish used to run it unasked."""
    folder = shutil.copytree(translation_folder, tmp_path / "model")
    settings = json.loads((folder / "tokenizer_config.json").read_text())
    settings.update(tokenizer_class="CustomTokenizer", auto_map={"AutoTokenizer": ["custom_tok.CustomTokenizer", None]})
    (folder / "tokenizer_config.json").write_text(json.dumps(settings))
    marker = tmp_path / "the-folder-code-ran"
    (folder / "custom_tok.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    with pytest.raises(ValueError, match=r"holds a tokenizer of class 'CustomTokenizer' whose code is the folder's "
                                         r"own Python files \(.*custom_tok\.py.*\); this script runs no code of a "
                                         r"model folder"):
        publish.publish(publish_args(folder, tmp_path / "hub"))
    assert not marker.exists() and not (tmp_path / "hub").exists()
