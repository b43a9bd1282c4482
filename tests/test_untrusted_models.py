"""A model folder, a config.json, a tokenizer corpus and a model's inputs are untrusted: what they ask for is bounded
by the machine before anything is allocated, and nothing is cut, changed or guessed silently (issue 25).

- Bounded by default: a config whose model would not fit in half of this machine's memory is refused with the size it
  would take (`config_checks.check_model_size`), unless `allow_large_model=True` or the environment variable says so;
  the tokenizer trainer's preview tokenizes a cut of the first text, not a whole 50 MB line.
- Nothing silently: fields of the wrong type and unknown keys are named; a folder of another family is refused; a
  tokenizer is saved with its model's length limit; a text longer than the translation model reads is cut with a
  warning (or refused); a beam wider than the vocabulary and more new tokens than target positions are refused
  before decoding; control characters of a tokenizer corpus are removed and reported with counts.
"""

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import (
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    BertConfig,
    BertForMaskedLM,
    PreTrainedTokenizerFast,
    pipeline,
)

from vanilla_transformer.modeling import (
    VanillaBertConfig,
    VanillaBertForMaskedLM,
    VanillaBertModel,
    VanillaTransformerConfig,
    VanillaTransformerForConditionalGeneration,
)
from vanilla_transformer.modeling import config_checks
from vanilla_transformer.modeling.config_checks import (
    ALLOW_LARGE_MODELS_ENV,
    ConfigSizeError,
    UnknownConfigKeyWarning,
    WrongModelTypeError,
)
from vanilla_transformer.modeling.convert_bert import convert_bert_to_vanilla
from vanilla_transformer.modeling.hub import save_for_hub
from vanilla_transformer.modeling.pipeline_translation import TranslationPipeline
from vanilla_transformer.tokenization import special_token_ids, train_bpe_tokenizer, train_wordpiece_tokenizer
from vanilla_transformer.tokenization import corpus
from vanilla_transformer.tokenization.corpus import ControlCharacterWarning

GB = 10**9
SOURCES = ["ein Hund läuft im Park.", "zwei Männer spielen Fußball am Strand.", "eine Frau liest ein Buch."]
TARGETS = ["a dog runs in the park.", "two men play football on the beach.", "a woman reads a book."]


@pytest.fixture
def memory(monkeypatch):
    """Set the machine's memory as the size checks read it, so that refusals do not depend on the test machine."""

    def set_memory(size: int) -> None:
        monkeypatch.setattr(config_checks, "machine_memory", lambda: size)

    monkeypatch.delenv(ALLOW_LARGE_MODELS_ENV, raising=False)
    set_memory(16 * GB)
    return set_memory


def saved_folder(model, folder: Path, **config_changes) -> Path:
    """`model` saved to `folder`, with `config_changes` written into its config.json afterwards (as a hand-edited or
    malicious folder would have them)."""
    model.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(config_changes)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


# --- bounded by default: config sizes -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "family, field, value",
    [
        ("transformer", "max_position_embeddings", 10**8),
        ("transformer", "encoder_layers", 10**6),
        ("transformer", "d_model", 2**22),
        ("transformer", "vocab_size", 10**9),
        ("bert", "max_position_embeddings", 10**8),
        ("bert", "num_hidden_layers", 10**6),
        ("bert", "hidden_size", 2**22),
        ("bert", "vocab_size", 10**9),
    ],
)
def test_a_config_past_the_machine_memory_is_refused_with_its_size(family, field, value, memory, tiny_bert_config,
                                                                     tiny_transformer_config):
    make = tiny_transformer_config if family == "transformer" else tiny_bert_config
    with pytest.raises(ConfigSizeError) as refused:
        make(**{field: value})
    message = str(refused.value)
    assert f"{field}={value:,}" in message or f"{value:,} layers" in message  # the part that is too big, named
    assert "GB in float32" in message and "half of its 16.0 GB of memory, 8.0 GB" in message
    assert "allow_large_model=True" in message and ALLOW_LARGE_MODELS_ENV in message  # the override, named


