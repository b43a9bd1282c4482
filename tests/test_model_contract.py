"""The contract every Hugging Face model keeps, on whichever transformers release is installed: the cache under both
of its names, half precision, `inputs_embeds`, the config's output switches, and Hub-ready folders from the standard
saving paths (`save_pretrained`, `push_to_hub`, `Trainer.save_model`)."""

import json
import logging
import warnings
from contextlib import nullcontext

import pytest
import torch
import transformers
from packaging.version import Version
from transformers import AutoModelForMaskedLM, AutoModelForSeq2SeqLM, Trainer, TrainingArguments

from vanilla_transformer.modeling import (
    VanillaBertForMaskedLM,
    VanillaBertForSequenceClassification,
    VanillaBertModel,
    VanillaTransformerForConditionalGeneration,
    VanillaTransformerModel,
)
from vanilla_transformer.modeling.compat import CACHE_FIELD, output_cache
from vanilla_transformer.tokenization import special_token_ids, train_bpe_tokenizer, train_wordpiece_tokenizer

SOURCES = ["ein Hund läuft im Park.", "zwei Männer spielen Fußball am Strand.", "eine Frau liest ein Buch."]
TARGETS = ["a dog runs in the park.", "two men play football on the beach.", "a woman reads a book."]
TEXTS = ["A charming and often affecting journey.", "Unflinchingly bleak and desperate.", "The acting is wonderful!"]


@pytest.fixture
def seq2seq(tiny_transformer_config):
    """A factory: seq2seq(**config overrides) -> a seeded tiny encoder-decoder in eval mode."""

    def build(**overrides) -> VanillaTransformerForConditionalGeneration:
        torch.manual_seed(0)
        return VanillaTransformerForConditionalGeneration(tiny_transformer_config(**overrides)).eval()

    return build


def source_batch():
    input_ids = torch.randint(3, 99, (3, 7))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 5:] = 0
    return input_ids, attention_mask


class _Messages(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def transformers_log():
    """Every message transformers logs meanwhile, `warning_once` ones included (its memory of what it said is reset)."""
    logging.Logger.warning_once.cache_clear()
    handler = _Messages()
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    yield handler.messages
    logger.removeHandler(handler)


# --- the cache argument: `past_key_values` until transformers 5.23, `cache` from 5.24 ---------------------------


def test_cache_field_is_the_one_the_installed_release_declares(seq2seq):
    assert CACHE_FIELD == ("cache" if Version(transformers.__version__) >= Version("5.24.0") else "past_key_values")
    model = seq2seq()
    input_ids, attention_mask = source_batch()
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=input_ids[:, :1], use_cache=True)
    assert CACHE_FIELD in out.keys()
    assert output_cache(out).get_seq_length() == 1


@pytest.mark.parametrize("name", ["cache", "past_key_values"])
def test_step_by_step_decoding_takes_the_cache_under_either_name(name, seq2seq):
    model = seq2seq()
    input_ids, attention_mask = source_batch()
    decoder_input_ids = torch.randint(3, 99, (3, 5))
    with torch.no_grad():
        parallel = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids).logits
        cache, steps = None, []
        for t in range(decoder_input_ids.shape[1]):
            deprecated = name == "past_key_values" and CACHE_FIELD == "cache" and cache is not None
            with pytest.warns(FutureWarning, match="`past_key_values` is deprecated") if deprecated else nullcontext():
                step = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=True,
                             decoder_input_ids=decoder_input_ids[:, t : t + 1], **{name: cache})
            cache = output_cache(step)
            steps.append(step.logits)
    assert cache.get_seq_length() == decoder_input_ids.shape[1]  # the cache passed in was the one extended
    torch.testing.assert_close(torch.cat(steps, dim=1), parallel, atol=1e-5, rtol=1e-5)


def test_both_cache_names_at_once_is_an_error(seq2seq):
    model = seq2seq()
    input_ids, _ = source_batch()
    with torch.no_grad():
        first = output_cache(model(input_ids=input_ids, decoder_input_ids=input_ids[:, :1], use_cache=True))
        second = output_cache(model(input_ids=input_ids, decoder_input_ids=input_ids[:, :1], use_cache=True))
    with pytest.raises(ValueError, match="cache.*past_key_values"):
        model(input_ids=input_ids, decoder_input_ids=input_ids[:, 1:2], cache=first, past_key_values=second)


