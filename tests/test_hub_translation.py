"""The Hugging Face surface of the encoder-decoder family: tokenizer, save/load, Auto classes, remote code
without the package, and the translation / text2text-generation pipelines."""

import ast
import json

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM, AutoTokenizer, pipeline

from vanilla_transformer.modeling import VanillaTransformerForConditionalGeneration, VanillaTransformerModel
from vanilla_transformer.modeling.hub import enable_pipelines, save_for_hub
from vanilla_transformer.modeling.pipeline_translation import Text2TextGenerationPipeline, TranslationPipeline
from vanilla_transformer.tokenization import special_token_ids, train_bpe_tokenizer

SOURCES = ["ein Hund läuft im Park.", "zwei Männer spielen Fußball am Strand.", "eine Frau liest ein Buch."]
TARGETS = ["a dog runs in the park.", "two men play football on the beach.", "a woman reads a book."]


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer((SOURCES + TARGETS) * 5, vocab_size=150, show_progress=False)


@pytest.fixture
def model(tokenizer, tiny_transformer_config):
    config = tiny_transformer_config(**special_token_ids(tokenizer))
    model = VanillaTransformerForConditionalGeneration(config).eval()
    model.generation_config.max_new_tokens = 8
    return model


def test_tokenizer_joint_vocabulary_labels_and_reload(tokenizer, tmp_path):
    batch = tokenizer(SOURCES[0], text_target=TARGETS[0])
    assert batch["input_ids"][-1] == tokenizer.eos_token_id and batch["labels"][-1] == tokenizer.eos_token_id
    assert tokenizer.decode(batch["labels"], skip_special_tokens=True) == TARGETS[0]  # spacing restored exactly
    assert [tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id] == [0, 1, 2, 3]
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)  # a standard fast tokenizer: no custom code
    assert reloaded(SOURCES + TARGETS)["input_ids"] == tokenizer(SOURCES + TARGETS)["input_ids"]
    assert type(reloaded).__module__.startswith("transformers.")


def test_save_load_round_trip_through_auto_classes(model, tokenizer, tmp_path):
    batch = tokenizer(SOURCES, text_target=TARGETS, padding=True, return_tensors="pt")
    expected = model(**batch).logits
    save_for_hub(model, tmp_path, tokenizer)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"]["AutoModelForSeq2SeqLM"] == "modeling_vanilla_transformer.VanillaTransformerForConditionalGeneration"
    assert set(config["auto_map"]) == {"AutoConfig", "AutoModel", "AutoModelForSeq2SeqLM"}
    assert config["custom_pipelines"]["translation"]["impl"] == "pipeline_translation.TranslationPipeline"
    for name in ("modeling_vanilla_transformer.py", "configuration_vanilla_transformer.py", "pipeline_translation.py"):
        assert (tmp_path / name).is_file(), name
    saved_code = {path.name: ast.parse(path.read_text()) for path in tmp_path.glob("*.py")}
    for name, tree in saved_code.items():  # every module the folder's code imports from the folder is in it
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                for module in [node.module] if node.module else [alias.name for alias in node.names]:
                    assert node.level == 1 and f"{module}.py" in saved_code, (name, module)
    assert (tmp_path / "model.safetensors").is_file()

    assert AutoConfig.from_pretrained(tmp_path).model_type == "vanilla_transformer"
    reloaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path).eval()
    assert isinstance(reloaded, VanillaTransformerForConditionalGeneration)
    assert reloaded.lm_head.weight.data_ptr() == reloaded.model.encoder.embed_tokens.weight.data_ptr()  # still tied
    torch.testing.assert_close(reloaded(**batch).logits, expected)
    assert isinstance(AutoModel.from_pretrained(tmp_path), VanillaTransformerModel)


def test_translation_pipelines_in_memory(model, tokenizer):
    inputs = tokenizer(SOURCES[1], return_tensors="pt")
    expected = tokenizer.decode(model.generate(**inputs, num_beams=3, max_new_tokens=6)[0], skip_special_tokens=True)

    enable_pipelines(model)
    translator = pipeline(
        "translation", model=model, tokenizer=tokenizer, config=model.config, pipeline_class=TranslationPipeline
    )
    assert translator(SOURCES[1], num_beams=3, max_new_tokens=6) == [{"translation_text": expected}]
    outputs = translator(SOURCES, num_beams=3, max_new_tokens=6)
    assert len(outputs) == 3 and outputs[1] == {"translation_text": expected}  # one dict per input

    generator = Text2TextGenerationPipeline(model=model, tokenizer=tokenizer, num_beams=3, max_new_tokens=6)
    assert generator(SOURCES[1]) == [{"generated_text": expected}]  # options given at construction pass through


def test_pipeline_rejects_a_tokenizer_of_another_model(model):
    other = train_bpe_tokenizer(SOURCES * 40 + [f"wort{i} " * 3 for i in range(300)], vocab_size=400, show_progress=False)
    assert len(other) > model.config.vocab_size
    with pytest.raises(ValueError, match="not trained together"):
        TranslationPipeline(model=model, tokenizer=other)


def test_remote_code_and_pipelines_without_the_package(model, tokenizer, tmp_path, run_without_package):
    inputs = tokenizer(SOURCES, padding=True, return_tensors="pt")
    expected_ids = model.generate(**inputs, num_beams=2, max_new_tokens=6)
    expected = tokenizer.batch_decode(expected_ids, skip_special_tokens=True)
    save_for_hub(model, tmp_path / "hub", tokenizer)
    result = run_without_package(
        f"""
        import json, torch
        from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM, AutoTokenizer, pipeline
        folder = {str(tmp_path / "hub")!r}
        model = AutoModelForSeq2SeqLM.from_pretrained(folder, trust_remote_code=True)
        tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
        inputs = tok({SOURCES!r}, padding=True, return_tensors="pt")
        ids = model.generate(**inputs, num_beams=2, max_new_tokens=6)
        translator = pipeline("translation", model=folder, trust_remote_code=True)
        text2text = pipeline("text2text-generation", model=folder, trust_remote_code=True)
        print(json.dumps({{
            "model_class": type(model).__name__,
            "module": type(model).__module__,
            "base_class": type(AutoModel.from_pretrained(folder, trust_remote_code=True)).__name__,
            "config_type": AutoConfig.from_pretrained(folder, trust_remote_code=True).model_type,
            "generated": tok.batch_decode(ids, skip_special_tokens=True),
            "translation": translator({SOURCES!r}, num_beams=2, max_new_tokens=6),
            "text2text": text2text({SOURCES[0]!r}, num_beams=2, max_new_tokens=6),
        }}))
        """,
        cwd=str(tmp_path),
    )
    assert result["model_class"] == "VanillaTransformerForConditionalGeneration"
    assert result["module"].startswith("transformers_modules.")  # loaded from the folder's own code
    assert result["base_class"] == "VanillaTransformerModel" and result["config_type"] == "vanilla_transformer"
    assert result["generated"] == expected
    assert [r["translation_text"] for r in result["translation"]] == expected
    assert result["text2text"] == [{"generated_text": expected[0]}]
