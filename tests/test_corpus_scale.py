"""The data path for corpora larger than memory (docs/large-corpora.md), on tiny corpora: a large corpus is
tokenized by several processes and a second load reads it from the cache without reading the text or tokenizing;
the MLM blocks cross document boundaries with [SEP] and lose no token; a resumed run goes on mid-epoch without
reading or tokenizing the corpus; tokenizers train from the dataset in batches, never row by row; batches are cut
from the lengths alone; the benchmark's corpora are distinct and aligned. The benchmark itself
(scripts/benchmark_corpus.py) is not run here: its figures are in docs/large-corpora.md; its reference corpora come
from --data_dir."""

import gzip
import json
import re
import time
from pathlib import Path
from types import SimpleNamespace

import datasets
import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from vanilla_transformer.scripts.training import mlm_data
from vanilla_transformer.scripts import benchmark_corpus, pretrain_mlm, train_tokenizer, train_translation
from vanilla_transformer.scripts.benchmarking import corpora, processes
from vanilla_transformer.tokenization import train_bpe_tokenizer, train_wordpiece_tokenizer
from vanilla_transformer.scripts.training import translation_data
from vanilla_transformer.scripts.training.batching import token_batches
from vanilla_transformer.scripts.training.run import RunContext
from vanilla_transformer.scripts.training.translation_data import CorpusArguments, load_parallel, tokenize_pairs


def never(*args, **kwargs):
    raise AssertionError("called: its work should have been read from the cache (or not done at all)")


def arrow_files() -> dict[Path, int]:
    """Every Arrow file of the datasets cache, with its modification time."""
    return {path: path.stat().st_mtime_ns for path in Path(datasets.config.HF_DATASETS_CACHE).rglob("*.arrow")}


def test_a_large_corpus_is_tokenized_by_several_processes_and_loaded_again_without_reading_or_tokenizing(
        tmp_path, monkeypatch):
    sources = [f"der Hund {i} läuft {'schnell ' * (i % 5)}" for i in range(400)]
    targets = [f"the dog {i} runs {'fast ' * (i % 7)}" for i in range(400)]
    (tmp_path / "train.de").write_text("\n".join(sources) + "\n")
    (tmp_path / "train.en").write_text("\n".join(targets) + "\n")
    tokenizer = train_bpe_tokenizer(sources + targets, vocab_size=60, show_progress=False)
    monkeypatch.setattr(translation_data, "map_processes", lambda rows: 2)  # as for a corpus of millions of pairs

    tokenized = tokenize_pairs(load_parallel(str(tmp_path / "train"), CorpusArguments()), tokenizer)
    names = sorted(Path(f["filename"]).name for f in tokenized.cache_files)
    assert len(names) == 2 and all(name.startswith("tokenized-") and "_of_00002" in name for name in names)
    assert tokenized["input_ids"] == tokenizer(sources)["input_ids"]  # each pair once, in order
    assert tokenized["labels"] == tokenizer(targets)["input_ids"]
    assert tokenized.features["input_ids"].feature.dtype == "int32"

    written = arrow_files()
    monkeypatch.setattr(translation_data, "text_lines", never)
    monkeypatch.setattr(translation_data, "_tokenize_batch", never)
    monkeypatch.setattr(translation_data, "map_processes", lambda rows: None)  # another machine: still found
    again = tokenize_pairs(load_parallel(str(tmp_path / "train"), CorpusArguments()), tokenizer)
    assert again["input_ids"] == tokenized["input_ids"] and arrow_files() == written


