"""scripts/visualize_attention.py on tiny saved models: it writes one PNG per kind of attention, and what it plots is
the model's own output_attentions (each head, and their mean), with the tokens as tick labels; the rows are
distributions and the decoder's self-attention never looks ahead."""

import re

import matplotlib.image
import pytest
import torch
from transformers import AutoModel, AutoModelForSeq2SeqLM, AutoTokenizer

from vanilla_transformer.modeling import VanillaBertForMaskedLM, VanillaTransformerForConditionalGeneration
from vanilla_transformer.modeling.hub import save_for_hub
from vanilla_transformer.scripts import visualize_attention
from vanilla_transformer.tokenization import special_token_ids, train_bpe_tokenizer, train_wordpiece_tokenizer

TEXTS = ["ein kleiner Hund läuft", "a small dog runs", "zwei Katzen schlafen", "two cats sleep"] * 5
SOURCE, TARGET = "ein kleiner Hund schläft", "a small dog sleeps"


@pytest.fixture(scope="module")
def translation_folder(tmp_path_factory, tiny_transformer_config):
    """An untrained encoder-decoder, 2 encoder layers and 3 decoder layers, that generates at most 6 tokens."""
    tokenizer = train_bpe_tokenizer(TEXTS, vocab_size=60, min_frequency=1, show_progress=False)
    model = VanillaTransformerForConditionalGeneration(tiny_transformer_config(**special_token_ids(tokenizer),
                                                                               decoder_layers=3))
    model.generation_config.update(max_new_tokens=6, num_beams=1)
    return save_for_hub(model.eval(), tmp_path_factory.mktemp("translation") / "model", tokenizer)


def run(*argv: str):
    return visualize_attention.run(visualize_attention.parse_args(list(argv)))


def panels(figure) -> list:
    """The heatmap panels of a figure, in order (the colorbar has no image)."""
    return [axis for axis in figure.axes if axis.images]


def assert_plots(figure, weights: torch.Tensor, query_tokens: list[str], key_tokens: list[str]) -> None:
    """Panel h shows head h of `weights` (H, Q, K), the last panel their mean, with the tokens as tick labels."""
    shown = panels(figure)
    assert len(shown) == weights.shape[0] + 1
    for axis, expected in zip(shown, [*weights, weights.mean(0)]):
        torch.testing.assert_close(torch.as_tensor(axis.images[0].get_array().data), expected)
        assert [label.get_text() for label in axis.get_xticklabels()] == key_tokens
        assert [label.get_text() for label in axis.get_yticklabels()] == query_tokens


def assert_png(path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and matplotlib.image.imread(path).shape[0] > 200


def test_translation_heatmaps_are_the_models_attention_of_a_given_target(translation_folder, tmp_path):
    saved = run("--model_dir", str(translation_folder), "--text", SOURCE, "--target", TARGET,
                "--output_dir", str(tmp_path))
    # the last layer by default: the encoder's 2nd, the decoder's 3rd
    assert sorted(path.name for path in saved) == [
        "cross_attention_layer3.png", "decoder_self_attention_layer3.png", "encoder_self_attention_layer2.png"
    ]
    model = AutoModelForSeq2SeqLM.from_pretrained(translation_folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(translation_folder)
    batch = tokenizer(SOURCE, text_target=TARGET, return_tensors="pt")
    with torch.no_grad():
        outputs = model(**batch, output_attentions=True)  # labels -> decoder input "<s> y1 .. y_{T-1}"
    source = tokenizer.convert_ids_to_tokens(batch["input_ids"][0])
    decoder = ["<s>", *tokenizer.convert_ids_to_tokens(batch["labels"][0])[:-1]]
    expected = {
        "encoder_self_attention_layer2.png": (outputs.encoder_attentions[-1][0], source, source),
        "decoder_self_attention_layer3.png": (outputs.decoder_attentions[-1][0], decoder, decoder),
        "cross_attention_layer3.png": (outputs.cross_attentions[-1][0], decoder, source),
    }
    for path, figure in saved.items():
        assert_png(path)
        weights, queries, keys = expected[path.name]
        assert_plots(figure, weights, queries, keys)
        torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:2]))  # each row: a distribution
    causal = expected["decoder_self_attention_layer3.png"][0]
    past = torch.ones(causal.shape[1:], dtype=torch.bool).tril()  # (T, T): key position <= query position
    assert torch.all(causal[:, ~past] == 0) and torch.all(causal[:, past] > 0)  # the past only, all of it

    first = run("--model_dir", str(translation_folder), "--text", SOURCE, "--target", TARGET, "--layer", "1",
                "--output_dir", str(tmp_path / "first"))
    by_name = {path.name: figure for path, figure in first.items()}
    assert_plots(by_name["cross_attention_layer1.png"], outputs.cross_attentions[0][0], decoder, source)
    with pytest.raises(ValueError, match=re.escape("--layer 3: the encoder self-attention has 2 layers (1..2)")):
        run("--model_dir", str(translation_folder), "--text", SOURCE, "--layer", "3", "--output_dir", str(tmp_path))


def test_without_a_target_the_models_own_translation_is_shown(translation_folder, tmp_path, capsys):
    saved = run("--model_dir", str(translation_folder), "--text", SOURCE, "--output_dir", str(tmp_path))
    model = AutoModelForSeq2SeqLM.from_pretrained(translation_folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(translation_folder)
    generated = model.generate(**tokenizer(SOURCE, return_tensors="pt"))[0]  # <s> y1 .. (</s>)
    translation = tokenizer.decode(generated, skip_special_tokens=True)
    assert f"target (generated): {translation}\n" in capsys.readouterr().out
    cross = next(figure for path, figure in saved.items() if path.name.startswith("cross"))
    rows = [label.get_text() for label in panels(cross)[0].get_yticklabels()]
    # the decoder reads the generated sequence up to the token before the last one it predicted
    assert rows == tokenizer.convert_ids_to_tokens(generated)[: len(generated) - 1]


def test_a_bert_folder_gives_its_self_attention(tmp_path, tiny_bert_config):
    tokenizer = train_wordpiece_tokenizer(TEXTS, vocab_size=60, min_frequency=1, show_progress=False)
    folder = save_for_hub(VanillaBertForMaskedLM(tiny_bert_config(vocab_size=len(tokenizer))).eval(),
                          tmp_path / "bert", tokenizer)
    saved = run("--model_dir", str(folder), "--text", SOURCE, "--output_dir", str(tmp_path / "out"))
    ((path, figure),) = saved.items()
    assert path.name == "self_attention_layer2.png"
    assert_png(path)
    batch = tokenizer(SOURCE, return_tensors="pt")
    with torch.no_grad():
        weights = AutoModel.from_pretrained(folder)(**batch, output_attentions=True).attentions[-1][0]
    tokens = tokenizer.convert_ids_to_tokens(batch["input_ids"][0])
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
    assert_plots(figure, weights, tokens, tokens)
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:2]))
    with pytest.raises(ValueError, match="is an encoder: it has no target side"):
        run("--model_dir", str(folder), "--text", SOURCE, "--target", TARGET, "--output_dir", str(tmp_path))


def test_help_explains(capsys):
    with pytest.raises(SystemExit):
        visualize_attention.parse_args(["--help"])
    text = capsys.readouterr().out
    assert "--layer" in text and "cross-attention" in text and "lower-triangular" in text
