"""scripts/pretrain_mlm.py with a tiny BERT on a few hundred lines of templated text: the blocks cover every token,
whole-word masking works on blocks, a few dozen steps lower the validation perplexity, the final folder loads with
remote code and answers fill-mask, continued pretraining and fine-tuning start from it, and a stopped and resumed
run ends with the weights of an uninterrupted one (the masks come from the checkpointed RNG)."""

import json
import math
import os
import subprocess
from pathlib import Path

import datasets
import pytest
import safetensors.torch
import torch
from accelerate import Accelerator
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from vanilla_transformer.scripts.training import mlm_data, mlm_arguments
from vanilla_transformer.modeling import VanillaBertConfig, VanillaBertForMaskedLM
from vanilla_transformer.scripts import finetune_classification, pretrain_mlm
from vanilla_transformer.tokenization import WholeWordMaskCollator, train_wordpiece_tokenizer
from vanilla_transformer.scripts.training.evaluation import mean_loss

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
SENTENCE = "the cat eats [MASK] in the garden ."  # the templated text of conftest's mlm_documents

def weights(folder: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(folder / "model.safetensors")


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, mlm_args, run_mlm, tiny_model_args, write_mlm_corpus):
    """A 40-step run from scratch, evaluated every 10 steps."""
    root = tmp_path_factory.mktemp("mlm")
    corpus = write_mlm_corpus(root / "data")
    outcome = run_mlm(mlm_args(corpus, root / "run", *tiny_model_args(), "--max_steps", "40", "--eval_steps", "10"))
    return corpus, root / "run", outcome


def test_blocks_cover_every_token_once_and_open_with_cls(tmp_path, mlm_args, mlm_documents, write_mlm_corpus):
    texts = mlm_documents(50, seed=2)
    tokenizer = train_wordpiece_tokenizer(texts, vocab_size=70, min_frequency=1, show_progress=False)
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    blocks = mlm_data.tokenize_blocks(datasets.Dataset.from_dict({"text": texts}), tokenizer, block_size=16,
                                          whole_word_mask=True, documents_per_group=7)
    ids = blocks["input_ids"]
    # every document, closed by [SEP], in order, each token exactly once, after the [CLS] opening each block
    expected = [token for text in texts for token in [*tokenizer(text, add_special_tokens=False)["input_ids"], sep]]
    assert all(block[0] == cls for block in ids)
    assert [token for block in ids for token in block[1:]] == expected
    # full blocks, but for the last of each group of 7 documents
    groups = [expected_len for start in range(0, 50, 7) for expected_len in [sum(
        len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1 for text in texts[start : start + 7])]]
    assert len(ids) == sum(math.ceil(tokens / 15) for tokens in groups)
    assert sorted(len(block) for block in ids)[len(groups):] == [16] * (len(ids) - len(groups))
    assert blocks["length"] == [len(block) for block in ids]
    for block, special, offsets in zip(ids, blocks["special_tokens_mask"], blocks["offset_mapping"]):
        assert special == [int(token in (cls, sep)) for token in block] and len(offsets) == len(block)

    # local files: one document per line, blank and whitespace-only lines skipped
    corpus = write_mlm_corpus(tmp_path)
    args, _ = pretrain_mlm.parse_args(mlm_args(corpus, tmp_path / "out", "--max_steps", "1"))
    loaded = mlm_data.load_texts(args)
    assert loaded["train"]["text"] == mlm_documents(300, seed=0) and len(loaded["validation"]) == 40

    # a dataset (folders here, as Hub ids would be): its split names and text column, other columns dropped
    for name, column in (("hub", "content"), ("hub2", "text")):
        (tmp_path / name).mkdir()
        for split, rows in (("train", texts[:30]), ("test", ["", *texts[30:]])):
            lines = "".join(json.dumps({column: text, "id": i}) + "\n" for i, text in enumerate(rows))
            (tmp_path / name / f"{split}.jsonl").write_text(lines)
    common = ["--validation_split", "test", "--output_dir", "o", "--max_steps", "1"]
    for argv in (["--dataset_name", str(tmp_path / "hub"), "--text_column", "content"],
                 ["--dataset_name", str(tmp_path / "hub2")]):
        loaded = mlm_data.load_texts(pretrain_mlm.parse_args([*argv, *common])[0])
        assert loaded["train"]["text"] == texts[:30] and loaded["validation"]["text"] == texts[30:]
        assert loaded["train"].column_names == ["text"]
    with pytest.raises(ValueError, match=r"has no column 'text'; its columns are \['content', 'id'\]"):
        mlm_data.load_texts(pretrain_mlm.parse_args(["--dataset_name", str(tmp_path / "hub"), *common])[0])