def test_the_limit_is_half_of_the_machine_memory(memory, tiny_transformer_config):
    learned = dict(position_embedding_type="learned")  # (a sinusoidal table takes more while it is computed)
    size = sum(tiny_transformer_config(**learned).weight_counts().values()) * 4  # bytes of the tiny model in float32
    memory(2 * size)
    tiny_transformer_config(**learned)
    memory(2 * size - 2)
    with pytest.raises(ConfigSizeError):
        tiny_transformer_config(**learned)


def test_the_limit_can_be_lifted_by_argument_environment_and_from_pretrained(memory, monkeypatch, tmp_path,
                                                                               tiny_transformer_config):
    folder = saved_folder(VanillaTransformerForConditionalGeneration(tiny_transformer_config()), tmp_path / "model")
    memory(1000)  # bytes: every model is too large now
    with pytest.raises(ConfigSizeError, match=f"{folder}/config.json: "):  # the folder named
        VanillaTransformerForConditionalGeneration.from_pretrained(folder)
    with pytest.raises(ConfigSizeError):
        AutoModelForSeq2SeqLM.from_pretrained(folder)
    assert tiny_transformer_config(allow_large_model=True).d_model == 32
    assert not hasattr(tiny_transformer_config(allow_large_model=True), "allow_large_model")  # not saved with it
    VanillaTransformerForConditionalGeneration.from_pretrained(folder, allow_large_model=True)
    AutoModelForSeq2SeqLM.from_pretrained(folder, allow_large_model=True)
    monkeypatch.setenv(ALLOW_LARGE_MODELS_ENV, "1")
    VanillaTransformerForConditionalGeneration.from_pretrained(folder)


def test_a_folder_asking_for_terabytes_is_refused_before_any_allocation(tmp_path, tiny_transformer_config,
                                                                          monkeypatch):
    monkeypatch.delenv(ALLOW_LARGE_MODELS_ENV, raising=False)
    model = VanillaTransformerForConditionalGeneration(tiny_transformer_config())
    folder = saved_folder(model, tmp_path / "huge", max_position_embeddings=10**12)  # 256 TB of position tables
    with pytest.raises(ConfigSizeError, match="max_position_embeddings=1,000,000,000,000"):
        VanillaTransformerForConditionalGeneration.from_pretrained(folder)


# --- nothing silently: types and unknown keys of a config -----------------------------------------------------------


@pytest.mark.parametrize(
    "config_class, field, value, expected",
    [
        (VanillaTransformerConfig, "d_model", "128", "an integer"),
        (VanillaTransformerConfig, "d_model", None, "an integer"),
        (VanillaTransformerConfig, "dropout", "0.1", "a number"),
        (VanillaTransformerConfig, "normalize_before", "yes", "true or false"),
        (VanillaTransformerConfig, "encoder_layers", True, "an integer"),
        (VanillaBertConfig, "hidden_size", "768", "an integer"),
        (VanillaBertConfig, "position_embedding_type", 1, "a string"),
        (VanillaBertConfig, "classifier_dropout", "0.1", "a number or null"),
    ],
)
def test_a_field_of_the_wrong_type_is_named_with_the_type_it_needs(config_class, field, value, expected):
    with pytest.raises(TypeError) as refused:  # a TypeError and a ValueError (ConfigTypeError is both)
        config_class(**{field: value})
    assert isinstance(refused.value, ValueError)
    assert f"{field}={value!r}" in str(refused.value) and f"must be {expected}" in str(refused.value)


def test_a_config_json_with_a_string_size_names_the_folder_and_the_key(tmp_path, tiny_transformer_config):
    model = VanillaTransformerForConditionalGeneration(tiny_transformer_config())
    folder = saved_folder(model, tmp_path / "model", d_model="32")
    with pytest.raises(TypeError, match=rf"{folder}/config.json: d_model='32' \(str\) must be an integer"):
        VanillaTransformerForConditionalGeneration.from_pretrained(folder)


