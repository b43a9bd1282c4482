"""The CTranslate2 export: for every variant the config allows, the exported model scores every target token as
ours does (log-probabilities within 1e-4) and decodes the same ids, greedy and beam 4; the BERT-style encoder's
outputs match ours within 1e-4; what CTranslate2 cannot express is refused with the field's name."""

import json

import numpy as np
import pytest
import torch

ctranslate2 = pytest.importorskip("ctranslate2")

from vanilla_transformer.modeling import (  # noqa: E402
    VanillaBertForMaskedLM,
    VanillaBertModel,
    VanillaTransformerForConditionalGeneration,
)
from vanilla_transformer.modeling import convert_ctranslate2  # noqa: E402
from vanilla_transformer.modeling.convert_ctranslate2 import export_ctranslate2  # noqa: E402
from vanilla_transformer.modeling.hub import save_for_hub  # noqa: E402
from vanilla_transformer.scripts.serving.ctranslate2_translator import CTranslate2Translator  # noqa: E402
from vanilla_transformer.tokenization import (  # noqa: E402
    special_token_ids,
    train_bpe_tokenizer,
    train_wordpiece_tokenizer,
)

SENTENCES = [
    "ein Hund läuft durch den Park.", "a dog runs through the park.", "zwei Männer spielen Fußball im Regen.",
    "two men play football in the rain.", "eine Frau liest ein Buch.", "a woman reads a book.",
] * 10
EOS = 2


@pytest.fixture(scope="module")
def bpe():
    return train_bpe_tokenizer(SENTENCES, vocab_size=90, show_progress=False)


def build(tiny_transformer_config, bpe, noise: float = 0.0, **overrides):
    """A tiny encoder-decoder over the tokenizer's ids; `noise` spreads the weights so outputs vary."""
    torch.manual_seed(0)
    config = tiny_transformer_config(**{**special_token_ids(bpe), **overrides})
    model = VanillaTransformerForConditionalGeneration(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(noise * torch.randn_like(parameter))
    return model


def export(model, tokenizer, folder, quantization="float32"):
    save_for_hub(model, folder / "model", tokenizer)
    return export_ctranslate2(folder / "model", folder / "ct2", quantization=quantization)


def sources(count: int, vocab: int, seed: int = 1) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 10, (count,), generator=generator)
    return [torch.randint(4, vocab, (int(n),), generator=generator).tolist() + [EOS] for n in lengths]


def ours(model, source: list[int], **generation) -> list[int]:
    """Our generate's ids, without the decoder start token and the padding after </s>."""
    output = model.generate(torch.tensor([source]), do_sample=False, **generation)[0].tolist()[1:]
    while output and output[-1] == model.config.pad_token_id:
        output.pop()
    return output


def assert_same_scores(model, translator: CTranslate2Translator, count: int = 8) -> None:
    """CTranslate2's log-probability of each target token (teacher forcing) against ours, within 1e-4."""
    vocab = model.config.vocab_size
    srcs, targets = sources(count, vocab, seed=2), sources(count, vocab, seed=3)
    to_tokens = lambda ids: [translator.vocabulary[i] for i in ids]  # noqa: E731
    results = translator.translator.score_batch(
        [to_tokens(s) for s in srcs], [to_tokens(t[:-1]) for t in targets]  # CTranslate2 appends </s> itself
    )
    for source, target, result in zip(srcs, targets, results):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([source]), labels=torch.tensor([target])).logits[0]
        expected = logits.log_softmax(-1)[torch.arange(len(target)), torch.tensor(target)]
        torch.testing.assert_close(torch.tensor(result.log_probs), expected, rtol=0, atol=1e-4)