def test_whole_word_masking_of_blocks_masks_every_piece_of_a_word_and_no_special_token():
    texts = ["unbelievably tall giraffes", "zebras graze peacefully"] * 3
    tokenizer = train_wordpiece_tokenizer(texts, vocab_size=40, min_frequency=1, show_progress=False)
    blocks = mlm_data.tokenize_blocks(datasets.Dataset.from_dict({"text": texts}), tokenizer, block_size=12,
                                          whole_word_mask=True)
    args, _ = pretrain_mlm.parse_args(["--train_file", "t", "--validation_file", "v", "--output_dir", "o",
                                       "--max_steps", "1", "--whole_word_mask", "--mlm_probability", "0.4"])
    collate = mlm_data.make_collator(tokenizer, args, seed=0)
    assert isinstance(collate, WholeWordMaskCollator)
    features = blocks.select_columns(mlm_data.collator_columns(args))
    batch = collate([features[i] for i in range(len(features))])
    masked = batch["labels"] != -100
    assert masked.any()
    for row, block in enumerate(blocks["input_ids"]):
        pieces = tokenizer.convert_ids_to_tokens(block)
        words, word = [], []  # positions of each word: a "##" piece continues it; [CLS] and [SEP] end it
        for position, piece in enumerate(pieces):
            if piece.startswith("##") and word:
                word.append(position)
            else:
                words.append(word)
                word = [] if piece in ("[CLS]", "[SEP]") else [position]
        words.append(word)
        for word in filter(None, words):
            assert len({bool(masked[row, p]) for p in word}) == 1, [pieces[p] for p in word]  # all or none
        special = [p for p, piece in enumerate(pieces) if piece in ("[CLS]", "[SEP]")]
        assert not masked[row, special].any()


def test_a_few_dozen_steps_lower_the_validation_perplexity_and_leave_a_hub_folder(pretrained, run_without_package):
    _, output_dir, outcome = pretrained
    assert outcome.completed and outcome.global_step == 40
    evaluations = [json.loads(line) for line in (output_dir / "log.jsonl").read_text().splitlines()]
    evaluations = [record for record in evaluations if "val_loss" in record]
    assert [record["step"] for record in evaluations] == [10, 20, 30, 40]
    for record in evaluations:
        assert record["val_perplexity"] == pytest.approx(math.exp(record["val_loss"]), rel=1e-3)
    first, last = evaluations[0], evaluations[-1]
    assert last["val_loss"] < first["val_loss"] - 0.1 and last["val_perplexity"] < 50  # 100 for a uniform guess
    assert outcome.metrics == {key: last[key] for key in ("val_loss", "val_perplexity", "val_accuracy",
                                                          "val_frequency_baseline")}
    assert 0 < last["val_frequency_baseline"] <= last["val_accuracy"] < 1  # 40 steps: still on the plateau
    assert (output_dir / "training_curves.png").stat().st_size > 10_000

    final = output_dir / "final"
    config = json.loads((final / "config.json").read_text())
    assert config["sparse_prediction"] and config["hidden_size"] == 32
    assert config["auto_map"]["AutoModelForMaskedLM"] == "modeling_vanilla_bert.VanillaBertForMaskedLM"
    # As a Hub user has it: transformers alone, the folder's own code
    remote = run_without_package(
        f"""
        import json
        from transformers import AutoModelForMaskedLM, pipeline
        model = AutoModelForMaskedLM.from_pretrained({str(final)!r}, trust_remote_code=True)
        fill = pipeline("fill-mask", model={str(final)!r}, trust_remote_code=True)
        answers = fill("{SENTENCE}", top_k=3)
        print(json.dumps({{"class": type(model).__name__, "pipeline_class": type(fill.model).__name__,
                          "answers": [[a["token"], a["score"]] for a in answers]}}))
        """,
        cwd=str(final),
    )
    assert remote["class"] == remote["pipeline_class"] == "VanillaBertForMaskedLM"
    # the answers are what our package's model computes: the top of the softmax over the vocabulary at [MASK]
    tokenizer = AutoTokenizer.from_pretrained(final)
    batch = tokenizer(SENTENCE, return_tensors="pt")
    with torch.no_grad():
        logits = VanillaBertForMaskedLM.from_pretrained(final).eval()(**batch).logits  # (1, T, V)
    top = logits[0, batch["input_ids"][0].tolist().index(tokenizer.mask_token_id)].softmax(-1).topk(3)
    assert [token for token, _ in remote["answers"]] == top.indices.tolist()
    torch.testing.assert_close(torch.tensor([score for _, score in remote["answers"]]), top.values)


