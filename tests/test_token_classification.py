"""scripts/finetune_token_classification.py and its library (token_data, the seqeval_f1 metric) on tiny models and
a few sentences: a run end to end from one of our MLM checkpoints, the tag of each word on its first word piece,
long sentences split and joined again, the entity scores against hand-computed values, the refusals of bad tag
files, and a resumed run that ends with the weights of an uninterrupted one."""

import json
import os
import signal

import evaluate
import pytest
import safetensors.torch
import torch
from transformers import AutoModelForTokenClassification, AutoTokenizer, BertConfig, BertForMaskedLM, TrainerCallback

from vanilla_transformer.modeling import VanillaBertForMaskedLM, VanillaBertForTokenClassification
from vanilla_transformer.modeling.hub import save_for_hub
from vanilla_transformer.scripts import finetune_token_classification as command
from vanilla_transformer.scripts.training.finetuning import load_model_and_tokenizer
from vanilla_transformer.scripts.training.token_data import IGNORED, Sentences, encode, sentence_tags
from vanilla_transformer.scripts.training.translation_eval import METRICS_DIR

ANIMALS = ["cat", "dog", "horse", "bird", "fish", "cow", "sheep", "goat"]
PLACES = ["garden", "field", "house", "barn", "river", "forest", "yard", "park"]


def tagged_sentences(count: int, offset: int = 0) -> list[list[tuple[str, str]]]:
    """"the <animal> eats in the <place> ." with the animal an ANIMAL and "the <place>" a two-word PLACE."""
    return [[("the", "O"), (ANIMALS[(i + offset) % 8], "B-ANIMAL"), ("eats", "O"), ("in", "O"), ("the", "B-PLACE"),
             (PLACES[(3 * i + offset) % 8], "I-PLACE"), (".", "O")] for i in range(count)]


def write_conll(path, sentences, separator=" ", docstart=True):
    lines = ["-DOCSTART- O", ""] if docstart else []
    for sentence in sentences:
        lines += [f"{word}{separator}{tag}" for word, tag in sentence] + [""]
    path.write_text("\n".join(lines))
    return path


@pytest.fixture(scope="module")
def mlm_folder(tmp_path_factory, write_mlm_corpus, mlm_args, tiny_model_args, run_mlm):
    """A tiny MLM checkpoint of pretrain_mlm (the animal corpus: its tokenizer knows the words above)."""
    root = tmp_path_factory.mktemp("mlm")
    run_mlm(mlm_args(write_mlm_corpus(root / "corpus"), root / "run", *tiny_model_args(), "--max_steps", "4"))
    return root / "run" / "final"


@pytest.fixture(scope="module")
def ner_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ner")
    return {"train_file": write_conll(folder / "train.txt", tagged_sentences(16)),
            "validation_file": write_conll(folder / "dev.txt", tagged_sentences(6, offset=1), separator="\t"),
            "test_file": write_conll(folder / "test.txt", tagged_sentences(5, offset=2), docstart=False)}


def token_args(model, output, *extra, **files) -> list[str]:
    argv = ["--model_name_or_path", str(model), "--output_dir", str(output), "--per_device_train_batch_size", "4",
            "--logging_steps", "1", "--seed", "0", "--max_seq_length", "16", *extra]
    for option, path in files.items():
        argv += [f"--{option}", str(path)]
    return argv