def test_generation_logs_and_warns_no_deprecation(transformers_log, seq2seq):
    model = seq2seq()
    input_ids, attention_mask = source_batch()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=4)
        model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=4, num_beams=3)
        with torch.no_grad():
            out = model(input_ids=input_ids, decoder_input_ids=input_ids[:, :2], use_cache=True)
            model(input_ids=input_ids, decoder_input_ids=input_ids[:, 2:3], **{CACHE_FIELD: output_cache(out)})
    assert not [m for m in transformers_log if "deprecat" in m.lower()], transformers_log
    assert not [w for w in caught if "deprecat" in str(w.message).lower()], [str(w.message) for w in caught]


# --- half precision ------------------------------------------------------------------------------------------


def relative_error(output: torch.Tensor, reference: torch.Tensor) -> float:
    return ((output.float() - reference).abs().max() / reference.abs().max()).item()


# Largest relative logit error seen at these sizes, with a margin: bf16 keeps 8 bits of mantissa, fp16 11.
HALF_TOLERANCE = {torch.bfloat16: 0.05, torch.float16: 0.01}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_seq2seq_loads_runs_and_generates_in_half_precision(dtype, tmp_path, seq2seq):
    model = seq2seq()
    model.generation_config.update(max_new_tokens=6, min_new_tokens=6)
    input_ids, attention_mask = source_batch()
    model.save_pretrained(tmp_path)
    half = AutoModelForSeq2SeqLM.from_pretrained(tmp_path, dtype=dtype).eval()
    assert {p.dtype for p in half.parameters()} == {dtype}
    assert half.model.encoder.embed_positions.weight.dtype == dtype  # the sinusoidal table, rebuilt after loading
    for num_beams in (1, 3):
        reference = model.generate(input_ids=input_ids, attention_mask=attention_mask, num_beams=num_beams)
        generated = half.generate(input_ids=input_ids, attention_mask=attention_mask, num_beams=num_beams)
        assert generated.shape == reference.shape
        with torch.no_grad():  # teacher-forced on the fp32 model's output: logits close to fp32's
            expected = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=reference).logits
            logits = half(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=reference).logits
        assert logits.dtype == dtype
        assert relative_error(logits, expected) < HALF_TOLERANCE[dtype]
        # the same next-token choice wherever fp32's top two are not within half precision's error of each other
        top2 = expected.topk(2, dim=-1).values
        clear = (top2[..., 0] - top2[..., 1]) > 2 * HALF_TOLERANCE[dtype] * expected.abs().max()
        assert torch.equal(logits.argmax(-1)[clear], expected.argmax(-1)[clear])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("position_embedding_type", ["learned", "sinusoidal"])
def test_bert_loads_and_runs_in_half_precision(dtype, position_embedding_type, tmp_path, tiny_bert_config):
    torch.manual_seed(0)
    model = VanillaBertForMaskedLM(tiny_bert_config(position_embedding_type=position_embedding_type)).eval()
    input_ids, attention_mask = source_batch()
    model.save_pretrained(tmp_path)
    half = AutoModelForMaskedLM.from_pretrained(tmp_path, dtype=dtype).eval()
    with torch.no_grad():
        expected = model(input_ids=input_ids, attention_mask=attention_mask).logits
        logits = half(input_ids=input_ids, attention_mask=attention_mask).logits
    assert logits.dtype == dtype
    assert relative_error(logits, expected) < HALF_TOLERANCE[dtype]


# --- inputs_embeds, config switches, key/value heads ------------------------------------------------------------


def test_seq2seq_inputs_embeds_from_the_input_embeddings_equal_input_ids(seq2seq):
    model = seq2seq()
    input_ids, attention_mask = source_batch()
    decoder_input_ids = torch.randint(3, 99, (3, 4))
    embed = model.get_input_embeddings()
    with torch.no_grad():
        expected = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids).logits
        logits = model(inputs_embeds=embed(input_ids), attention_mask=attention_mask,
                       decoder_inputs_embeds=embed(decoder_input_ids)).logits
    torch.testing.assert_close(logits, expected, rtol=0, atol=0)


