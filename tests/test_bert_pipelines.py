"""fill-mask, text-classification, token-classification and feature-extraction with our BERT models: in memory, and
from Hub-ready folders loaded with trust_remote_code=True in a process where vanilla_transformer cannot be imported."""

import json

import pytest
import torch
from conftest import tiny_bert_config
from remote import run_without_package
from transformers import pipeline

from vanilla_transformer.modeling import (
    VanillaBertForMaskedLM,
    VanillaBertForSequenceClassification,
    VanillaBertForTokenClassification,
)
from vanilla_transformer.modeling.hub import save_for_hub
from vanilla_transformer.tokenization import train_wordpiece_tokenizer

TEXTS = ["A charming and often affecting journey.", "Unflinchingly bleak and desperate.", "The acting is wonderful!"]
SENTIMENT = {"id2label": {0: "negative", 1: "positive"}, "label2id": {"negative": 0, "positive": 1}}
ENTITIES = {"id2label": {0: "O", 1: "B-ART", 2: "I-ART"}, "label2id": {"O": 0, "B-ART": 1, "I-ART": 2}}
AUTO_CLASSES = {
    "AutoConfig",
    "AutoModel",
    "AutoModelForMaskedLM",
    "AutoModelForSequenceClassification",
    "AutoModelForTokenClassification",
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The tokenizer, three small models, what the pipelines give in memory, and their Hub-ready folders."""
    torch.manual_seed(0)
    tokenizer = train_wordpiece_tokenizer(
        TEXTS * 10, vocab_size=90, min_frequency=1, model_max_length=64, show_progress=False
    )
    config = dict(vocab_size=len(tokenizer))
    models = {
        "mlm": VanillaBertForMaskedLM(tiny_bert_config(**config)),
        "cls": VanillaBertForSequenceClassification(tiny_bert_config(**config, **SENTIMENT)),
        "tok": VanillaBertForTokenClassification(tiny_bert_config(**config, **ENTITIES)),
    }
    root = tmp_path_factory.mktemp("bert-hub")
    folders = {name: str(save_for_hub(model.eval(), root / name, tokenizer)) for name, model in models.items()}
    return tokenizer, models, folders


def run_pipelines(load) -> dict:
    """The four pipelines through `load(task, name)`; the same code runs in memory and in the subprocess."""
    text = "A charming [MASK] journey."
    fill = load("fill-mask", "mlm")(text, top_k=3)
    classify = load("text-classification", "cls")(TEXTS)
    tag = load("token-classification", "tok")(TEXTS[0])
    features = load("feature-extraction", "mlm")(TEXTS[1])
    return {
        "fill": [[r["token_str"], round(r["score"], 5)] for r in fill],
        "classify": [[r["label"], round(r["score"], 5)] for r in classify],
        "tag": [[r["entity"], r["start"], r["end"], round(float(r["score"]), 5)] for r in tag],
        "features": [len(features[0]), len(features[0][0]), round(sum(features[0][0]), 4)],
    }


def test_four_pipelines_in_memory_and_from_saved_folders_without_the_package(saved):
    tokenizer, models, folders = saved
    for folder in folders.values():
        config = json.loads((__import__("pathlib").Path(folder) / "config.json").read_text())
        assert set(config["auto_map"]) == AUTO_CLASSES

    def in_memory(task, name):
        model = models[name].bert if task == "feature-extraction" else models[name]
        return pipeline(task, model=model, tokenizer=tokenizer)

    expected = run_pipelines(in_memory)
    assert expected["classify"][0][0] in ("negative", "positive")
    assert expected["features"][:2] == [len(tokenizer(TEXTS[1])["input_ids"]), 32]
    assert len(expected["tag"]) > 0

    import inspect

    remote = run_without_package(
        f"""
        import json
        from transformers import pipeline
        folders = {folders!r}
        TEXTS = {TEXTS!r}
        loaded_classes = {{}}
        def load(task, name):
            p = pipeline(task, model=folders[name], trust_remote_code=True)
            loaded_classes[task] = type(p.model).__name__
            return p
        {inspect.getsource(run_pipelines)}
        result = run_pipelines(load)
        result["classes"] = loaded_classes
        print(json.dumps(result))
        """.replace("\n        ", "\n"),
        cwd=str(folders["mlm"]),
    )
    assert remote.pop("classes") == {
        "fill-mask": "VanillaBertForMaskedLM",
        "text-classification": "VanillaBertForSequenceClassification",
        "token-classification": "VanillaBertForTokenClassification",
        "feature-extraction": "VanillaBertModel",
    }
    assert remote == json.loads(json.dumps(expected))
