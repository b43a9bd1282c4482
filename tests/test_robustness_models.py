"""Bad input to the models and the tokenizer trainers gets a clear error (or a warning with counts), never a
traceback deep in torch or a silent wrong result: configs that cannot make a model, batches of the wrong shape or
type, batches with nothing to predict, damaged weight files, corpora too small for their vocabulary."""

import importlib
import struct

import pytest
import torch
from torch import nn
from transformers import AutoModelForSeq2SeqLM

from vanilla_transformer.modeling import (
    VanillaBertForMaskedLM,
    VanillaBertForSequenceClassification,
    VanillaBertForTokenClassification,
    VanillaTransformerForConditionalGeneration,
)
from vanilla_transformer.modeling.losses import token_cross_entropy
from vanilla_transformer.tokenization import train_bpe_tokenizer, train_wordpiece_tokenizer
from vanilla_transformer.tokenization.corpus import SmallVocabularyWarning

# --- configs that cannot make a model --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value",
    [("encoder_layers", 0), ("decoder_layers", 0), ("vocab_size", 0), ("encoder_ffn_dim", 0), ("decoder_ffn_dim", -3),
     ("max_position_embeddings", 0), ("layer_norm_eps", -1e-5), ("layer_norm_eps", 0.0), ("init_std", -0.1),
     ("encoder_layers", 2.5)],
)
def test_transformer_config_refuses_sizes_it_cannot_build(field, value, tiny_transformer_config):
    with pytest.raises(ValueError, match=f"{field}="):
        tiny_transformer_config(**{field: value})


@pytest.mark.parametrize(
    "field, value",
    [("num_hidden_layers", 0), ("vocab_size", 0), ("intermediate_size", 0), ("layer_norm_eps", -1.0),
     ("initializer_range", 0.0), ("type_vocab_size", 0)],
)
def test_bert_config_refuses_sizes_it_cannot_build(field, value, tiny_bert_config):
    with pytest.raises(ValueError, match=f"{field}="):
        tiny_bert_config(**{field: value})


# --- batches of the wrong shape or type ----------------------------------------------------------------------


@pytest.fixture
def models(tiny_transformer_config, tiny_bert_config):
    return {
        "seq2seq": VanillaTransformerForConditionalGeneration(tiny_transformer_config()).eval(),
        "bert": VanillaBertForMaskedLM(tiny_bert_config()).eval(),
    }


def call(models, family, input_ids, **kwargs):
    if family == "seq2seq":
        kwargs.setdefault("decoder_input_ids", torch.randint(3, 99, (max(input_ids.shape[0], 1), 3)))
    return models[family](input_ids=input_ids, **kwargs)


IDS = torch.randint(3, 99, (2, 6), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("family", ["seq2seq", "bert"])
@pytest.mark.parametrize(
    "case, kwargs, error, message",
    [
        ("mask too short", dict(input_ids=IDS, attention_mask=torch.ones(2, 5, dtype=torch.long)), ValueError,
         r"attention mask for input_ids has shape \(2, 5\), expected \(2, 6\)"),
        ("mask of another batch", dict(input_ids=IDS, attention_mask=torch.ones(3, 6, dtype=torch.long)), ValueError,
         r"expected \(2, 6\)"),
        ("3-D mask", dict(input_ids=IDS, attention_mask=torch.ones(2, 6, 6)), ValueError, r"must be \(batch, length\)"),
        ("no sequence", dict(input_ids=IDS[:0]), ValueError, r"input_ids is empty \(shape \(0, 6\)\)"),
        ("no token", dict(input_ids=IDS[:, :0]), ValueError, r"input_ids is empty \(shape \(2, 0\)\)"),
        ("float ids", dict(input_ids=IDS.float()), TypeError, "integer token ids"),
        ("one sequence without a batch", dict(input_ids=IDS[0]), ValueError, r"ids\[None\]"),
    ],
)
def test_bad_batches_get_a_clear_error(models, family, case, kwargs, error, message):
    with pytest.raises(error, match=message):
        call(models, family, **kwargs)


def test_decoder_mask_of_the_wrong_length_is_named(models):
    with pytest.raises(ValueError, match="decoder_input_ids"):
        models["seq2seq"](input_ids=IDS, decoder_input_ids=IDS[:, :3], decoder_attention_mask=torch.ones(2, 4))


def test_segment_ids_of_the_wrong_shape_are_named(models):
    with pytest.raises(ValueError, match=r"token_type_ids has shape \(2, 5\), expected \(2, 6\)"):
        models["bert"](input_ids=IDS, token_type_ids=torch.zeros(2, 5, dtype=torch.long))


# --- batches with nothing to predict -----------------------------------------------------------------------------


HEADS = {  # model class, config overrides, label shape
    "seq2seq": (VanillaTransformerForConditionalGeneration, {}, (2, 6)),
    "mlm": (VanillaBertForMaskedLM, {}, (2, 6)),
    "sparse mlm": (VanillaBertForMaskedLM, dict(sparse_prediction=True), (2, 6)),
    "tokens": (VanillaBertForTokenClassification, dict(num_labels=3), (2, 6)),
    "sequence": (VanillaBertForSequenceClassification, dict(num_labels=3), (2,)),
}


@pytest.mark.parametrize("head", list(HEADS))
def test_a_batch_without_labels_to_predict_has_zero_loss_and_leaves_the_weights_finite(
    head, tiny_transformer_config, tiny_bert_config
):
    model_class, overrides, label_shape = HEADS[head]
    config = tiny_transformer_config if model_class is VanillaTransformerForConditionalGeneration else tiny_bert_config
    model = model_class(config(**overrides))
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss = model(input_ids=IDS, labels=torch.full(label_shape, -100)).loss
    assert loss.item() == 0.0  # a plain mean over no label is NaN
    loss.backward()
    assert all(p.grad is None or (p.grad == 0).all() for p in model.parameters())  # nothing to learn from
    optimizer.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_token_cross_entropy_is_the_mean_over_labelled_positions():
    logits, labels = torch.randn(4, 5, 11), torch.randint(0, 11, (4, 5))
    labels[0, :3] = -100
    expected = nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100, label_smoothing=0.1)
    torch.testing.assert_close(token_cross_entropy(logits, labels, label_smoothing=0.1), expected)
    summed = nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum")
    torch.testing.assert_close(token_cross_entropy(logits, labels, num_items_in_batch=torch.tensor(40)), summed / 40)