def test_mlm_blocks_cross_document_boundaries_lose_no_token_and_come_from_the_cache_the_second_time(
        tmp_path, monkeypatch, mlm_documents):
    documents = mlm_documents(300, seed=3)
    (tmp_path / "train.txt").write_text("\n".join(documents) + "\n")
    (tmp_path / "val.txt").write_text("\n".join(documents[:20]) + "\n")
    args, _ = pretrain_mlm.parse_args(["--train_file", str(tmp_path / "train.txt"), "--validation_file",
                                       str(tmp_path / "val.txt"), "--output_dir", str(tmp_path / "o"),
                                       "--max_steps", "1"])
    tokenizer = train_wordpiece_tokenizer(documents, vocab_size=80, show_progress=False)
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    monkeypatch.setattr(mlm_data, "map_processes", lambda rows: 2)

    blocks = mlm_data.tokenize_blocks(mlm_data.load_texts(args)["train"], tokenizer, block_size=24,
                                          whole_word_mask=False, documents_per_group=100)
    assert len(blocks.cache_files) == 2  # one file per process
    ids = blocks["input_ids"]
    expected = [token for text in documents for token in [*tokenizer(text, add_special_tokens=False)["input_ids"],
                                                          sep]]
    assert all(block[0] == cls for block in ids)
    assert [token for block in ids for token in block[1:]] == expected  # every token once, in order
    crossing = [block for block in ids if sep in block[1:-1]]  # a document ends and the next begins inside it
    assert len(crossing) > len(ids) / 2
    # full blocks, but the last of each group of 100 documents, or of a process's share (150 documents each)
    assert sum(len(block) < 24 for block in ids) <= 4
    lengths = mlm_data.block_lengths(blocks)
    assert isinstance(lengths, np.ndarray) and lengths.tolist() == [len(block) for block in ids]

    written = arrow_files()
    monkeypatch.setattr(mlm_data, "text_lines", never)
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "tokenizer")  # as a resumed run has it: another object
    again = mlm_data.tokenize_blocks(mlm_data.load_texts(args)["train"], reloaded, block_size=24,
                                         whole_word_mask=False, documents_per_group=100)
    assert again["input_ids"] == ids and arrow_files() == written


def test_resumed_runs_go_on_mid_epoch_without_reading_or_tokenizing_the_corpus(
        tmp_path, monkeypatch, write_translation_corpus, translation_args, run_translation, write_mlm_corpus,
        mlm_args, tiny_model_args, run_mlm):
    translation = translation_args(write_translation_corpus(tmp_path / "parallel"), tmp_path / "translation",
                                   "--max_steps", "8")
    mlm = mlm_args(write_mlm_corpus(tmp_path / "text"), tmp_path / "mlm", *tiny_model_args(), "--max_steps", "8")
    started = time.time()
    with processes.noting_the_first_batch({}) as noted:  # the benchmark's probe, on the way
        assert run_translation([*translation, "--max_steps_this_run", "2"]).global_step == 2
    assert started < noted["first_batch_time"] < time.time()
    assert torch.utils.data.DataLoader.__iter__.__name__ == "__iter__"  # put back
    assert run_mlm([*mlm, "--max_steps_this_run", "2"]).global_step == 2

    written = arrow_files()
    for module in (translation_data, mlm_data):
        monkeypatch.setattr(module, "text_lines", never)
    monkeypatch.setattr(translation_data, "_tokenize_batch", never)
    monkeypatch.setattr(datasets.Dataset, "__iter__", never)  # no reading row by row either
    for run, argv in ((run_translation, translation), (run_mlm, mlm)):
        resumed = run([*argv, "--max_steps_this_run", "1", "--resume"])
        assert (resumed.global_step, resumed.epoch) == (3, 0)  # mid-epoch: an epoch has more than 3 steps
    assert arrow_files() == written  # nothing tokenized: a tokenizing map writes its result


def a_fresh_run(output_dir: Path) -> RunContext:
    """What a fresh run's tokenizer step sees: the main process, no checkpoint to resume."""
    return RunContext(accelerator=SimpleNamespace(is_main_process=True), loop=None, output_dir=output_dir, resume=None)


def test_tokenizers_train_from_a_dataset_in_batches_never_row_by_row(tmp_path, monkeypatch, mlm_documents):
    documents = mlm_documents(60, seed=4)
    pairs = datasets.Dataset.from_dict({"source": documents, "target": [text.upper() for text in documents]})
    texts = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": documents}),
                                  "validation": datasets.Dataset.from_dict({"text": documents[:5]})})
    monkeypatch.setattr(datasets.Dataset, "__iter__", never)

    args = train_translation.TranslationArguments(train_split="t", validation_split="v", vocab_size=60)
    bpe = train_translation.get_tokenizer(args, pairs, pairs, a_fresh_run(tmp_path / "translation"))
    assert bpe.unk_token_id not in bpe(documents[0].upper())["input_ids"]  # the target side was read too
    mlm, _ = pretrain_mlm.parse_args(["--train_file", "t", "--validation_file", "v", "--output_dir", "o",
                                      "--max_steps", "1", "--vocab_size", "60"])
    wordpiece = pretrain_mlm.get_tokenizer(mlm, texts, a_fresh_run(tmp_path / "mlm"))
    assert wordpiece.unk_token_id not in wordpiece(documents[0])["input_ids"]
    (tmp_path / "hub").mkdir()
    (tmp_path / "hub" / "train.jsonl").write_text("".join(json.dumps({"text": text}) + "\n" for text in documents))
    trained = train_tokenizer.run(train_tokenizer.TokenizerArguments(
        output_dir=str(tmp_path / "from-dataset"), kind="wordpiece", vocab_size=60,
        dataset_name=str(tmp_path / "hub")))
    # every text read (ties make the trainers' vocabularies differ from run to run: no comparison of the two)
    assert all(trained.unk_token_id not in ids for ids in trained(documents)["input_ids"])


