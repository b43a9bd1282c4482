"""scripts/train_translation.py and its library (vanilla_transformer.scripts.training: batching, translation_data,
translation_eval and its metric modules; evaluate_translation, train_tokenizer), on a tiny corpus of Babel display-name
pairs with a tiny model: batches by token count, data loading and its error messages, exact resumption (stopped,
Ctrl-C), refused checkpoints, the final folder, the evaluation script and its per-sentence length limit."""

import gzip
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import evaluate
import numpy as np
import pytest
import sacrebleu
import safetensors.torch
import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, DataCollatorForSeq2Seq, LogitsProcessorList

from vanilla_transformer.modeling import VanillaTransformerForConditionalGeneration
from vanilla_transformer.scripts import evaluate_translation, train_tokenizer
from vanilla_transformer.tokenization import special_token_ids, train_bpe_tokenizer
from vanilla_transformer.scripts.training.batching import sized_batches, steps_for_process, token_batches
from vanilla_transformer.scripts.training.errors import ArgumentError, CheckpointError
from vanilla_transformer.scripts.training.translation_data import (
    CorpusArguments,
    babel_pairs,
    load_parallel,
    pair_lengths,
    tokenize_pairs,
    trainable_pairs,
)
from vanilla_transformer.scripts.training.translation_eval import METRICS_DIR, SourceLengthLimit, translate

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
PAIRS = babel_pairs("de", "en")


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(checkpoint / "model.safetensors")


def assert_same_weights(a: Path, b: Path) -> None:
    first, second = weights(a), weights(b)
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, run_translation, translation_args, write_translation_corpus):
    """A completed 8-step run (over an epoch boundary), with dropout, checkpoint averaging and a length-penalty
    choice at the end."""
    root = tmp_path_factory.mktemp("finished")
    corpus = write_translation_corpus(root / "data")
    output_dir = root / "run"
    outcome = run_translation(translation_args(corpus, output_dir, "--max_steps", "8", "--dropout", "0.1",
                                               "--average_last", "2", "--length_penalties", "0.8", "1.0"))
    return corpus, output_dir, outcome


# ------------------------------------------------------------------------------------------------ batches


def test_token_batches_fit_max_tokens_and_cover_every_example_once():
    lengths = np.random.default_rng(0).integers(1, 40, size=500)
    for epoch in range(3):
        batches = token_batches(lengths, max_tokens=120, seed=1, epoch=epoch)
        assert all(len(b) * lengths[b].max() <= 120 for b in batches)  # padding included
        assert sorted(i for b in batches for i in b) == list(range(500))  # each example once
        assert batches == token_batches(lengths, max_tokens=120, seed=1, epoch=epoch)  # re-created on resume
    assert token_batches(lengths, 120, seed=1, epoch=0) != token_batches(lengths, 120, seed=1, epoch=1)
    with pytest.raises(ValueError, match="does not fit in --max_tokens 30"):
        token_batches(lengths, max_tokens=30, seed=1, epoch=0)

    batches = token_batches(lengths, max_tokens=120, seed=1, epoch=0)
    global_steps = {}
    for processes, accumulation in [(1, 1), (1, 2), (2, 1), (2, 2), (3, 1)]:
        shares = [steps_for_process(batches, processes, rank, accumulation) for rank in range(processes)]
        assert len({len(share) for share in shares}) == 1  # every process makes the same number of steps
        assert all(len(step) == accumulation for share in shares for step in share)
        seen = [i for share in shares for step in share for micro in step for i in micro]
        assert sorted(seen) == list(range(500))  # split, never duplicated or dropped
        assert all(len(micro) * lengths[micro].max() <= 120 for share in shares for step in share for micro in step)
        global_steps[processes, accumulation] = [
            sorted(i for share in shares for micro in share[s] for i in micro) for s in range(len(shares[0]))
        ]
    # the same global steps whether 2 micro-batches come from 2 processes or from 1 process accumulating
    assert global_steps[1, 2] == global_steps[2, 1]