VARIANTS = {
    "paper": {},  # post-LN, multi-head, sinusoidal, tied, ReLU
    "pre_ln": {"normalize_before": True},
    "grouped_query": {"num_key_value_heads": 2},
    "multi_query": {"num_key_value_heads": 1},
    "learned_positions": {"position_embedding_type": "learned"},
    "untied_with_bias": {"tie_word_embeddings": False, "lm_head_bias": True},
    "gelu": {"activation_function": "gelu"},
    "gelu_tanh": {"activation_function": "gelu_new"},
    "unscaled_embeddings": {"scale_embedding": False},
    "heads_differ": {"decoder_attention_heads": 2, "num_key_value_heads": None},
    "everything_else": {"normalize_before": True, "num_key_value_heads": 2, "position_embedding_type": "learned",
                        "tie_word_embeddings": False, "activation_function": "gelu", "layer_norm_eps": 1e-6},
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_seq2seq_variant_scores_and_decodes_as_ours(variant, tiny_transformer_config, bpe, tmp_path):
    model = build(tiny_transformer_config, bpe, noise=0.2, **VARIANTS[variant])
    translator = CTranslate2Translator(export(model, bpe, tmp_path))
    assert_same_scores(model, translator)
    srcs = sources(6, model.config.vocab_size)
    for beams in (1, 4):
        exported = translator.generate_ids(srcs, num_beams=beams, length_penalty=1.0, max_new_tokens=12)
        expected = [ours(model, s, num_beams=beams, max_new_tokens=12, early_stopping=True) for s in srcs]
        assert exported == expected, f"{variant}, beam {beams}"


def test_the_comparison_cuts_batched_beam_outputs_at_their_first_end_of_sentence(ending_model):
    """transformers' beam search fills the rows of a batch that finished early with `pad_token_id or eos_token_id`,
    so </s> for our pad id 0: the compare command's `our_ids` cuts each row at its first </s>, and batched generate
    then equals one sentence at a time and the export (stripping <pad> only left 12 of 32 Multi30k rows equal)."""
    from vanilla_transformer.scripts.export_ctranslate2 import our_ids

    model, translator = ending_model
    srcs = sources(24, model.config.vocab_size, seed=4)
    options = dict(num_beams=4, length_penalty=1.0, max_new_tokens=15, early_stopping=True)
    batched = our_ids(model, srcs, len(srcs), **options)
    assert batched == [ours(model, s, **options) for s in srcs]
    assert batched == translator.generate_ids(srcs, num_beams=4, length_penalty=1.0, max_new_tokens=15)
    lengths = {len(row) for row in batched}
    assert len(lengths) > 2 and all(row.count(EOS) <= 1 for row in batched)  # rows ended at different steps


def test_vocabulary_larger_than_the_tokenizer(tiny_transformer_config, bpe, tmp_path):
    """A model whose embedding table has rows no token maps to (vocab_size rounded up) exports with placeholders."""
    model = build(tiny_transformer_config, bpe, noise=0.2, vocab_size=len(bpe) + 5)
    translator = CTranslate2Translator(export(model, bpe, tmp_path))
    vocabulary = json.loads((tmp_path / "ct2" / "shared_vocabulary.json").read_text())
    assert len(vocabulary) == len(bpe) + 5 and vocabulary[: len(bpe)] == bpe.convert_ids_to_tokens(range(len(bpe)))
    assert_same_scores(model, translator)


@pytest.fixture(scope="module")
def ending_model(tmp_path_factory, tiny_transformer_config, bpe):
    """A model that ends its outputs at varied lengths (a bias on </s>), and its float32 export: the search itself
    (</s>, length penalty, maximum length) is compared on it."""
    model = build(tiny_transformer_config, bpe, noise=0.3, tie_word_embeddings=False, lm_head_bias=True)
    with torch.no_grad():
        model.get_output_embeddings().bias[EOS] += 2.0
    folder = tmp_path_factory.mktemp("ending")
    return model, CTranslate2Translator(export(model, bpe, folder))


@pytest.mark.parametrize("beams, length_penalty", [(1, 1.0), (4, 1.0), (4, 0.6), (4, 2.0), (4, 0.0)])
def test_search_matches_generate_with_early_stopping(ending_model, beams, length_penalty):
    """CTranslate2's beam search = transformers' with early_stopping=True: it stops a sentence once num_beams
    hypotheses have finished, and ranks them by sum(log p) / length**length_penalty, </s> counted in the length."""
    model, translator = ending_model
    srcs = sources(32, model.config.vocab_size)
    exported = translator.generate_ids(srcs, num_beams=beams, length_penalty=length_penalty, max_new_tokens=15)
    expected = [ours(model, s, num_beams=beams, length_penalty=length_penalty, max_new_tokens=15,
                     early_stopping=True) for s in srcs]
    assert exported == expected
    ended = [ids[-1] == EOS for ids in exported]
    assert any(ended) and not all(ended), "some outputs should end with </s>, others at the maximum length"


@pytest.mark.parametrize("max_new_tokens", [1, 3, 9])
def test_max_new_tokens_counts_as_in_transformers(ending_model, max_new_tokens):
    model, translator = ending_model
    srcs = sources(12, model.config.vocab_size)
    for beams in (1, 4):
        exported = translator.generate_ids(srcs, num_beams=beams, max_new_tokens=max_new_tokens)
        expected = [ours(model, s, num_beams=beams, max_new_tokens=max_new_tokens, early_stopping=True)
                    for s in srcs]
        assert exported == expected
        assert max(len(ids) for ids in exported) == max_new_tokens


def test_default_beam_search_differs_only_by_its_stopping_rule(ending_model):
    """transformers' default (early_stopping=False) may keep searching after num_beams hypotheses finished and
    find a longer one that scores better; CTranslate2 has no such mode. Where the two differ, ours scores at least
    as well under the length-normalised score both use."""
    model, translator = ending_model
    srcs = sources(32, model.config.vocab_size)
    exported = translator.generate_ids(srcs, num_beams=4, length_penalty=2.0, max_new_tokens=15)
    differ = 0
    for source, ids in zip(srcs, exported):
        expected = ours(model, source, num_beams=4, length_penalty=2.0, max_new_tokens=15)
        if expected != ids:
            differ += 1
            assert normalised_score(model, source, expected, 2.0) >= normalised_score(model, source, ids, 2.0) - 1e-5
    assert differ > 0  # the test would not show anything otherwise


def normalised_score(model, source, ids, length_penalty):
    with torch.no_grad():
        decoder_input = torch.tensor([[model.config.decoder_start_token_id] + ids[:-1]])
        logits = model(input_ids=torch.tensor([source]), decoder_input_ids=decoder_input).logits[0]
    return logits.log_softmax(-1)[torch.arange(len(ids)), torch.tensor(ids)].sum().item() / len(ids) ** length_penalty


def test_positions_are_the_papers_interleaved_table(tiny_transformer_config, bpe, tmp_path, monkeypatch):
    """Our table is the paper's (dimension 2i sin, 2i+1 cos); CTranslate2's built-in one is [sin | cos]. The export
    supplies ours as weights; with CTranslate2's layout instead, the scores would be far off."""
    table = convert_ctranslate2.sinusoidal_table(5, 8)
    position = np.arange(5)[:, None] / 10000 ** (np.arange(0, 8, 2) / 8)
    np.testing.assert_allclose(table[:, 0::2], np.sin(position), atol=1e-7)
    np.testing.assert_allclose(table[:, 1::2], np.cos(position), atol=1e-7)

    model = build(tiny_transformer_config, bpe, noise=0.2)
    assert_same_scores(model, CTranslate2Translator(export(model, bpe, tmp_path / "ours")))

    def concatenated(num_positions, dim):  # CTranslate2's (and Marian's) layout
        interleaved = table_of(num_positions, dim)
        return np.concatenate([interleaved[:, 0::2], interleaved[:, 1::2]], axis=1)

    table_of = convert_ctranslate2.sinusoidal_table
    monkeypatch.setattr(convert_ctranslate2, "sinusoidal_table", concatenated)
    with pytest.raises(AssertionError):
        assert_same_scores(model, CTranslate2Translator(export(model, bpe, tmp_path / "concatenated")))


@pytest.mark.parametrize("quantization", ["int8", "int8_float32", "float16"])
def test_quantized_export_translates_text(tiny_transformer_config, bpe, tmp_path, quantization):
    model = build(tiny_transformer_config, bpe, noise=0.2)
    folder = export(model, bpe, tmp_path, quantization)
    assert {"model.bin", "config.json", "shared_vocabulary.json", "tokenizer.json", "generation_config.json"} <= {
        path.name for path in folder.iterdir()
    }
    translator = CTranslate2Translator(folder)
    texts = ["ein Hund läuft.", "zwei Männer spielen Fußball."]
    outputs = translator.translate(texts, num_beams=2, max_new_tokens=8)
    assert len(outputs) == 2 and all(isinstance(text, str) for text in outputs)
    reference = export(model, bpe, tmp_path / "fp32")
    size = (folder / "model.bin").stat().st_size / (reference / "model.bin").stat().st_size
    assert size < {"int8": 0.4, "int8_float32": 0.4, "float16": 0.6}[quantization]  # the weights were converted


def test_translate_is_text_in_text_out_as_our_generate(tiny_transformer_config, bpe, tmp_path):
    model = build(tiny_transformer_config, bpe, noise=0.2)
    model.generation_config.num_beams = 3
    model.generation_config.max_length = 9
    translator = CTranslate2Translator(export(model, bpe, tmp_path))
    texts = ["ein Hund läuft.", "zwei Männer spielen Fußball im Regen.", "eine Frau"]
    batch = bpe(texts, return_tensors="pt", padding=True)
    expected = bpe.batch_decode(model.generate(**batch, early_stopping=True), skip_special_tokens=True)
    assert translator.translate(texts, batch_size=2) == expected  # defaults: the saved generation config


def test_exported_model_serves_without_our_package(tiny_transformer_config, bpe, tmp_path, run_without_package):
    """The model card's recipe: ctranslate2 and tokenizers alone, in a process where vanilla_transformer is absent."""
    model = build(tiny_transformer_config, bpe, noise=0.2)
    folder = export(model, bpe, tmp_path)
    code = f"""
        import json, ctranslate2, tokenizers
        tokenizer = tokenizers.Tokenizer.from_file({str(folder / 'tokenizer.json')!r})
        translator = ctranslate2.Translator({str(folder)!r}, device="cpu")
        sources = [encoding.tokens for encoding in tokenizer.encode_batch(["ein Hund läuft.", "eine Frau"])]
        results = translator.translate_batch(sources, beam_size=4, max_decoding_length=8, min_decoding_length=0)
        ids = [[tokenizer.token_to_id(t) for t in r.hypotheses[0]] for r in results]
        print(json.dumps(tokenizer.decode_batch(ids, skip_special_tokens=True)))
    """
    texts = run_without_package(code, cwd=str(tmp_path))
    assert texts == CTranslate2Translator(folder).translate(["ein Hund läuft.", "eine Frau"], num_beams=4,
                                                            max_new_tokens=8)


def test_unsupported_variants_name_the_field(tiny_transformer_config, bpe, tmp_path):
    model = build(tiny_transformer_config, bpe, activation_function="tanh")
    with pytest.raises(ValueError, match="activation_function='tanh'"):
        export(model, bpe, tmp_path / "tanh")
    model = build(tiny_transformer_config, bpe)
    model.generation_config.no_repeat_ngram_size = 3
    with pytest.raises(ValueError, match="no_repeat_ngram_size=3"):
        export(model, bpe, tmp_path / "ngram")
    with pytest.raises(ValueError, match="quantization='int4'"):
        export_ctranslate2(tmp_path / "ngram" / "model", tmp_path / "int4", quantization="int4")


# ------------------------------------------------------------------------------ the BERT-style encoder


@pytest.fixture(scope="module")
def wordpiece():
    return train_wordpiece_tokenizer(SENTENCES, vocab_size=90)


BERT_VARIANTS = {
    "bert": {},
    "pre_ln": {"normalize_before": True},
    "sinusoidal": {"position_embedding_type": "sinusoidal"},
    "grouped_query": {"num_key_value_heads": 2},
    "relu": {"hidden_act": "relu"},
}


@pytest.mark.parametrize("head", ["pooler", "masked_lm"])
@pytest.mark.parametrize("variant", sorted(BERT_VARIANTS))
def test_bert_encoder_outputs_match_ours(variant, head, tiny_bert_config, wordpiece, tmp_path):
    torch.manual_seed(0)
    config = tiny_bert_config(vocab_size=len(wordpiece), **BERT_VARIANTS[variant])
    model = (VanillaBertModel if head == "pooler" else VanillaBertForMaskedLM)(config).eval()
    save_for_hub(model, tmp_path / "model", wordpiece)
    export_ctranslate2(tmp_path / "model", tmp_path / "ct2")
    encoder = ctranslate2.Encoder(str(tmp_path / "ct2"))
    batch = wordpiece(["ein Hund läuft durch den Park.", "eine Frau"], ["a dog runs.", "a woman reads a book."],
                      padding=True, return_tensors="pt")
    lengths = batch["attention_mask"].sum(1).tolist()
    ids = [row[:n] for row, n in zip(batch["input_ids"].tolist(), lengths)]
    segments = [row[:n] for row, n in zip(batch["token_type_ids"].tolist(), lengths)]
    output = encoder.forward_batch(ids, token_type_ids=segments)
    base = model if head == "pooler" else model.base_model
    with torch.no_grad():
        expected = base(**batch)
    hidden = torch.from_numpy(np.array(output.last_hidden_state))
    for row, n in enumerate(lengths):  # real tokens only: padding positions are arbitrary in both
        torch.testing.assert_close(hidden[row, :n], expected.last_hidden_state[row, :n], rtol=0, atol=1e-4)
    if head == "pooler":
        torch.testing.assert_close(torch.from_numpy(np.array(output.pooler_output)), expected.pooler_output,
                                   rtol=0, atol=1e-4)
    else:  # a masked-LM checkpoint has no trained pooler: none is exported
        assert output.pooler_output is None


def test_bert_unsupported_activation_names_the_field(tiny_bert_config, wordpiece, tmp_path):
    model = VanillaBertModel(tiny_bert_config(vocab_size=len(wordpiece), hidden_act="tanh"))
    save_for_hub(model, tmp_path / "model", wordpiece)
    with pytest.raises(ValueError, match="hidden_act='tanh'"):
        export_ctranslate2(tmp_path / "model", tmp_path / "ct2")


def test_export_command(tiny_transformer_config, bpe, tmp_path, capsys):
    """The command's main(), in this process (test_install.py runs every installed command's --help)."""
    from vanilla_transformer.scripts.export_ctranslate2 import main

    with pytest.raises(SystemExit) as shown:
        main(["--help"])
    help_text = capsys.readouterr().out
    assert shown.value.code == 0
    assert "--quantization" in help_text and "int8" in help_text and "--compare_split" in help_text
    model = build(tiny_transformer_config, bpe, noise=0.2)
    save_for_hub(model, tmp_path / "model", bpe)
    (tmp_path / "test.de").write_text("ein Hund läuft.\nzwei Männer spielen Fußball im Regen.\neine Frau\n")
    (tmp_path / "test.en").write_text("a dog runs.\ntwo men play football in the rain.\na woman\n")
    main(["--model_dir", str(tmp_path / "model"), "--output_dir", str(tmp_path / "ct2"),
          "--compare_split", str(tmp_path / "test"), "--max_new_tokens", "6", "--batch_size", "2"])
    report = json.loads((tmp_path / "ct2" / "comparison.json").read_text())
    assert report["sentences"] == 3
    assert report["identical"]["greedy"] == 1.0 and report["identical"]["beam 4, ours with early_stopping=True"] == 1.0
    assert report["sacrebleu"]["ours greedy"] == report["sacrebleu"]["exported greedy"]
    with pytest.raises(SystemExit) as failed:
        main(["--model_dir", str(tmp_path / "model"), "--output_dir", str(tmp_path / "ct2")])
    assert "already exists" in str(failed.value.code)  # --force to replace it


@pytest.mark.parametrize("family", ["translation", "bert"])
def test_publish_adds_the_export_and_shows_it_in_the_card(family, tiny_transformer_config, tiny_bert_config, bpe,
                                                          wordpiece, tmp_path, run_without_package):
    from vanilla_transformer.scripts.publish import PublishArguments, publish

    if family == "translation":
        model, tokenizer = build(tiny_transformer_config, bpe, noise=0.2), bpe
    else:
        model, tokenizer = VanillaBertModel(tiny_bert_config(vocab_size=len(wordpiece))), wordpiece
    save_for_hub(model, tmp_path / "trained", tokenizer)
    hub = publish(PublishArguments(model_dir=str(tmp_path / "trained"), output_dir=str(tmp_path / "hub"),
                                   ctranslate2="int8"))
    assert (hub / "ctranslate2" / "model.bin").is_file() and (hub / "ctranslate2" / "tokenizer.json").is_file()
    card = (hub / "README.md").read_text()
    assert "## Serving with CTranslate2" in card
    snippet = card.split("```python")[-1].split("```")[0]  # the card's last code block: the CTranslate2 recipe
    assert ("ctranslate2.Translator" if family == "translation" else "ctranslate2.Encoder") in snippet
    # run it as a reader would, with the Hub download replaced by the local folder
    snippet = snippet.replace("from huggingface_hub import snapshot_download\n", "")
    local = f"snapshot_download = lambda repo, allow_patterns: {str(hub)!r}\n"
    run_without_package(local + snippet.replace("print(", "import json; _ = (") + "\nprint(json.dumps(True))",
                        cwd=str(tmp_path))