def test_batches_are_cut_greedily_from_the_lengths_alone():
    def plain_rule(lengths, max_tokens):  # the definition: in length order, add examples while the padded batch fits
        batches, batch, longest = [], [], 0
        for index in np.argsort(lengths, kind="stable").tolist():
            if batch and max(longest, lengths[index]) * (len(batch) + 1) > max_tokens:
                batches.append(batch)
                batch, longest = [], 0
            batch.append(index)
            longest = max(longest, int(lengths[index]))
        return batches + [batch]

    rng = np.random.default_rng(0)
    for low, high, max_tokens in ((1, 40, 120), (5, 6, 64), (1, 200, 4096), (30, 31, 30), (1, 2, 7)):
        lengths = rng.integers(low, high, size=3000).astype(np.int32)  # as read from a dataset's length column
        assert token_batches(lengths, max_tokens, seed=1, epoch=0, shuffle=False) == plain_rule(lengths, max_tokens)


def test_the_benchmark_corpora_are_distinct_and_aligned_and_its_arguments_checked(tmp_path):
    quick = benchmark_corpus.CorpusBenchmarkArguments(quick=True, pairs=[4_500_000])
    assert quick.pairs == benchmark_corpus.QUICK["pairs"] and quick.text_mb == benchmark_corpus.QUICK["text_mb"]
    with pytest.raises(ValueError, match="--families wmt: choose from translation, mlm"):
        benchmark_corpus.CorpusBenchmarkArguments(families=["wmt"])

    multi30k = tmp_path / "multi30k"
    multi30k.mkdir()
    for lang in ("de", "en"):
        with gzip.open(multi30k / f"train.{lang}.gz", "wt") as handle:
            handle.writelines(f"{lang}{i}\n" for i in range(30))
    de, en = corpora.make_pairs(multi30k, 500, tmp_path / "pairs")
    pairs = list(zip(de.read_text().splitlines(), en.read_text().splitlines()))
    assert len(pairs) == len(set(pairs)) == 500
    for source, target in pairs:
        first, second = source.split()
        assert target == f"en{first[2:]} en{second[2:]}" and first != second  # pairs i and j, in both languages
    with pytest.raises(ValueError, match="at most 870 distinct pairs from 30"):
        corpora.make_pairs(multi30k, 871, tmp_path / "too-many")

    wikitext = tmp_path / "wikitext2"
    wikitext.mkdir()
    sentences = [f"Sentence {i} says a thing ." for i in range(40)]
    (wikitext / "valid.txt").write_text(" = Title = \n\n " + " ".join(sentences[:30]) + " \n")
    (wikitext / "test.txt").write_text(" " + " ".join(sentences[30:]) + " \n")
    count = corpora.make_text(wikitext, 0.01, tmp_path / "text.txt")
    documents = (tmp_path / "text.txt").read_text().splitlines()
    assert len(documents) == len(set(documents)) == count and (tmp_path / "text.txt").stat().st_size >= 10_000
    for document in documents:  # whole sentences, as many as a paragraph has (30 or 10); no section title
        assert re.fullmatch(r"Sentence \d+ says a thing \.( Sentence \d+ says a thing \.)*", document)
        assert document.count("Sentence") in (10, 30)


def test_the_corpus_benchmark_names_a_missing_reference_corpus_and_the_option_before_any_work(tmp_path, capsys):
    (tmp_path / "corpora" / "multi30k").mkdir(parents=True)  # the translation corpus is there, WikiText-2 is not
    for name in ("train.de.gz", "train.en.gz"):
        (tmp_path / "corpora" / "multi30k" / name).write_bytes(gzip.compress(b"ein Hund\n"))
    with pytest.raises(SystemExit) as stopped:
        benchmark_corpus.main(["--quick", "--data_dir", str(tmp_path / "corpora"), "--output_dir",
                               str(tmp_path / "out"), "--work_dir", str(tmp_path / "work")])
    assert stopped.value.code == 1
    message = capsys.readouterr().err
    assert message.count("\n") == 1 and f"--data_dir {tmp_path / 'corpora'} " in message
    assert "no wikitext2/valid.txt there" in message
    assert not (tmp_path / "out").exists() and not (tmp_path / "work").exists()
