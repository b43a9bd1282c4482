"""Smoke test of scripts/finetune_classification.py on tiny models and a few rows: our checkpoint with a GLUE-style
TSV, and a Hugging Face BERT folder (converted on the fly) with JSON lines and string labels."""

import importlib.util
import json
from pathlib import Path

import pytest
import safetensors.torch
import torch
from conftest import tiny_bert_config
from transformers import AutoModelForSequenceClassification, BertConfig, BertForMaskedLM

from vanilla_transformer.modeling import VanillaBertForMaskedLM, VanillaBertForSequenceClassification
from vanilla_transformer.modeling.hub import save_for_hub
from vanilla_transformer.tokenization import train_wordpiece_tokenizer

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "finetune_classification.py"
ROWS = [
    ("it 's a charming and often affecting journey . ", 1),
    ('unflinchingly bleak and "desperate ', 0),  # an unbalanced quote, as in GLUE's TSVs
    ("the acting is wonderful", 1),
    ("a boring , tedious film", 0),
] * 4


def load_script():
    spec = importlib.util.spec_from_file_location("finetune_classification", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tokenizer():
    return train_wordpiece_tokenizer([text for text, _ in ROWS], vocab_size=80, min_frequency=1, show_progress=False)


def common_args(output_dir, **files):
    args = [
        "--output_dir",
        str(output_dir),
        "--max_train_samples",
        "12",
        "--per_device_train_batch_size",
        "4",
        "--num_train_epochs",
        "1",
        "--logging_steps",
        "1",
        "--seed",
        "0",
    ]
    for name, path in files.items():
        args += [f"--{name}", str(path)]
    return args


def test_finetune_our_checkpoint_on_tsv(tmp_path, tokenizer):
    for split in ("train", "dev", "test"):
        lines = ["sentence\tlabel"] + [f"{text}\t{label}" for text, label in ROWS]
        (tmp_path / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    checkpoint = tmp_path / "mlm"
    VanillaBertForMaskedLM(tiny_bert_config(vocab_size=len(tokenizer))).save_pretrained(checkpoint)
    tokenizer.save_pretrained(checkpoint)

    output = tmp_path / "out"
    args = common_args(
        output, train_file=tmp_path / "train.tsv", validation_file=tmp_path / "dev.tsv", test_file=tmp_path / "test.tsv"
    )
    results = load_script().main(["--model_name_or_path", str(checkpoint), "--max_seq_length", "12", *args])

    assert results["train"]["epoch"] == 1.0
    assert 0.0 <= results["test"]["test_accuracy"] <= 1.0 and "test_f1" in results["test"]
    assert json.loads((output / "results.json").read_text())["test"] == results["test"]
    config = json.loads((output / "config.json").read_text())
    assert config["auto_map"]["AutoModelForSequenceClassification"] == (
        "modeling_vanilla_bert.VanillaBertForSequenceClassification"
    )
    assert config["id2label"] == {"0": "0", "1": "1"}
    model = AutoModelForSequenceClassification.from_pretrained(output)
    assert type(model) is VanillaBertForSequenceClassification
    assert (output / "tokenizer.json").is_file() and (output / "modeling_vanilla_bert.py").is_file()


def test_finetune_hf_bert_folder_on_json_lines(tmp_path, tokenizer):
    names = {0: "negative", 1: "positive"}
    for split in ("train", "test"):
        lines = [json.dumps({"text": text, "sentiment": names[label]}) for text, label in ROWS]
        (tmp_path / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    checkpoint = tmp_path / "hf-bert"
    BertForMaskedLM(
        BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=37,
            max_position_embeddings=64,
        )
    ).save_pretrained(checkpoint)
    tokenizer.save_pretrained(checkpoint)

    output = tmp_path / "out"
    args = common_args(output, train_file=tmp_path / "train.jsonl", test_file=tmp_path / "test.jsonl")
    results = load_script().main(
        ["--model_name_or_path", str(checkpoint), "--text_column", "text", "--label_column", "sentiment", *args]
    )
    assert "test_accuracy" in results["test"]
    model = AutoModelForSequenceClassification.from_pretrained(output)
    assert type(model) is VanillaBertForSequenceClassification  # converted to ours
    assert model.config.id2label == names
    with torch.no_grad():
        assert model(**tokenizer(["a charming film"], return_tensors="pt")).logits.shape == (1, 2)


def test_from_scratch_keeps_the_architecture_and_tokenizer_and_draws_new_weights(tmp_path, tokenizer):
    """--from_scratch: the baseline of a pretraining comparison, for our folders (a Hub-ready one, with auto_map)
    and Hugging Face BERT folders alike."""
    ours, hf = tmp_path / "ours", tmp_path / "hf"
    save_for_hub(VanillaBertForMaskedLM(tiny_bert_config(vocab_size=len(tokenizer))), ours, tokenizer)
    BertForMaskedLM(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=37, max_position_embeddings=64)).save_pretrained(hf)
    tokenizer.save_pretrained(hf)
    script = load_script()
    for folder, key in ((ours, "bert.embeddings.embed_tokens.weight"), (hf, "bert.embeddings.word_embeddings.weight")):
        checkpoint = safetensors.torch.load_file(folder / "model.safetensors")[key]
        pretrained, _ = script.load_model_and_tokenizer(str(folder), ["neg", "pos"])
        scratch, scratch_tokenizer = script.load_model_and_tokenizer(str(folder), ["neg", "pos"], from_scratch=True)
        assert type(scratch) is type(pretrained) is VanillaBertForSequenceClassification
        assert {k: v.shape for k, v in scratch.state_dict().items()} == {
            k: v.shape for k, v in pretrained.state_dict().items()
        }
        assert scratch.config.id2label == {0: "neg", 1: "pos"}
        assert scratch_tokenizer.get_vocab() == tokenizer.get_vocab()
        torch.testing.assert_close(pretrained.bert.embeddings.embed_tokens.weight, checkpoint)
        fresh = scratch.bert.embeddings.embed_tokens.weight
        assert not torch.allclose(fresh, checkpoint) and abs(fresh[1:].std().item() - 0.02) < 0.004  # N(0, 0.02)

    (tmp_path / "test.tsv").write_text("\n".join(["sentence\tlabel"] + [f"{t}\t{y}" for t, y in ROWS]) + "\n")
    results = script.main(["--model_name_or_path", str(ours), "--from_scratch", "--test_file",
                           str(tmp_path / "test.tsv"), "--output_dir", str(tmp_path / "out")])
    assert results["args"]["from_scratch"] and "test_accuracy" in results["test"]
    saved = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out")
    checkpoint = safetensors.torch.load_file(ours / "model.safetensors")["bert.embeddings.embed_tokens.weight"]
    assert not torch.allclose(saved.bert.embeddings.embed_tokens.weight, checkpoint)


def test_accuracy_f1_metric():
    import evaluate

    metric = evaluate.load(str(SCRIPT.parent / "metrics" / "accuracy_f1"))
    # class 1: 2 true positives, 1 false positive, 1 false negative -> F1 = 4 / 6
    assert metric.compute(predictions=[1, 0, 1, 1], references=[1, 1, 1, 0]) == {"accuracy": 0.5, "f1": 4 / 6}
    # per-class F1: class 0 -> 0, class 1 -> 2/3, class 2 -> 1
    macro = metric.compute(predictions=[2, 0, 1], references=[2, 1, 1], average="macro")
    assert macro["f1"] == pytest.approx((0 + 2 / 3 + 1) / 3) and macro["accuracy"] == pytest.approx(2 / 3)


def test_help_explains(capsys):
    with pytest.raises(SystemExit):
        load_script().main(["--help"])
    text = capsys.readouterr().out
    assert "--max_train_samples" in text and "Hugging Face BERT" in text and "sst2" in text
    assert "--from_scratch" in text and "pretrain_mlm.py" in text