def test_a_tagger_fine_tuned_from_our_mlm_checkpoint_end_to_end(tmp_path, mlm_folder, ner_files):
    output = tmp_path / "out"
    assert command.main(token_args(mlm_folder, output, "--num_train_epochs", "2", **ner_files)) == 0

    results = json.loads((output / "results.json").read_text())
    assert results["tags"] == ["O", "B-ANIMAL", "B-PLACE", "I-PLACE"]
    assert results["train"]["epoch"] == 2.0 and results["test"]["test_sentences"] == 5
    model = AutoModelForTokenClassification.from_pretrained(output).eval()
    assert type(model) is VanillaBertForTokenClassification and model.config.id2label[2] == "B-PLACE"
    # The predictions file, a sentence per block, is what the saved model predicts on each word's first piece
    blocks = [block.splitlines() for block in (output / "test_predictions.txt").read_text().strip().split("\n\n")]
    assert len(blocks) == 5 and [line.split()[:2] for line in blocks[0]] == [list(p) for p in tagged_sentences(1, 2)[0]]
    tokenizer = AutoTokenizer.from_pretrained(output)
    for block in blocks:
        words = [line.split()[0] for line in block]
        batch = tokenizer(words, is_split_into_words=True, return_tensors="pt")
        with torch.no_grad():
            guess = model(**batch).logits[0].argmax(-1).tolist()
        word_ids = batch.word_ids(0)
        firsts = [p for p, w in enumerate(word_ids) if w is not None and word_ids[p - 1] != w]
        assert [line.split()[2] for line in block] == [model.config.id2label[guess[p]] for p in firsts]
    # and the scores are those of that file: token accuracy counted here, the entity F1 by the metric
    rows = [line.split() for block in blocks for line in block]
    assert results["test"]["test_accuracy"] == pytest.approx(sum(r[1] == r[2] for r in rows) / len(rows))
    metric = evaluate.load(str(METRICS_DIR / "seqeval_f1"))
    expected = metric.compute(predictions=[[line.split()[2] for line in b] for b in blocks],
                              references=[[line.split()[1] for line in b] for b in blocks])
    assert results["test"]["test_f1"] == pytest.approx(expected["f1"])
    assert (output / "validation_predictions.txt").is_file() and not list(output.glob("checkpoint-*"))


def test_the_tag_goes_on_the_first_piece_of_each_word(finetune_tokenizer):
    words = ["unflinchingly", "bleak", "and", '"desperate']
    pieces = [finetune_tokenizer.tokenize(word) for word in words]
    assert max(len(p) for p in pieces) > 1  # the test needs a word of several pieces
    tags = ["O", "B-X", "I-X"]
    split = Sentences("train", "mem", "line", [1], [words], [["B-X", "I-X", "O", "B-X"]])
    dataset, parts = encode(split, tags, finetune_tokenizer, max_length=64)
    expected = [IGNORED]  # [CLS]
    for piece, tag in zip(pieces, split.tags[0]):
        expected += [tags.index(tag)] + [IGNORED] * (len(piece) - 1)
    assert dataset["labels"] == [expected + [IGNORED]]  # [SEP]
    assert dataset["input_ids"][0] == finetune_tokenizer(words, is_split_into_words=True)["input_ids"]
    assert parts == [(0, [0, 1, 2, 3])]


def test_a_long_sentence_is_split_at_word_boundaries_and_joined_again(finetune_tokenizer, caplog):
    words = ["the", "acting", "is", "wonderful", "a", "boring", "film"] * 3
    tags = ["O", "B-X"]
    split = Sentences("test", "long.txt", "line", [1, 30], [words, words[:3]],
                      [["B-X" if i % 2 else "O" for i in range(21)], ["O", "B-X", "O"]])
    lengths = [len(finetune_tokenizer.tokenize(word)) for word in words]
    dataset, parts = encode(split, tags, finetune_tokenizer, max_length=10)
    assert "long.txt: 1 of 2 sentences are longer than --max_seq_length 10" in caplog.text
    assert all(len(ids) <= 10 for ids in dataset["input_ids"]) and len(parts) > 3
    assert [word for index, words_ in parts if index == 0 for word in words_] == list(range(21))  # each word once
    assert sum(lengths) == sum(len(ids) - 2 for ids, (index, _) in zip(dataset["input_ids"], parts) if index == 0)
    # the predicted tag ids of each part (here: the gold ones) land on the right words of the whole sentence
    labels = [torch.tensor(row) for row in dataset["labels"]]
    joined = sentence_tags([row.clamp(min=0) for row in labels], labels, parts, split, tags)
    assert joined == split.tags