def test_an_unknown_config_key_is_warned_by_name_with_the_likely_field(tmp_path, tiny_transformer_config):
    model = VanillaTransformerForConditionalGeneration(tiny_transformer_config())
    folder = saved_folder(model, tmp_path / "model", d_modle=64)
    with pytest.warns(UnknownConfigKeyWarning, match="unknown key 'd_modle'.*did you mean 'd_model'"):
        VanillaTransformerForConditionalGeneration.from_pretrained(folder)
    with pytest.warns(UnknownConfigKeyWarning, match="'num_hiden_layers'.*did you mean 'num_hidden_layers'"):
        VanillaBertConfig(num_hiden_layers=2)


def test_transformers_own_keys_and_saved_folders_load_without_a_warning(tmp_path, tiny_transformer_config,
                                                                          tiny_bert_config):
    translation = VanillaTransformerForConditionalGeneration(tiny_transformer_config())
    bert = VanillaBertForMaskedLM(tiny_bert_config())
    # every key transformers writes (the full dict, not the diff) and keys of configs saved by transformers 4
    legacy = dict(torchscript=False, use_bfloat16=False, pruned_heads={}, tf_legacy_loss=False, num_beams=4,
                  max_length=64, tokenizer_class=None, task_specific_params=None, is_decoder=False, _commit_hash="x")
    for model, name in ((translation, "translation"), (bert, "bert")):
        folder = saved_folder(model, tmp_path / name, **model.config.to_dict(), **legacy)
        with warnings.catch_warnings():
            warnings.simplefilter("error", UnknownConfigKeyWarning)
            type(model).from_pretrained(folder)


# --- nothing silently: a folder of another family --------------------------------------------------------------------


def test_a_folder_of_the_other_family_is_refused_naming_its_class(tmp_path, tiny_transformer_config, tiny_bert_config):
    translation = saved_folder(VanillaTransformerForConditionalGeneration(tiny_transformer_config()), tmp_path / "t")
    bert = saved_folder(VanillaBertForMaskedLM(tiny_bert_config()), tmp_path / "b")
    with pytest.raises(WrongModelTypeError, match="'vanilla_transformer' model .*VanillaTransformerForConditional"
                                                  "Generation.from_pretrained"):
        VanillaBertForMaskedLM.from_pretrained(translation)
    with pytest.raises(WrongModelTypeError, match="'vanilla_bert' model .*VanillaBertForMaskedLM.from_pretrained"):
        VanillaTransformerForConditionalGeneration.from_pretrained(bert)


def test_a_hugging_face_bert_folder_is_refused_naming_the_converter_which_gives_the_same_outputs(tmp_path):
    torch.manual_seed(0)
    hf = BertForMaskedLM(BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                    intermediate_size=37, max_position_embeddings=64)).eval()
    # as Hub BERT folders have it: the key that made our config fail with "'absolute' is not supported"
    folder = saved_folder(hf, tmp_path / "bert", position_embedding_type="absolute")
    for our_class in (VanillaBertModel, VanillaBertForMaskedLM):
        with pytest.raises(WrongModelTypeError, match="a 'bert' model .*convert_bert_to_vanilla\\(transformers."
                                                      "BertForMaskedLM.from_pretrained\\(folder\\)\\)"):
            our_class.from_pretrained(folder)
    ours = convert_bert_to_vanilla(BertForMaskedLM.from_pretrained(folder)).eval()  # the recipe the message gives
    ids = torch.tensor([[2, 15, 27, 39, 3], [2, 8, 9, 3, 0]])
    mask = (ids != 0).long()
    torch.testing.assert_close(ours(input_ids=ids, attention_mask=mask).logits,
                               hf(input_ids=ids, attention_mask=mask).logits, rtol=0, atol=1e-5)


# --- nothing silently: inputs ---------------------------------------------------------------------------------------


@pytest.fixture
def translation(tiny_transformer_config):
    torch.manual_seed(0)
    return VanillaTransformerForConditionalGeneration(tiny_transformer_config()).eval()  # 64 positions, 99 tokens