def test_sized_batches_group_similar_lengths_and_cover_every_example_once():
    lengths = np.random.default_rng(0).integers(1, 40, size=101)
    batches = sized_batches(lengths, batch_size=10, seed=1, epoch=0)
    assert sorted(len(b) for b in batches) == [1] + [10] * 10
    assert sorted(i for b in batches for i in b) == list(range(101))
    spans = sorted((lengths[b].min(), lengths[b].max()) for b in batches)
    assert all(high <= next_low for (_, high), (next_low, _) in zip(spans, spans[1:]))  # cut from the sorted order
    assert batches == sized_batches(lengths, 10, seed=1, epoch=0)  # re-created on resume
    assert batches != sized_batches(lengths, 10, seed=1, epoch=1)


def test_collated_batches_never_exceed_max_tokens_counting_padding(tmp_path, write_translation_corpus):
    pairs = load_parallel(str(write_translation_corpus(tmp_path) / "train"), CorpusArguments())
    tokenizer = train_bpe_tokenizer(list(pairs["source"]) + list(pairs["target"]), vocab_size=150,
                                    show_progress=False)
    tokenized, _ = trainable_pairs(tokenize_pairs(pairs, tokenizer), max_length=24)
    features = tokenized.select_columns(["input_ids", "labels"])
    collate = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100, return_tensors="pt")
    for epoch in range(2):
        batches = token_batches(pair_lengths(tokenized), max_tokens=64, seed=0, epoch=epoch)
        assert sorted(i for b in batches for i in b) == list(range(len(tokenized)))
        for indices in batches:
            batch = collate([features[i] for i in indices])
            assert batch["input_ids"].numel() <= 64 and batch["labels"].numel() <= 64


# ------------------------------------------------------------------------------------------------ metrics


def test_metric_modules_agree_with_sacrebleu():
    hypotheses = ["The cat sat on the mat.", "A dog runs in the park!", "Two men play football on a beach."]
    references = ["The cat is on the mat.", "A dog is running in the park.", "Two men play soccer at the beach."]
    bleu = evaluate.load(str(METRICS_DIR / "sacrebleu"))
    chrf = evaluate.load(str(METRICS_DIR / "chrf"))
    result = bleu.compute(predictions=hypotheses, references=[[r] for r in references])
    expected = sacrebleu.corpus_bleu(hypotheses, [references])
    assert result["score"] == pytest.approx(expected.score) and result["counts"] == expected.counts
    assert result["signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp")
    assert bleu.compute(predictions=hypotheses, references=references)["score"] == pytest.approx(expected.score)
    assert bleu.compute(predictions=hypotheses, references=references, lowercase=True)["score"] == pytest.approx(
        sacrebleu.corpus_bleu(hypotheses, [references], lowercase=True).score
    )
    assert chrf.compute(predictions=hypotheses, references=references)["score"] == pytest.approx(
        sacrebleu.corpus_chrf(hypotheses, [references]).score
    )
    assert chrf.compute(predictions=hypotheses, references=references, word_order=2)["score"] == pytest.approx(
        sacrebleu.corpus_chrf(hypotheses, [references], word_order=2).score  # chrF++
    )
    two_refs = [[r, r.lower()] for r in references]
    assert bleu.compute(predictions=hypotheses, references=two_refs)["score"] == pytest.approx(
        sacrebleu.corpus_bleu(hypotheses, [references, [r.lower() for r in references]]).score
    )


# --------------------------------------------------------------------------------------------------- data