ENTITY_CASES = {
    # gold, predicted -> precision, recall, f1, accuracy
    "IOB2, a wrong type": ([["B-PER", "I-PER", "O", "B-LOC"]], [["B-PER", "I-PER", "O", "B-ORG"]], 1 / 2, 1 / 2, 1 / 2,
                           3 / 4),
    "I- without B- starts an entity": ([["I-PER", "I-PER", "O"]], [["B-PER", "I-PER", "O"]], 1, 1, 1, 2 / 3),
    "a too short span": ([["B-LOC", "I-LOC", "I-LOC"]], [["B-LOC", "I-LOC", "O"]], 0, 0, 0, 2 / 3),
    "I- of another type after B-": ([["B-PER", "I-LOC"]], [["B-PER", "B-LOC"]], 1, 1, 1, 1 / 2),
    "IOB1: B- only between two of a type": ([["I-PER", "I-PER", "B-PER"]], [["I-PER", "B-PER", "I-PER"]], 0, 0, 0,
                                            1 / 3),
    "BIOES": ([["S-LOC", "B-PER", "E-PER", "O"]], [["S-LOC", "B-PER", "I-PER", "O"]], 1, 1, 1, 3 / 4),
    "BIOES: E- and S- end entities": ([["B-PER", "E-PER", "S-PER"]], [["B-PER", "E-PER", "O"]], 1, 1 / 2, 2 / 3,
                                      2 / 3),
    "IOE: E- ends an entity": ([["I-PER", "E-PER", "I-PER", "E-PER"]], [["I-PER", "I-PER", "I-PER", "E-PER"]], 0, 0,
                               0, 3 / 4),
    "sentences do not join": ([["O", "B-LOC"], ["I-LOC", "O"]], [["O", "B-LOC"], ["B-LOC", "O"]], 1, 1, 1, 3 / 4),
    "no entity predicted": ([["B-LOC", "O"]], [["O", "O"]], 0, 0, 0, 1 / 2),
    "two of three found, one invented": ([["B-A", "O", "B-B", "I-B", "O", "B-A"]],
                                         [["B-A", "O", "B-B", "I-B", "B-A", "O"]], 2 / 3, 2 / 3, 2 / 3, 4 / 6),
}


@pytest.mark.parametrize("case", ENTITY_CASES, ids=list(ENTITY_CASES))
def test_entity_scores_match_hand_computed_values(case):
    gold, predicted, precision, recall, f1, accuracy = ENTITY_CASES[case]
    scores = evaluate.load(str(METRICS_DIR / "seqeval_f1")).compute(predictions=predicted, references=gold)
    assert (scores["precision"], scores["recall"], scores["f1"], scores["accuracy"]) == pytest.approx(
        (precision, recall, f1, accuracy))


def test_entity_scores_per_type():
    gold = [["B-A", "O", "B-B", "I-B", "O", "B-A"]]  # A: 2 entities, 1 found; B: 1, found
    scores = evaluate.load(str(METRICS_DIR / "seqeval_f1")).compute(
        predictions=[["B-A", "O", "B-B", "I-B", "B-A", "O"]], references=gold)
    assert (scores["A_number"], scores["B_number"]) == (2, 1)
    assert (scores["A_f1"], scores["B_f1"]) == pytest.approx((1 / 2, 1))


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory, finetune_tokenizer, tiny_bert_config):
    return save_for_hub(VanillaBertForMaskedLM(tiny_bert_config(vocab_size=len(finetune_tokenizer))),
                        tmp_path_factory.mktemp("bert") / "mlm", finetune_tokenizer)


GOOD = "the O\nacting B-X\n\nis O\nwonderful B-X\n"
BAD_FILES = {
    "ragged lines": ({"train.txt": "the DT O\nacting NN B-X\nis O\n"},
                     r"train\.txt, line 3: 2 columns, but line 1 has 3: every word line has the same columns"),
    "a word without a tag": ({"train.txt": "the O\nacting\n"}, r"train\.txt, line 2: one column \('acting'\)"),
    "no sentence": ({"train.txt": "-DOCSTART- O\n\n\n"}, r"train\.txt: no sentence in it"),
    "a tag unseen in training": ({"train.txt": GOOD, "test.txt": "the O\n\nfilm B-Y\n"},
                                 r"test\.txt: 1 word\(s\) have a tag that is not a tag of the training data .*: "
                                 r"'B-Y' \(sentence at line 3\); the tags are \['O', 'B-X'\]"),
    "one tag": ({"train.txt": "the O\nacting O\n"}, r"every word has the tag 'O'; a tagger needs at least two tags"),
    "an empty JSON sentence": ({"train.jsonl": '{"tokens": ["the"], "tags": ["O"]}\n{"tokens": [], "tags": []}\n'},
                               r"train\.jsonl, line 2: an empty sentence"),
    "JSON tags not aligned": ({"train.jsonl": '{"tokens": ["the", "film"], "tags": ["O"]}\n'},
                              r"train\.jsonl, line 1: 2 words but 1 tags"),
    "JSON words not a list": ({"train.jsonl": '{"tokens": "the film", "tags": ["O", "O"]}\n'},
                              r"train\.jsonl, line 1: 'tokens' \(--tokens_column\) is the film, not a list"),
    "not UTF-8": ({"train.txt": b"the O\ncaf\xe9 B-X\n"}, r"train\.txt, line 2: byte 0xe9 .* is not UTF-8"),
    "a missing file": ({}, r"--train_file .*train\.txt: no such file"),
}