# --- damaged weight files ---------------------------------------------------------------------------------------


def saved_model(tmp_path, config):
    VanillaTransformerForConditionalGeneration(config).save_pretrained(tmp_path)
    return tmp_path / "model.safetensors"


def test_weights_turned_into_nan_by_a_flipped_bit_are_refused(tmp_path, tiny_transformer_config):
    weights = saved_model(tmp_path, tiny_transformer_config())
    data = bytearray(weights.read_bytes())
    header = struct.unpack("<Q", data[:8])[0]
    offset = 8 + header + 64  # somewhere in the first float32 tensor
    data[offset + 3] |= 0x7F  # exponent bits all set: NaN or inf
    data[offset + 2] |= 0x80
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"{tmp_path}.*NaN or inf.*allow_non_finite_weights=True"):
        AutoModelForSeq2SeqLM.from_pretrained(tmp_path)
    model = AutoModelForSeq2SeqLM.from_pretrained(tmp_path, allow_non_finite_weights=True)  # to inspect it anyway
    assert not all(torch.isfinite(p).all() for p in model.parameters())


def nan_folder(folder, model, tokenizer):
    """`model` saved with one NaN weight, as a diverged run leaves it, with its tokenizer."""
    with torch.no_grad():
        model.get_input_embeddings().weight[3, 0] = float("nan")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


COMMANDS = ["publish", "evaluate_translation", "visualize_attention", "finetune_classification"]


@pytest.mark.parametrize("command", COMMANDS)
def test_the_commands_refuse_nan_weights_of_our_folders_through_from_pretrained(
    command, tmp_path, tiny_transformer_config, tiny_bert_config, finetune_args, finetune_rows, finetune_tokenizer
):
    """One check of non-finite weights for our folders: our classes' from_pretrained (HubFolders). The commands that
    load a folder of ours get its refusal, with its message."""
    script = importlib.import_module(f"vanilla_transformer.scripts.{command}")
    if command == "finetune_classification":
        model = VanillaBertForMaskedLM(tiny_bert_config(vocab_size=len(finetune_tokenizer)))
        folder = nan_folder(tmp_path / "model", model, finetune_tokenizer)
        rows = "".join(f"{text}\t{label}\n" for text, label in finetune_rows)
        (tmp_path / "train.tsv").write_text("sentence\tlabel\n" + rows)  # GLUE's columns, the script's default
        argv = ["--model_name_or_path", str(folder),
                *finetune_args(tmp_path / "out", train_file=tmp_path / "train.tsv")]
    else:
        tokenizer = train_bpe_tokenizer(["ein Hund läuft.", "a dog runs."] * 10, vocab_size=60, show_progress=False)
        model = VanillaTransformerForConditionalGeneration(tiny_transformer_config(vocab_size=len(tokenizer)))
        folder = nan_folder(tmp_path / "model", model, tokenizer)
        argv = {
            "publish": ["--output_dir", str(tmp_path / "hub")],
            "evaluate_translation": ["--split", str(tmp_path / "test"), "--output_file", str(tmp_path / "scores.json")],
            "visualize_attention": ["--text", "ein Hund läuft.", "--output_dir", str(tmp_path / "maps")],
        }[command] + ["--model_dir", str(folder)]
    with pytest.raises(ValueError, match=f"{folder}: 1 weight tensor\\(s\\) hold NaN or inf values .*embed_tokens"):
        script.main(argv)


def test_a_weights_file_cut_short_is_named(tmp_path, tiny_transformer_config):
    weights = saved_model(tmp_path, tiny_transformer_config())
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ValueError, match=f"{tmp_path}.*damaged.*copy or download it again"):
        AutoModelForSeq2SeqLM.from_pretrained(tmp_path)


# --- corpora that cannot make the vocabulary asked for -----------------------------------------------------------


@pytest.mark.parametrize("train", [train_bpe_tokenizer, train_wordpiece_tokenizer])
def test_a_tokenizer_is_not_trained_on_nothing(train):
    with pytest.raises(ValueError, match="no text to learn a vocabulary from.*all 3 of its texts are blank"):
        train(["", "   ", "\n"], vocab_size=100, show_progress=False)


@pytest.mark.parametrize("train", [train_bpe_tokenizer, train_wordpiece_tokenizer])
def test_a_corpus_too_small_for_its_vocabulary_is_reported_with_counts(train):
    with pytest.warns(SmallVocabularyWarning, match=r"of the 8,000 asked for .* from 1 texts \(24 characters\)"):
        train(["a single line of text.  ", ""], vocab_size=8000, show_progress=False)