def test_continued_pretraining_and_fine_tuning_start_from_the_checkpoint(pretrained, tmp_path, mlm_args, run_mlm):
    corpus, output_dir, _ = pretrained
    final = output_dir / "final"
    # a learning rate that changes nothing: the weights must come back as loaded; whole-word masking on the way
    outcome = run_mlm(mlm_args(corpus, tmp_path / "more", "--model_name_or_path", str(final), "--whole_word_mask",
                           "--no_sparse_prediction", "--learning_rate", "1e-12", "--max_steps", "2"))
    assert outcome.completed and 0 < outcome.metrics["val_loss"]
    assert not (tmp_path / "more" / "tokenizer").exists()  # the checkpoint's tokenizer was used
    assert not json.loads((tmp_path / "more" / "final" / "config.json").read_text())["sparse_prediction"]
    continued, original = weights(tmp_path / "more" / "final"), weights(final)
    assert continued.keys() == original.keys()
    for key in original:
        torch.testing.assert_close(continued[key], original[key])

    # finetune_classification.py takes the folder: the encoder comes from the checkpoint, the classifier is new
    (tmp_path / "test.tsv").write_text("sentence\tlabel\nthe cat eats hay in the barn .\t1\nthe dog eats meat .\t0\n")
    finetune_classification.run(["--model_name_or_path", str(final), "--test_file", str(tmp_path / "test.tsv"),
                                  "--output_dir", str(tmp_path / "classifier")])
    classifier = AutoModelForSequenceClassification.from_pretrained(tmp_path / "classifier")
    torch.testing.assert_close(classifier.bert.embeddings.embed_tokens.weight,
                               original["bert.embeddings.embed_tokens.weight"])


def test_stopped_and_resumed_pretraining_ends_with_the_same_weights(tmp_path, mlm_args, run_mlm, tiny_model_args,
                                                                    write_mlm_corpus):
    corpus = write_mlm_corpus(tmp_path / "data")
    common = [*tiny_model_args(), "--max_steps", "6", "--save_steps", "3"]  # dropout 0.1 on, masks drawn each step
    first = run_mlm(mlm_args(corpus, tmp_path / "split", *common, "--max_steps_this_run", "4"))
    assert not first.completed and first.global_step == 4
    second = run_mlm(mlm_args(corpus, tmp_path / "split", *common, "--resume"))  # reuses the tokenizer it trained
    # The same tokenizer for the reference run: WordPiece training is not deterministic (token ids vary run to run)
    full = run_mlm(mlm_args(corpus, tmp_path / "full", *common, "--tokenizer_name",
                            str(tmp_path / "split" / "tokenizer")))
    assert full.completed and second.completed and second.global_step == full.global_step == 6
    resumed, uninterrupted = weights(second.checkpoint), weights(full.checkpoint)
    assert all(torch.equal(resumed[key], uninterrupted[key]) for key in uninterrupted)
    assert second.metrics == full.metrics


