"""Smoke test of scripts/finetune_classification.py on tiny models and a few rows: our checkpoint with a GLUE-style
TSV, and a Hugging Face BERT folder (converted on the fly) with JSON lines and string labels."""

import json
from pathlib import Path

import pytest
import safetensors.torch
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig, BertForMaskedLM

from vanilla_transformer.modeling import VanillaBertForMaskedLM, VanillaBertForSequenceClassification
from vanilla_transformer.modeling.hub import save_for_hub
from vanilla_transformer.scripts import finetune_classification
from vanilla_transformer.scripts.training.translation_eval import METRICS_DIR


def expected_scores(folder: Path, rows: list[tuple[str, int]], max_length: int | None = None) -> dict:
    """Accuracy and F1 (of class 1) of the saved model in `folder` on `rows`, computed here from its predictions."""
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    batch = tokenizer([text for text, _ in rows], padding=True, truncation=max_length is not None,
                      max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        predicted = model(**batch).logits.argmax(-1)
    labels = torch.tensor([label for _, label in rows])
    true_positives = int(((predicted == 1) & (labels == 1)).sum())
    wrong = int((predicted != labels).sum())
    return {"accuracy": (predicted == labels).float().mean().item(),
            "f1": 2 * true_positives / (2 * true_positives + wrong) if true_positives + wrong else 0.0}


@pytest.mark.parametrize("pooling", [None, "mean"])
def test_finetune_our_checkpoint_on_tsv(tmp_path, finetune_tokenizer, finetune_args, finetune_rows, tiny_bert_config,
                                        pooling):
    for split in ("train", "dev", "test"):
        lines = ["sentence\tlabel"] + [f"{text}\t{label}" for text, label in finetune_rows]
        (tmp_path / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    checkpoint = tmp_path / "mlm"
    VanillaBertForMaskedLM(tiny_bert_config(vocab_size=len(finetune_tokenizer))).save_pretrained(checkpoint)
    finetune_tokenizer.save_pretrained(checkpoint)

    output = tmp_path / "out"
    args = finetune_args(
        output, train_file=tmp_path / "train.tsv", validation_file=tmp_path / "dev.tsv", test_file=tmp_path / "test.tsv"
    )
    if pooling is not None:
        args += ["--classifier_pooling", pooling]
    results = finetune_classification.run(["--model_name_or_path", str(checkpoint), "--max_seq_length", "12", *args])

    assert results["train"]["epoch"] == 1.0
    expected = expected_scores(output, finetune_rows, max_length=12)  # the saved model's own scores on the test rows
    assert results["test"]["test_accuracy"] == pytest.approx(expected["accuracy"])
    assert results["test"]["test_f1"] == pytest.approx(expected["f1"])
    assert json.loads((output / "results.json").read_text())["test"] == results["test"]
    config = json.loads((output / "config.json").read_text())
    assert config["auto_map"]["AutoModelForSequenceClassification"] == (
        "modeling_vanilla_bert.VanillaBertForSequenceClassification"
    )
    assert config["id2label"] == {"0": "0", "1": "1"}
    assert config["classifier_pooling"] == (pooling or "cls")  # what the saved model reads, hence its scores above
    model = AutoModelForSequenceClassification.from_pretrained(output)
    assert type(model) is VanillaBertForSequenceClassification
    assert (output / "tokenizer.json").is_file() and (output / "modeling_vanilla_bert.py").is_file()


def test_finetune_hf_bert_folder_on_json_lines(tmp_path, finetune_tokenizer, finetune_args, finetune_rows):
    names = {0: "negative", 1: "positive"}
    for split in ("train", "test"):
        lines = [json.dumps({"text": text, "sentiment": names[label]}) for text, label in finetune_rows]
        (tmp_path / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    checkpoint = tmp_path / "hf-bert"
    BertForMaskedLM(
        BertConfig(
            vocab_size=len(finetune_tokenizer),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=37,
            max_position_embeddings=64,
        )
    ).save_pretrained(checkpoint)
    finetune_tokenizer.save_pretrained(checkpoint)

    output = tmp_path / "out"
    args = finetune_args(output, train_file=tmp_path / "train.jsonl", test_file=tmp_path / "test.jsonl")
    results = finetune_classification.run(
        ["--model_name_or_path", str(checkpoint), "--text_column", "text", "--label_column", "sentiment", *args]
    )
    expected = expected_scores(output, finetune_rows)  # classes in order: negative 0, positive 1
    assert results["test"]["test_accuracy"] == pytest.approx(expected["accuracy"])
    model = AutoModelForSequenceClassification.from_pretrained(output)
    assert type(model) is VanillaBertForSequenceClassification  # converted to ours
    assert model.config.id2label == names
    with torch.no_grad():
        assert model(**finetune_tokenizer(["a charming film"], return_tensors="pt")).logits.shape == (1, 2)


def test_from_scratch_keeps_the_architecture_and_tokenizer_and_draws_new_weights(
        tmp_path, finetune_tokenizer, finetune_rows, tiny_bert_config):
    """--from_scratch: the baseline of a pretraining comparison, for our folders (a Hub-ready one, with auto_map)
    and Hugging Face BERT folders alike."""
    ours, hf = tmp_path / "ours", tmp_path / "hf"
    save_for_hub(VanillaBertForMaskedLM(tiny_bert_config(vocab_size=len(finetune_tokenizer))), ours, finetune_tokenizer)
    BertForMaskedLM(BertConfig(vocab_size=len(finetune_tokenizer), hidden_size=32, num_hidden_layers=2,
                               num_attention_heads=4, intermediate_size=37, max_position_embeddings=64)
                    ).save_pretrained(hf)
    finetune_tokenizer.save_pretrained(hf)
    script = finetune_classification
    for folder, key in ((ours, "bert.embeddings.embed_tokens.weight"), (hf, "bert.embeddings.word_embeddings.weight")):
        checkpoint = safetensors.torch.load_file(folder / "model.safetensors")[key]
        pretrained, _ = script.load_model_and_tokenizer(str(folder), ["neg", "pos"])
        scratch, scratch_tokenizer = script.load_model_and_tokenizer(str(folder), ["neg", "pos"], from_scratch=True)
        assert type(scratch) is type(pretrained) is VanillaBertForSequenceClassification
        assert {k: v.shape for k, v in scratch.state_dict().items()} == {
            k: v.shape for k, v in pretrained.state_dict().items()
        }
        assert scratch.config.id2label == {0: "neg", 1: "pos"}
        assert scratch_tokenizer.get_vocab() == finetune_tokenizer.get_vocab()
        torch.testing.assert_close(pretrained.bert.embeddings.embed_tokens.weight, checkpoint)
        fresh = scratch.bert.embeddings.embed_tokens.weight
        assert not torch.allclose(fresh, checkpoint) and abs(fresh[1:].std().item() - 0.02) < 0.004  # N(0, 0.02)

    (tmp_path / "test.tsv").write_text("\n".join(["sentence\tlabel"] + [f"{t}\t{y}" for t, y in finetune_rows]) + "\n")
    results = script.run(["--model_name_or_path", str(ours), "--from_scratch", "--test_file",
                           str(tmp_path / "test.tsv"), "--output_dir", str(tmp_path / "out")])
    assert results["args"]["from_scratch"]
    expected = expected_scores(tmp_path / "out", finetune_rows)
    assert results["test"]["test_accuracy"] == pytest.approx(expected["accuracy"])
    saved = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out")
    checkpoint = safetensors.torch.load_file(ours / "model.safetensors")["bert.embeddings.embed_tokens.weight"]
    assert not torch.allclose(saved.bert.embeddings.embed_tokens.weight, checkpoint)


def test_accuracy_f1_metric():
    import evaluate

    metric = evaluate.load(str(METRICS_DIR / "accuracy_f1"))
    # class 1: 2 true positives, 1 false positive, 1 false negative -> F1 = 4 / 6
    assert metric.compute(predictions=[1, 0, 1, 1], references=[1, 1, 1, 0]) == {"accuracy": 0.5, "f1": 4 / 6}
    # per-class F1: class 0 -> 0, class 1 -> 2/3, class 2 -> 1
    macro = metric.compute(predictions=[2, 0, 1], references=[2, 1, 1], average="macro")
    assert macro["f1"] == pytest.approx((0 + 2 / 3 + 1) / 3) and macro["accuracy"] == pytest.approx(2 / 3)


def test_help_explains(capsys):
    with pytest.raises(SystemExit):
        finetune_classification.main(["--help"])
    text = capsys.readouterr().out
    assert "--max_train_samples" in text and "Hugging Face BERT" in text and "sst2" in text
    assert "--from_scratch" in text and "pretrain_mlm.py" in text


def test_the_trainer_takes_the_projects_optimizer_and_schedule(tmp_path, finetune_tokenizer, tiny_bert_config):
    """The one optimizer builder and schedule of vanilla_transformer.scripts.training.loop, with TrainingArguments' values:
    AdamW (0.9, 0.999, 1e-8), weight decay on matrices only, warmup then a linear decay to 0 over the run."""
    model = VanillaBertForSequenceClassification(tiny_bert_config(vocab_size=len(finetune_tokenizer), num_labels=2))
    args = finetune_classification.FinetuneArguments(model_name_or_path="unused", output_dir=str(tmp_path),
                                                     test_file="unused.tsv", learning_rate=1e-3, warmup_steps=0.2)
    trainer = finetune_classification.build_trainer(model, finetune_tokenizer, {}, args)
    trainer.create_optimizer_and_scheduler(num_training_steps=10)
    optimizer, scheduler = trainer.optimizer, trainer.lr_scheduler
    assert optimizer.defaults["betas"] == (0.9, 0.999) and optimizer.defaults["eps"] == 1e-8
    decay = {name: group["weight_decay"] for group in optimizer.param_groups for p in group["params"]
             for name, q in model.named_parameters() if q is p}
    assert decay == {name: 0.01 if p.ndim >= 2 else 0.0 for name, p in model.named_parameters()}
    rates = []
    for _ in range(10):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    # warmup 0.2 of 10 steps = 2 steps, then down by 1/8 of the peak a step
    assert rates == pytest.approx([1e-3 * f for f in (0.5, 1, 1, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8)])


def test_an_unknown_classifier_pooling_is_refused_before_any_work(tmp_path):
    from vanilla_transformer.scripts.training.errors import ArgumentError

    with pytest.raises(ArgumentError, match="--classifier_pooling max: choose one of cls, mean"):
        finetune_classification.run(["--model_name_or_path", str(tmp_path), "--output_dir", str(tmp_path / "out"),
                                     "--train_file", str(tmp_path / "t.tsv"), "--classifier_pooling", "max"])