def test_parallel_data_from_text_tsv_jsonl_and_dataset_folder(tmp_path):
    corpus = CorpusArguments(source_lang="de", target_lang="en")
    (tmp_path / "a.de").write_text("ein Hund\r\n\nzwei\u2028Katzen\n")  # \r\n ends a line; \u2028 does not
    (tmp_path / "a.en").write_text("a dog\r\nempty source\ntwo\u2028cats\n")
    pairs = load_parallel(str(tmp_path / "a"), corpus)
    assert pairs["source"] == ["ein Hund", "", "zwei\u2028Katzen"] and pairs["target"][0] == "a dog"

    (tmp_path / "b.tsv").write_text('de\ten\tnote\n"Hallo"\t"hello"\tx\nNA\tnull\ty\n1984\t1984\tz\n')
    pairs = load_parallel(str(tmp_path / "b.tsv"), corpus)
    assert pairs["source"] == ['"Hallo"', "NA", "1984"] and pairs["target"] == ['"hello"', "null", "1984"]
    assert pairs.column_names == ["source", "target"]

    rows = [{"translation": {"de": "ein Hund", "en": "a dog"}}, {"translation": {"de": "eine Katze", "en": "a cat"}}]
    with gzip.open(tmp_path / "c.jsonl.gz", "wt") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)
    assert load_parallel(str(tmp_path / "c.jsonl.gz"), corpus)["target"] == ["a dog", "a cat"]

    # a dataset folder (as a Hub id would be): split names, and explicit columns
    (tmp_path / "hub").mkdir()
    (tmp_path / "hub" / "test.jsonl").write_text(json.dumps({"src": "ein Hund", "tgt": "a dog"}) + "\n")
    hub = CorpusArguments(dataset_name=str(tmp_path / "hub"), source_column="src", target_column="tgt")
    assert load_parallel("test", hub)["source"] == ["ein Hund"]

    missing = r"no target column 'en' or 'translation.en'; the columns are \['src', 'tgt'\]"
    with pytest.raises(ValueError, match=missing):
        load_parallel("test", CorpusArguments(dataset_name=str(tmp_path / "hub"), source_column="src"))
    (tmp_path / "d.de").write_text("eins\nzwei\n")
    (tmp_path / "d.en").write_text("one\n")
    with pytest.raises(ValueError, match="different numbers of lines"):
        load_parallel(str(tmp_path / "d"), corpus)
    with pytest.raises(FileNotFoundError, match="e.de.gz"):
        load_parallel(str(tmp_path / "e"), corpus)


def test_empty_and_overlong_pairs_are_dropped_and_counted_and_tokens_cached(tmp_path):
    (tmp_path / "t.de").write_text("ein Hund\n \nein sehr sehr sehr sehr langer Satz\nKatze\n\n")
    (tmp_path / "t.en").write_text("a dog\nnothing\na very very very very long sentence\n\ncat\n")
    pairs = load_parallel(str(tmp_path / "t"), CorpusArguments())
    tokenizer = train_bpe_tokenizer(list(pairs["source"]) + list(pairs["target"]), vocab_size=80,
                                    show_progress=False)
    tokenized = tokenize_pairs(pairs, tokenizer)
    kept, counts = trainable_pairs(tokenized, max_length=8)
    assert (counts.total, counts.empty, counts.too_long, counts.kept) == (5, 3, 1, 1)
    assert kept["source"] == ["ein Hund"] and kept["labels"][0][-1] == tokenizer.eos_token_id
    assert counts.describe("train", 8) == (
        "train: 5 pairs; dropped 3 with an empty side and 1 longer than 8 tokens; 1 kept"
    )
    cache_file = Path(tokenized.cache_files[0]["filename"])
    assert cache_file.name.startswith("tokenized-")
    written = cache_file.stat().st_mtime_ns
    again = tokenize_pairs(load_parallel(str(tmp_path / "t"), CorpusArguments()), tokenizer)
    assert again.cache_files == tokenized.cache_files and cache_file.stat().st_mtime_ns == written  # read, not redone


def test_train_tokenizer_bpe_from_files_and_wordpiece_from_a_dataset(tmp_path, write_translation_corpus):
    corpus = write_translation_corpus(tmp_path / "data")
    files = [str(corpus / "train.de.gz"), str(corpus / "train.en.gz")]
    train_tokenizer.run(train_tokenizer.TokenizerArguments(output_dir=str(tmp_path / "bpe"), files=files,
                                                            vocab_size=120))
    bpe = AutoTokenizer.from_pretrained(tmp_path / "bpe")
    assert [bpe.pad_token_id, bpe.bos_token_id, bpe.eos_token_id, bpe.unk_token_id] == [0, 1, 2, 3]
    text = f"{PAIRS[0][0]} {PAIRS[25][1]}"  # words of the training text: "Abchasisch Classical Newari"
    assert bpe.decode(bpe(text)["input_ids"], skip_special_tokens=True) == text

    (tmp_path / "wiki").mkdir()
    (tmp_path / "wiki" / "train.jsonl").write_text("".join(json.dumps({"text": f"The Dog number {i}."}) + "\n"
                                                           for i in range(30)))
    train_tokenizer.run(train_tokenizer.TokenizerArguments(
        output_dir=str(tmp_path / "wp"), kind="wordpiece", dataset_name=str(tmp_path / "wiki"), vocab_size=60))
    wordpiece = AutoTokenizer.from_pretrained(tmp_path / "wp")
    assert wordpiece.convert_ids_to_tokens(wordpiece("The Dog")["input_ids"]) == ["[CLS]", "the", "dog", "[SEP]"]
    with pytest.raises(ValueError, match="has no column"):
        train_tokenizer.run(train_tokenizer.TokenizerArguments(
            output_dir=str(tmp_path / "x"), dataset_name=str(tmp_path / "wiki"), columns=["sentence"]))