def test_two_processes_evaluate_the_same_masked_positions_as_one(tmp_path, launch_command, mlm_args, tiny_model_args,
                                                                 write_mlm_corpus):
    """Under `accelerate launch` with 2 processes: each process scores its share of the validation batches, whose
    masks were drawn once from the seed; the reduced loss equals one process scoring all of them."""
    corpus = write_mlm_corpus(tmp_path / "data")
    argv = mlm_args(corpus, tmp_path / "two", *tiny_model_args(), "--max_steps", "4", "--eval_steps", "2")
    process = subprocess.run(
        [*launch_command(2), str(SCRIPTS / "pretrain_mlm.py"), *argv],
        env={**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"},
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=180,
    )
    assert process.returncode == 0, (process.stdout + process.stderr)[-6000:]
    assert "global batch = 2 processes x 1 micro-batches x 8 blocks" in process.stdout
    last = [json.loads(line) for line in (tmp_path / "two" / "log.jsonl").read_text().splitlines()][-1]
    assert last["step"] == 4

    args, loop = pretrain_mlm.parse_args(argv)
    final = tmp_path / "two" / "final"
    tokenizer = AutoTokenizer.from_pretrained(final)
    blocks = mlm_data.tokenize_blocks(mlm_data.load_texts(args)["validation"], tokenizer, args.block_size,
                                          whole_word_mask=False)
    batches = pretrain_mlm.masked_validation_batches(blocks, tokenizer, args, seed=loop.seed)
    loss = mean_loss(Accelerator(cpu=True), VanillaBertForMaskedLM.from_pretrained(final).eval(), batches)
    assert last["val_loss"] == pytest.approx(loss, abs=1e-4)


def test_arguments_are_checked_and_help_explains(tmp_path, capsys):
    files = ["--train_file", "t.txt", "--validation_file", "v.txt", "--output_dir", str(tmp_path), "--max_steps", "1"]
    with pytest.raises(ValueError, match="--hidden_size: the size of ckpt is fixed by its config"):
        pretrain_mlm.parse_args([*files, "--model_name_or_path", "ckpt", "--hidden_size", "64"])
    with pytest.raises(ValueError, match="give --train_file and --validation_file, or --dataset_name"):
        pretrain_mlm.parse_args(["--train_file", "t.txt", "--output_dir", str(tmp_path), "--max_steps", "1"])
    with pytest.raises(SystemExit):
        pretrain_mlm.parse_args(["--help"])
    text = capsys.readouterr().out
    for expected in ("--block_size", "--whole_word_mask", "--no_sparse_prediction", "--resume", "perplexity",
                     "--from_scratch", "wikitext2/test.txt"):
        assert expected in text


def test_masked_token_scores_count_the_masked_positions_and_the_frequency_baseline():
    """Top-1 accuracy over the masked positions only (labels != -100), the sparse head's rows matched to them in
    order; the frequency baseline always answers the training text's most frequent token, special tokens left out."""
    assert mlm_data.most_frequent_token([[2, 7, 9, 9, 3], [2, 7, 3]], [[1, 0, 0, 0, 1], [1, 0, 1]]) in (7, 9)
    assert mlm_data.most_frequent_token([[2, 9, 9, 3], [2, 7, 3]], [[1, 0, 0, 1], [1, 0, 1]]) == 9  # not [CLS] 2
    torch.manual_seed(0)
    config = VanillaBertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=32, max_position_embeddings=32, sparse_prediction=True)
    model = VanillaBertForMaskedLM(config).eval()
    input_ids = torch.randint(5, 50, (3, 12))
    labels = torch.full_like(input_ids, -100)
    labels[0, 2], labels[1, 5], labels[1, 9], labels[2, 0] = 7, 9, 7, 11
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}
    with torch.no_grad():
        dense = VanillaBertForMaskedLM(config).eval()
        dense.load_state_dict(model.state_dict())
        dense.config.sparse_prediction = False
        full = dense(input_ids=input_ids, attention_mask=batch["attention_mask"]).logits  # (B, T, V)
    predicted = full[labels != -100].argmax(-1)
    scores = mlm_data.masked_token_scores(mlm_data.masked_token_sums(model, [batch], frequent_token=7))
    assert scores["val_accuracy"] == pytest.approx((predicted == labels[labels != -100]).float().mean().item())
    assert scores["val_frequency_baseline"] == 0.5  # 7 is the answer at 2 of the 4 positions
    loss = torch.nn.functional.cross_entropy(full[labels != -100], labels[labels != -100]).item()
    assert scores["val_loss"] == pytest.approx(loss, abs=1e-4)
    assert scores["val_perplexity"] == pytest.approx(math.exp(loss), rel=1e-3)


def test_one_cycle_schedule_ends_with_the_run_by_steps_or_by_the_clock(tmp_path, mlm_args, run_mlm, tiny_model_args,
                                                                       write_mlm_corpus):
    """--lr_schedule one_cycle in the training loop: the rate of step k is the lower of the warmup line and the line
    from the peak to 0 at the run's end (here --max_steps 8); with a time budget alone it follows the clock."""
    corpus = write_mlm_corpus(tmp_path / "data")
    common = [*tiny_model_args(), "--lr_schedule", "one_cycle", "--learning_rate", "1e-3", "--warmup_steps", "2",
              "--logging_steps", "1"]
    outcome = run_mlm(mlm_args(corpus, tmp_path / "steps", *common, "--max_steps", "8"))
    rates = [r["lr"] for r in map(json.loads, (tmp_path / "steps" / "log.jsonl").read_text().splitlines()) if "lr" in r]
    assert rates == pytest.approx([1e-3 * min(k / 2, 1, 1 - (k - 1) / 8) for k in range(1, 9)])
    assert outcome.stop_reason == "--max_steps 8"

    outcome = run_mlm(mlm_args(corpus, tmp_path / "clock", *common, "--max_train_minutes", "0.05"))
    rates = [r["lr"] for r in map(json.loads, (tmp_path / "clock" / "log.jsonl").read_text().splitlines()) if "lr" in r]
    assert outcome.stop_reason == "--max_train_minutes 0.05"
    after_warmup = rates[1:]
    assert after_warmup == sorted(after_warmup, reverse=True) and rates[-1] < rates[1] <= 1e-3