def test_bert_inputs_embeds_from_the_input_embeddings_equal_input_ids(tiny_bert_config):
    torch.manual_seed(0)
    model = VanillaBertModel(tiny_bert_config()).eval()
    input_ids, attention_mask = source_batch()
    with torch.no_grad():
        expected = model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        hidden = model(inputs_embeds=model.get_input_embeddings()(input_ids), attention_mask=attention_mask)
    torch.testing.assert_close(hidden.last_hidden_state, expected, rtol=0, atol=0)


def test_embedding_scale_survives_resizing_the_vocabulary(seq2seq):
    model = seq2seq()
    model.resize_token_embeddings(120)
    embed = model.get_input_embeddings()
    assert embed.num_embeddings == 120 and embed.scale == pytest.approx(32**0.5)
    ids = torch.tensor([[110, 5, 2]])
    torch.testing.assert_close(embed(ids), embed.weight[ids] * 32**0.5)
    model(input_ids=ids, decoder_input_ids=ids)  # an id of the new rows is accepted


@pytest.mark.parametrize("family", ["seq2seq", "bert"])
def test_config_output_switches_are_honoured(family, seq2seq, tiny_bert_config):
    input_ids, attention_mask = source_batch()
    if family == "seq2seq":
        model = seq2seq(attn_implementation="eager", output_attentions=True, output_hidden_states=True)
        out = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=input_ids[:, :3])
        counts = [len(out.encoder_attentions), len(out.decoder_attentions), len(out.cross_attentions),
                  len(out.encoder_hidden_states), len(out.decoder_hidden_states)]
        assert counts == [2, 2, 2, 3, 3]
        model.config.return_dict = False
        assert isinstance(model(input_ids=input_ids, decoder_input_ids=input_ids[:, :3]), tuple)
    else:
        torch.manual_seed(0)
        config = tiny_bert_config(attn_implementation="eager", output_attentions=True, output_hidden_states=True)
        model = VanillaBertForSequenceClassification(config).eval()
        out = model(input_ids=input_ids, attention_mask=attention_mask)
        assert (len(out.attentions), len(out.hidden_states)) == (2, 3)
        model.config.return_dict = False
        assert isinstance(model(input_ids=input_ids), tuple)
    assert model(input_ids=input_ids, **({"decoder_input_ids": input_ids[:, :3]} if family == "seq2seq" else {}),
                 output_attentions=False, return_dict=True).get("attentions") is None


def test_num_key_value_heads_is_filled_in(tiny_transformer_config, tiny_bert_config):
    assert tiny_transformer_config().num_key_value_heads == 4
    assert tiny_transformer_config(num_key_value_heads=2).num_key_value_heads == 2
    assert tiny_bert_config().num_key_value_heads == 4
    assert tiny_bert_config(num_key_value_heads=1).num_key_value_heads == 1
    # unequal stacks: one number cannot be each stack's head count; each stack keeps one key/value head per head
    config = tiny_transformer_config(encoder_attention_heads=4, decoder_attention_heads=2)
    model = VanillaTransformerModel(config)
    assert model.encoder.layers[0].self_attn.k_proj.out_features == 32
    assert model.decoder.layers[0].self_attn.k_proj.out_features == 32


# --- Hub-ready folders from the standard saving paths --------------------------------------------------------


@pytest.fixture(scope="module")
def bpe():
    return train_bpe_tokenizer((SOURCES + TARGETS) * 5, vocab_size=150, show_progress=False)


@pytest.fixture(scope="module")
def wordpiece():
    return train_wordpiece_tokenizer(TEXTS * 10, vocab_size=90, min_frequency=1, model_max_length=64,
                                     show_progress=False)


@pytest.fixture
def translation_model(bpe, tiny_transformer_config) -> VanillaTransformerForConditionalGeneration:
    model = VanillaTransformerForConditionalGeneration(tiny_transformer_config(**special_token_ids(bpe)))
    model.generation_config.max_new_tokens = 6
    return model.eval()


@pytest.fixture
def bert_model(wordpiece, tiny_bert_config) -> VanillaBertForMaskedLM:
    return VanillaBertForMaskedLM(tiny_bert_config(vocab_size=len(wordpiece))).eval()