# ---------------------------------------------------------------------------------------------- resumption


def test_epoch_and_time_budgets_and_a_given_tokenizer(tmp_path, log_records, run_translation, translation_args,
                                                      write_translation_corpus):
    corpus = write_translation_corpus(tmp_path / "data")
    train_tokenizer.run(train_tokenizer.TokenizerArguments(
        output_dir=str(tmp_path / "tokenizer"), files=[str(corpus / "train.de.gz"), str(corpus / "train.en.gz")],
        vocab_size=150))
    outcome = run_translation(translation_args(corpus, tmp_path / "epoch", "--num_epochs", "1", "--tokenizer",
                                               str(tmp_path / "tokenizer")))
    assert outcome.completed and outcome.stop_reason == "--num_epochs 1" and outcome.epoch == 1
    records = [r for r in log_records(tmp_path / "epoch") if "loss" in r]
    assert records[-1]["step"] == outcome.global_step and records[-1]["epoch"] == 1.0 > records[-2]["epoch"]
    assert not (tmp_path / "epoch" / "tokenizer").exists()  # the given one was used
    assert len(AutoTokenizer.from_pretrained(tmp_path / "epoch" / "final")) == 150

    train_tokenizer.run(train_tokenizer.TokenizerArguments(
        output_dir=str(tmp_path / "wordpiece"), kind="wordpiece", files=[str(corpus / "train.de.gz")], vocab_size=100))
    with pytest.raises(ValueError, match="has no bos_token, eos_token: the decoder starts from <s>"):
        run_translation(translation_args(corpus, tmp_path / "wp", "--max_steps", "1", "--tokenizer",
                                         str(tmp_path / "wordpiece")))

    outcome = run_translation(translation_args(corpus, tmp_path / "timed", "--max_train_minutes", "1e-9"))
    assert outcome.completed and outcome.stop_reason == "--max_train_minutes 1e-09" and outcome.global_step == 1


def test_stopped_and_resumed_run_ends_with_the_same_weights(finished_run, tmp_path, log_records, run_translation,
                                                            translation_args):
    corpus, full_dir, full = finished_run
    assert full.completed and full.global_step == 8 and full.epoch >= 1  # crossed an epoch boundary
    common = ["--max_steps", "8", "--dropout", "0.1"]  # dropout on: the RNG state must be restored too
    first = run_translation(translation_args(corpus, tmp_path, *common, "--max_steps_this_run", "5"))
    assert not first.completed and first.global_step == 5 and first.checkpoint.name == "step-5"
    assert not (tmp_path / "final").exists()
    second = run_translation(translation_args(corpus, tmp_path, *common, "--resume"))
    assert second.completed and second.global_step == 8
    assert_same_weights(full_dir / "checkpoints" / "step-8", tmp_path / "checkpoints" / "step-8")
    losses = [(r["step"], r["loss"]) for r in log_records(tmp_path) if "loss" in r]
    assert losses == [(r["step"], r["loss"]) for r in log_records(full_dir) if "loss" in r]
    assert [step for step, _ in losses] == list(range(1, 9))  # the log continues where the checkpoint was