@pytest.mark.parametrize("case", BAD_FILES, ids=list(BAD_FILES))
def test_a_bad_tag_file_is_refused_naming_the_file_and_line(case, tmp_path, tiny_bert):
    files, message = BAD_FILES[case]
    for name, content in files.items():
        (tmp_path / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    given = {f"{name.split('.')[0]}_file": tmp_path / name for name in files} or {"train_file": tmp_path / "train.txt"}
    with pytest.raises(ValueError, match=message):
        command.run(token_args(tiny_bert, tmp_path / "out", **given))
    assert not (tmp_path / "out" / "finetune_args.json").exists()  # refused before the run started


def test_a_hugging_face_bert_gets_our_token_head_around_its_converted_encoder(tmp_path, finetune_tokenizer):
    BertForMaskedLM(BertConfig(vocab_size=len(finetune_tokenizer), hidden_size=32, num_hidden_layers=2,
                               num_attention_heads=4, intermediate_size=37, max_position_embeddings=64)
                    ).save_pretrained(tmp_path / "hf")
    finetune_tokenizer.save_pretrained(tmp_path / "hf")
    model, _ = load_model_and_tokenizer(str(tmp_path / "hf"), ["O", "B-X"], head="token")
    assert type(model) is VanillaBertForTokenClassification and model.config.id2label == {0: "O", 1: "B-X"}
    saved = safetensors.torch.load_file(tmp_path / "hf" / "model.safetensors")["bert.embeddings.word_embeddings.weight"]
    torch.testing.assert_close(model.bert.embeddings.embed_tokens.weight, saved)


class CtrlCAt(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGINT)


def test_an_interrupted_run_resumes_to_the_uninterrupted_weights(monkeypatch, tmp_path, tiny_bert, ner_files):
    """Ctrl-C mid-epoch: a checkpoint, no validation pass of the cut epoch, and a resume to the same weights (with
    other evaluation settings, which do not change them)."""
    settings = ["--num_train_epochs", "2", "--save_steps", "3"]
    files = {"train_file": ner_files["train_file"], "validation_file": ner_files["validation_file"]}
    command.run(token_args(tiny_bert, tmp_path / "whole", *settings, **files))
    build_trainer, trainers = command.build_trainer, []

    def interrupted(*args, **kwargs):
        trainers.append(build_trainer(*args, **kwargs))
        trainers[-1].add_callback(CtrlCAt(3))
        return trainers[-1]

    monkeypatch.setattr(command, "build_trainer", interrupted)
    argv = token_args(tiny_bert, tmp_path / "stopped", *settings, **files)
    assert command.run(argv)["interrupted_at_step"] == 3
    assert not [entry for entry in trainers[0].state.log_history if "eval_loss" in entry]
    monkeypatch.setattr(command, "build_trainer", build_trainer)
    with pytest.raises(RuntimeError, match=r"with other settings \(--seed: checkpoint 0, now 1\)"):
        command.run([*argv, "--resume", "--seed", "1"])
    command.run([*argv, "--resume", "--save_steps", "100", "--per_device_eval_batch_size", "7"])  # changeable
    whole = safetensors.torch.load_file(tmp_path / "whole" / "model.safetensors")
    resumed = safetensors.torch.load_file(tmp_path / "stopped" / "model.safetensors")
    assert resumed.keys() == whole.keys() and all(torch.equal(resumed[k], whole[k]) for k in whole)


def test_resume_refuses_a_run_of_the_other_command(tmp_path, tiny_bert, ner_files):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "finetune_args.json").write_text(json.dumps({"command": "finetune_classification",
                                                                     "args": {}}))
    with pytest.raises(RuntimeError, match=r"holds a run of finetune_classification, not of "
                                           r"finetune_token_classification"):
        command.run(token_args(tiny_bert, tmp_path / "out", "--resume", train_file=ner_files["train_file"]))