def test_budget_preset_sets_the_recipe_and_options_given_win(tmp_path):
    files = ["--train_file", "t.txt", "--validation_file", "v.txt", "--output_dir", str(tmp_path)]
    args, loop = pretrain_mlm.parse_args([*files, "--preset", "budget"])
    recipe = mlm_arguments.BUDGET_PRESET
    assert (args.vocab_size, args.block_size, args.batch_size, args.dropout, args.pre_ln) == (
        recipe["vocab_size"], recipe["block_size"], recipe["batch_size"], 0.0, True)
    assert (loop.lr_schedule, loop.learning_rate, loop.max_train_minutes) == (
        "one_cycle", recipe["learning_rate"], recipe["max_train_minutes"])
    config = pretrain_mlm.model_config(args)
    assert (config.hidden_size, config.num_hidden_layers, config.hidden_dropout_prob,
            config.attention_probs_dropout_prob, config.normalize_before, config.initializer_range) == (
        recipe["hidden_size"], recipe["num_hidden_layers"], 0.0, 0.0, True, recipe["initializer_range"])
    args, loop = pretrain_mlm.parse_args([*files, "--preset", "budget", "--learning_rate", "1e-3",
                                          "--block_size", "128"])
    assert (loop.learning_rate, args.block_size, loop.lr_schedule) == (1e-3, 128, "one_cycle")
    args, loop = pretrain_mlm.parse_args([*files, "--max_steps", "1"])  # without it: BERT's defaults
    assert (args.dropout, args.pre_ln, loop.lr_schedule) == (None, False, "inverse_sqrt")
    assert pretrain_mlm.model_config(args).hidden_dropout_prob == 0.1
    assert pretrain_mlm.model_config(args).initializer_range == 0.02
    args, _ = pretrain_mlm.parse_args([*files, "--preset", "budget", "--initializer_range", "0.03"])
    assert pretrain_mlm.model_config(args).initializer_range == 0.03
    # continuing a checkpoint: the preset's schedule and blocks apply, its model size, dropout and init do not
    args, loop = pretrain_mlm.parse_args([*files, "--preset", "budget", "--model_name_or_path", "ckpt"])
    assert (args.block_size, loop.lr_schedule, args.hidden_size, args.dropout, args.initializer_range) == (
        recipe["block_size"], "one_cycle", None, None, None)
    with pytest.raises(ValueError, match="--dropout: the size of ckpt is fixed by its config"):
        pretrain_mlm.parse_args([*files, "--preset", "budget", "--model_name_or_path", "ckpt", "--dropout", "0.1"])
    with pytest.raises(ValueError, match="--preset huge: choose from budget"):
        pretrain_mlm.parse_args([*files, "--preset", "huge", "--max_steps", "1"])


def _starting_logit_spread(hidden_size: int, heads: int, initializer_range: float) -> float:
    """The standard deviation of the first layer's attention logits q.k / sqrt(d) at initialisation, on unit-variance
    inputs (what the pre-LN norm hands the attention)."""
    torch.manual_seed(0)
    model = VanillaBertForMaskedLM(VanillaBertConfig(
        vocab_size=100, hidden_size=hidden_size, num_hidden_layers=1, num_attention_heads=heads,
        intermediate_size=4, normalize_before=True, initializer_range=initializer_range))
    attention = next(module for module in model.modules() if hasattr(module, "q_proj"))
    x = torch.nn.functional.layer_norm(torch.randn(64, hidden_size), (hidden_size,))
    d = hidden_size // heads
    with torch.no_grad():
        q = attention.q_proj(x).view(64, heads, d).transpose(0, 1)
        k = attention.k_proj(x).view(64, heads, d).transpose(0, 1)
        return float((q @ k.transpose(1, 2) / math.sqrt(d)).std())


def test_budget_initialisation_gives_a_narrow_model_bert_bases_starting_attention():
    """docs/mlm.md: BERT's 0.02 (chosen for 768-wide layers) starts a 128-wide model's attention logits ~6x closer
    together than BERT-base's; the preset's initializer_range brings them to BERT-base's spread."""
    bert_base = _starting_logit_spread(768, 12, 0.02)
    narrow = _starting_logit_spread(128, 2, 0.02)
    preset = _starting_logit_spread(mlm_arguments.BUDGET_PRESET["hidden_size"],
                                    mlm_arguments.BUDGET_PRESET["num_attention_heads"],
                                    mlm_arguments.BUDGET_PRESET["initializer_range"])
    assert narrow < bert_base / 4
    assert preset == pytest.approx(bert_base, rel=0.2)