def test_ctrl_c_saves_a_checkpoint_and_the_resumed_run_matches(tmp_path, run_translation, translation_args,
                                                               write_translation_corpus):
    corpus = write_translation_corpus(tmp_path / "data")
    argv = translation_args(corpus, tmp_path / "run", "--save_steps", "100000")
    process = subprocess.Popen(
        [sys.executable, str(SCRIPTS / "train_translation.py"), *argv, "--max_steps", "100000"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    log = tmp_path / "run" / "log.jsonl"
    try:
        deadline = time.monotonic() + 120
        while not (log.is_file() and len(log.read_text().splitlines()) >= 3):
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()[0][-3000:]
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        output = process.communicate(timeout=120)[0]
    finally:
        process.kill()  # if the test failed on the way
        process.wait()
    assert process.returncode == 130, output[-3000:]
    (checkpoint,) = (tmp_path / "run" / "checkpoints").iterdir()
    stopped_at = int(checkpoint.name.removeprefix("step-"))
    assert stopped_at >= 3 and "interrupted" in output

    resumed = run_translation([*argv, "--max_steps", str(stopped_at + 2), "--resume"])
    reference = run_translation(translation_args(corpus, tmp_path / "reference", "--save_steps", "100000",
                             "--max_steps", str(stopped_at + 2)))
    assert resumed.global_step == reference.global_step == stopped_at + 2
    assert_same_weights(resumed.checkpoint, reference.checkpoint)


def test_corrupt_or_incompatible_checkpoints_are_refused_with_a_clear_error(tmp_path, run_translation, translation_args,
                                                                            write_translation_corpus):
    corpus = write_translation_corpus(tmp_path / "data")
    argv = translation_args(corpus, tmp_path / "run", "--max_steps", "6")
    run_translation([*argv, "--max_steps_this_run", "3"])
    with pytest.raises(CheckpointError, match="pass --resume to continue it"):
        run_translation(argv)  # never overwrite an earlier run silently
    with pytest.raises(CheckpointError, match="max_tokens: checkpoint 64, now 80"):
        run_translation([*argv, "--resume", "--max_tokens", "80"])
    with pytest.raises(CheckpointError, match="--ffn_dim: checkpoint 64, now 48"):  # before any data is read
        run_translation([*argv, "--resume", "--ffn_dim", "48"])
    rng_file = tmp_path / "run" / "checkpoints" / "step-3" / "rng_state_0.safetensors"
    rng_state = rng_file.read_bytes()
    rng_file.write_bytes(rng_state[:100])  # accelerate alone would resume without restoring the RNG
    with pytest.raises(CheckpointError, match="cannot resume from .*step-3.*corrupt"):
        run_translation([*argv, "--resume"])
    rng_file.write_bytes(rng_state)
    weights_file = tmp_path / "run" / "checkpoints" / "step-3" / "model.safetensors"
    weights_file.write_bytes(weights_file.read_bytes()[: weights_file.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="cannot resume from .*step-3.*corrupt"):
        run_translation([*argv, "--resume"])
    with pytest.raises(CheckpointError, match="no checkpoint"):
        run_translation(translation_args(corpus, tmp_path / "empty", "--max_steps", "6", "--resume"))


# ------------------------------------------------------------------------------------ results and evaluation


def test_finished_run_leaves_a_hub_folder_logs_and_a_plot(finished_run, log_records):
    _, output_dir, outcome = finished_run
    final = output_dir / "final"
    generation = json.loads((final / "generation_config.json").read_text())
    choice = json.loads((output_dir / "validation_scores.json").read_text())
    assert generation["num_beams"] == 2 and generation["max_new_tokens"] == 24
    assert generation["length_penalty"] == choice["length_penalty"] in (0.8, 1.0)
    assert [t["weights"] for t in choice["tried"]] == ["last step", "average of step-6, step-8", choice["weights"]]
    assert json.loads((final / "training_args.json").read_text())["label_smoothing"] == 0.1
    assert "auto_map" in json.loads((final / "config.json").read_text())

    records = log_records(output_dir)
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 9))
    assert all({"lr", "tokens_per_second", "grad_norm"} <= r.keys() for r in records if "loss" in r)
    assert [r["step"] for r in records if "val_bleu" in r] == [8] and outcome.metrics.keys() >= {"val_loss", "val_bleu"}
    assert (output_dir / "training_curves.png").stat().st_size > 10_000

    # the final folder holds the chosen weights: the averaged ones or the last step's
    model = AutoModelForSeq2SeqLM.from_pretrained(final)
    checkpoints = [output_dir / "checkpoints" / name for name in ("step-6", "step-8")]
    expected = [weights(c)["model.encoder.embed_tokens.weight"] for c in checkpoints]
    expected = (expected[0] + expected[1]) / 2 if choice["weights"].startswith("average") else expected[1]
    torch.testing.assert_close(model.model.encoder.embed_tokens.weight, expected)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_each_translation_ends_at_its_own_source_length_limit(num_beams, tiny_transformer_config):
    tokenizer = train_bpe_tokenizer([text for pair in PAIRS[:300] for text in pair], vocab_size=200,
                                    show_progress=False)
    model = VanillaTransformerForConditionalGeneration(tiny_transformer_config(**special_token_ids(tokenizer))).eval()
    batch = tokenizer([pair[0] for pair in PAIRS[:40:5]], padding=True, return_tensors="pt")
    source_lengths = batch["attention_mask"].sum(1)
    limit = SourceLengthLimit(source_lengths, tokenizer.eos_token_id, factor=0.5)
    output = model.generate(**batch, logits_processor=LogitsProcessorList([limit]), num_beams=num_beams,
                            max_new_tokens=60)
    generated = output[:, 1:]  # after the decoder start token; finished rows are padded (with </s> by beam search)
    is_eos = generated == tokenizer.eos_token_id
    assert is_eos.any(1).all()  # every translation ended
    lengths = is_eos.int().argmax(1) + 1  # up to the first </s>, included
    limits = (0.5 * source_lengths).long() + 10
    assert (lengths <= limits + 1).all()
    assert (lengths == limits + 1).any()  # an untrained model runs to its limit, and no further


def test_evaluate_translation_writes_scores_and_translations(finished_run, tmp_path):
    corpus, output_dir, _ = finished_run
    output = tmp_path / "test_scores.json"
    argv = ["--model_dir", str(output_dir / "final"), "--split", str(corpus / "val"), "--output_file", str(output),
            "--length_penalty", "0.6", "--batch_size", "3"]
    result = evaluate_translation.run(*evaluate_translation.parse_args(argv))
    saved = json.loads(output.read_text())
    hypotheses = [t["hypothesis"] for t in saved["translations"]]
    references = [t["reference"] for t in saved["translations"]]
    assert len(hypotheses) == 8 and references == [pair[1] for pair in PAIRS[7::97][:8]]
    assert output.with_suffix(".hyp.txt").read_text().splitlines() == hypotheses
    assert saved["sacrebleu"] == round(sacrebleu.corpus_bleu(hypotheses, [references]).score, 2)
    assert saved["chrf"] == round(sacrebleu.corpus_chrf(hypotheses, [references]).score, 2)
    assert (saved["settings"]["num_beams"], saved["settings"]["length_penalty"]) == (2, 0.6)
    assert result["sacrebleu"] == saved["sacrebleu"]
    numbers = {key for key, value in saved.items() if isinstance(value, (int, float))}
    assert numbers == {"sacrebleu", "chrf"}  # what scripts/publish.py reads as the model card's metrics

    # batched beam search gives what one sentence at a time gives
    model = AutoModelForSeq2SeqLM.from_pretrained(output_dir / "final").eval()
    tokenizer = AutoTokenizer.from_pretrained(output_dir / "final")
    sources = [t["source"] for t in saved["translations"]]
    one_by_one = [translate(model, tokenizer, [s], num_beams=2, length_penalty=0.6)[0]
                  for s in sources]
    assert one_by_one == hypotheses


def test_more_beams_than_vocabulary_is_refused_before_training(tmp_path, write_translation_corpus, translation_args,
                                                               run_translation):
    """--num_beams 1000 with a 150-token vocabulary: refused once the tokenizer is known, before any step (it used to
    train, then run every evaluation 100 times as long)."""
    argv = translation_args(write_translation_corpus(tmp_path / "data"), tmp_path / "run", "--max_steps", "2",
                            "--num_beams", "1000")
    with pytest.raises(ArgumentError, match="--num_beams 1000 is more than the 1?[0-9]{2} tokens of the vocabulary"):
        run_translation(argv)
    assert not (tmp_path / "run" / "checkpoints").exists()