@pytest.mark.parametrize("kind", ["numpy", "list"])
def test_input_ids_that_are_not_a_tensor_get_a_type_error_naming_the_fix(kind, translation, tiny_bert_config):
    ids = [[5, 6, 7, 2]]
    ids = np.array(ids) if kind == "numpy" else ids
    bert = VanillaBertForMaskedLM(tiny_bert_config()).eval()
    for call in (lambda: bert(input_ids=ids),
                 lambda: translation(input_ids=ids, decoder_input_ids=torch.tensor([[1]])),
                 lambda: translation.generate(input_ids=ids, max_new_tokens=2)):
        with pytest.raises(TypeError, match=r"input_ids must be a torch.Tensor, got a .*: pass torch.tensor"):
            call()
    with pytest.raises(TypeError, match="attention_mask must be a torch.Tensor"):
        bert(input_ids=torch.tensor([[5, 6, 7, 2]]), attention_mask=np.ones((1, 4), dtype=int))


def test_more_new_tokens_than_target_positions_is_refused_naming_max_new_tokens(translation):
    source = torch.tensor([[5, 6, 7, 2]])
    with pytest.raises(ValueError) as refused:
        translation.generate(input_ids=source, max_new_tokens=1000)
    assert "lower max_new_tokens to at most 64" in str(refused.value) and "truncat" not in str(refused.value)
    with pytest.raises(ValueError, match="lower max_length to at most 65"):
        translation.generate(input_ids=source, max_length=1000)
    # the limit is exact: 64 new tokens after the start token use the 64 positions
    assert translation.generate(input_ids=source, max_new_tokens=64, min_new_tokens=64).shape == (1, 65)


def test_a_beam_wider_than_the_vocabulary_is_refused(translation):
    with pytest.raises(ValueError, match="num_beams=1000 is more than the 99 tokens of the vocabulary"):
        translation.generate(input_ids=torch.tensor([[5, 6, 7, 2]]), num_beams=1000, max_new_tokens=2)


def test_a_sequence_past_the_positions_says_how_to_cut_it_and_where_the_mask_must_be(tiny_bert_config):
    bert = VanillaBertForMaskedLM(tiny_bert_config(max_position_embeddings=16)).eval()
    with pytest.raises(ValueError, match=r"40 positions .*max_position_embeddings=16; .*truncation=True, max_length=16 "
                                         r".*\[MASK\] to fill must lie within the first 16 tokens"):
        bert(input_ids=torch.randint(5, 90, (1, 40)))


# --- nothing silently: tokenizers and pipelines -----------------------------------------------------------------------


def test_a_tokenizer_is_saved_with_its_model_length_limit(tmp_path, tiny_bert_config):
    texts = ["the cat sat on the mat.", "a dog ran in the park.", "birds eat seeds in the field."] * 10
    tokenizer = train_wordpiece_tokenizer(texts, vocab_size=90, min_frequency=1, show_progress=False)
    assert tokenizer.model_max_length == 512  # the trainer's default, BERT-base's
    model = VanillaBertForMaskedLM(tiny_bert_config(vocab_size=len(tokenizer), max_position_embeddings=16)).eval()
    save_for_hub(model, tmp_path, tokenizer)
    assert tokenizer.model_max_length == 512  # the caller's tokenizer is left as it was
    saved = AutoTokenizer.from_pretrained(tmp_path)
    assert saved.model_max_length == 16
    batch = saved(" ".join(texts), truncation=True, return_tensors="pt")  # now cut where the model needs it
    assert batch["input_ids"].shape[1] == 16
    VanillaBertForMaskedLM.from_pretrained(tmp_path)(**batch)


def test_fill_mask_past_the_positions_says_so_instead_of_a_missing_mask(tmp_path, tiny_bert_config):
    texts = ["the cat sat on the mat.", "a dog ran in the park."] * 10
    tokenizer = train_wordpiece_tokenizer(texts, vocab_size=60, min_frequency=1, show_progress=False)
    model = VanillaBertForMaskedLM(tiny_bert_config(vocab_size=len(tokenizer), max_position_embeddings=16)).eval()
    fill = pipeline("fill-mask", model=model, tokenizer=tokenizer)
    with pytest.raises(ValueError, match=r"max_position_embeddings=16; .*\[MASK\] to fill must lie within the first"):
        fill(" ".join(texts) + " the [MASK] sat.")