def fake_push_to_hub(monkeypatch, destination):
    """push_to_hub with the Hub replaced by a copy of what it would upload (no network here)."""
    import shutil

    from huggingface_hub import HfApi
    from transformers.utils.hub import PushToHubMixin

    class Repo:
        def __init__(self, repo_id):
            self.repo_id = repo_id

    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kwargs: Repo(repo_id))
    monkeypatch.setattr(
        PushToHubMixin, "_upload_modified_files",
        lambda self, working_dir, *args, **kwargs: shutil.copytree(working_dir, destination, dirs_exist_ok=True),
    )


def save_by(path_kind: str, model, tokenizer, folder, monkeypatch, tmp_path):
    if path_kind == "save_pretrained":
        model.save_pretrained(folder)
    elif path_kind == "push_to_hub":
        fake_push_to_hub(monkeypatch, folder)
        model.push_to_hub("someone/tiny-model")
    else:  # Trainer.save_model, as at the end of a fine-tuning run
        args = TrainingArguments(output_dir=str(tmp_path / "run"), report_to=[], use_cpu=True)
        Trainer(model=model, args=args).save_model(str(folder))
    tokenizer.save_pretrained(folder)  # Trainer would save its processing_class; the others save it by hand


PATHS = ["save_pretrained", "push_to_hub", "Trainer.save_model"]


def test_standard_saving_paths_make_a_translation_folder_that_runs_without_the_package(
    translation_model, bpe, run_without_package, tmp_path, monkeypatch
):
    """One folder per saving path, all read by one Python process without our package (a process costs seconds)."""
    generated = translation_model.generate(**bpe(SOURCES[:2], return_tensors="pt", padding=True), num_beams=2)
    expected = bpe.batch_decode(generated, skip_special_tokens=True)
    folders = {path_kind: tmp_path / f"folder-{i}" for i, path_kind in enumerate(PATHS)}
    for path_kind, folder in folders.items():
        save_by(path_kind, translation_model, bpe, folder, monkeypatch, tmp_path)
        config = json.loads((folder / "config.json").read_text())
        assert set(config["auto_map"]) == {"AutoConfig", "AutoModel", "AutoModelForSeq2SeqLM"}, path_kind
        assert set(config["custom_pipelines"]) == {"translation", "text2text-generation"}, path_kind
    result = run_without_package(
        f"""
        import json
        from transformers import pipeline
        answers = {{}}
        for path_kind, folder in {({k: str(v) for k, v in folders.items()})!r}.items():
            translator = pipeline("translation", model=folder, trust_remote_code=True)
            answers[path_kind] = [r["translation_text"] for r in translator({SOURCES[:2]!r}, num_beams=2)]
        print(json.dumps(answers))
        """,
        cwd=str(tmp_path),
    )
    assert result == {path_kind: expected for path_kind in PATHS}


def test_standard_saving_paths_make_a_bert_folder_that_runs_without_the_package(
    bert_model, wordpiece, run_without_package, tmp_path, monkeypatch
):
    text = "The acting is [MASK]!"
    with torch.no_grad():
        logits = bert_model(**wordpiece(text, return_tensors="pt")).logits
    position = wordpiece(text)["input_ids"].index(wordpiece.mask_token_id)
    expected = wordpiece.convert_ids_to_tokens(int(logits[0, position].argmax()))
    folders = {path_kind: tmp_path / f"folder-{i}" for i, path_kind in enumerate(PATHS)}
    for path_kind, folder in folders.items():
        save_by(path_kind, bert_model, wordpiece, folder, monkeypatch, tmp_path)
        config = json.loads((folder / "config.json").read_text())
        assert "AutoModelForMaskedLM" in config["auto_map"] and "AutoModel" in config["auto_map"], path_kind
    result = run_without_package(
        f"""
        import json
        from transformers import pipeline
        answers = {{}}
        for path_kind, folder in {({k: str(v) for k, v in folders.items()})!r}.items():
            fill = pipeline("fill-mask", model=folder, trust_remote_code=True)
            answers[path_kind] = fill({text!r})[0]["token_str"].replace(" ", "")
        print(json.dumps(answers))
        """,
        cwd=str(tmp_path),
    )
    assert result == {path_kind: expected.replace(" ", "") for path_kind in PATHS}