@pytest.fixture
def translator(tiny_transformer_config):
    tokenizer = train_bpe_tokenizer((SOURCES + TARGETS) * 5, vocab_size=150, show_progress=False)
    torch.manual_seed(0)
    config = tiny_transformer_config(**special_token_ids(tokenizer), max_position_embeddings=16)
    model = VanillaTransformerForConditionalGeneration(config).eval()
    return TranslationPipeline(model=model, tokenizer=tokenizer, max_new_tokens=4)


def test_a_text_longer_than_the_model_reads_is_translated_with_a_warning_naming_the_limit(translator):
    long_text = " ".join(SOURCES * 4)
    with pytest.warns(UserWarning, match=r"tokens long, more than the 16 the model reads .*truncation=True"):
        cut = translator(long_text)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert translator(long_text, truncation=True) == cut  # the same cut, asked for: no warning
        translator(SOURCES[0])  # a text that fits: no warning
    with pytest.raises(ValueError, match="more than the 16 the model reads .*split it"):
        translator(long_text, truncation=False)


# --- tokenizer corpora ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("train", [train_bpe_tokenizer, train_wordpiece_tokenizer])
def test_control_characters_of_a_corpus_are_removed_and_reported_with_counts(train):
    texts = ["the cat sat on the mat", "a dog\x00 ran\x00 in the park", "\x1b[31mbirds\x1b[0m eat seeds"] * 20
    counts = r"80 control characters in 40 of its texts \(NUL x 40, ESC x 40\)"
    with pytest.warns(ControlCharacterWarning, match=counts):
        tokenizer = train(texts, vocab_size=80, min_frequency=1, show_progress=False)
    assert not [token for token in tokenizer.get_vocab() if any(c in token for c in "\x00\x1b")]


@pytest.mark.parametrize("train", [train_bpe_tokenizer, train_wordpiece_tokenizer])
def test_a_very_long_text_reaches_the_trainer_in_pieces_that_change_no_word(train, monkeypatch):
    line = " ".join(f"word{i % 300} of{i % 7}" for i in range(3000))  # one text of 33,000 characters
    pieces = list(corpus.TrainingTexts([line]))
    monkeypatch.setattr(corpus, "PIECE_CHARACTERS", 1000)
    small = list(corpus.TrainingTexts([line]))
    assert pieces == [line] and len(small) > 30 and max(map(len, small)) <= 1000
    assert " ".join(small) == line  # cut at spaces: every word whole, in order
    cut = train([line], vocab_size=600, min_frequency=1, show_progress=False)  # room for every word: no ties
    monkeypatch.setattr(corpus, "PIECE_CHARACTERS", 10**9)
    whole = train([line], vocab_size=600, min_frequency=1, show_progress=False)
    assert cut.backend_tokenizer.to_str() == whole.backend_tokenizer.to_str()  # the same vocabulary and merges


def test_train_tokenizer_previews_a_cut_of_a_one_line_file_not_the_whole_line(tmp_path, monkeypatch):
    from vanilla_transformer.scripts import train_tokenizer

    line = " ".join(f"word{i % 500}" for i in range(40_000))  # one line of 300,000 characters
    (tmp_path / "one_line.txt").write_text(line + "\n")
    tokenized = []
    original = PreTrainedTokenizerFast.tokenize

    def recording(self, text, *args, **kwargs):
        tokenized.append(len(text))
        return original(self, text, *args, **kwargs)

    monkeypatch.setattr(PreTrainedTokenizerFast, "tokenize", recording)
    argv = ["--files", str(tmp_path / "one_line.txt"), "--vocab_size", "300", "--output_dir", str(tmp_path / "tok")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert train_tokenizer.main(argv) == 0
    assert tokenized and max(tokenized) <= 200  # the preview's cut, not the 300,000 characters
