"""fill-mask, text-classification, token-classification and feature-extraction with our BERT models: in memory, and
from Hub-ready folders loaded with trust_remote_code=True in a process where vanilla_transformer cannot be imported."""

import inspect
import json
from pathlib import Path

import pytest
import torch
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


@pytest.fixture
def saved(tiny_bert_config, tmp_path):
    """The tokenizer, three small models and their Hub-ready folders."""
    tokenizer = train_wordpiece_tokenizer(
        TEXTS * 10, vocab_size=90, min_frequency=1, model_max_length=64, show_progress=False
    )
    config = dict(vocab_size=len(tokenizer))
    models = {
        "mlm": VanillaBertForMaskedLM(tiny_bert_config(**config)),
        "cls": VanillaBertForSequenceClassification(tiny_bert_config(**config, **SENTIMENT)),
        "tok": VanillaBertForTokenClassification(tiny_bert_config(**config, **ENTITIES)),
    }
    folders = {name: str(save_for_hub(model.eval(), tmp_path / name, tokenizer)) for name, model in models.items()}
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


def by_hand(tokenizer, models) -> dict:
    """What `run_pipelines` should give, computed from the models' outputs with the pipelines' documented rules
    (softmax scores; fill-mask's top k at the [MASK]; token-classification drops special tokens and "O")."""
    with torch.no_grad():
        text = "A charming [MASK] journey."
        ids = tokenizer(text, return_tensors="pt")
        position = ids["input_ids"][0].tolist().index(tokenizer.mask_token_id)
        top = models["mlm"](**ids).logits[0, position].softmax(-1).topk(3)
        fill = [[tokenizer.decode([i]), p] for p, i in zip(top.values.tolist(), top.indices.tolist())]

        classify = []
        for text in TEXTS:
            probs = models["cls"](**tokenizer(text, return_tensors="pt")).logits[0].softmax(-1)
            classify.append([SENTIMENT["id2label"][int(probs.argmax())], float(probs.max())])

        encoded = tokenizer(TEXTS[0], return_offsets_mapping=True, return_special_tokens_mask=True)
        probs = models["tok"](torch.tensor([encoded["input_ids"]])).logits[0].softmax(-1)
        tag = []
        for (start, end), special, p in zip(encoded["offset_mapping"], encoded["special_tokens_mask"], probs):
            label = ENTITIES["id2label"][int(p.argmax())]
            if not special and label != "O":
                tag.append([label, start, end, float(p.max())])

        hidden = models["mlm"].bert(**tokenizer(TEXTS[1], return_tensors="pt")).last_hidden_state[0]
        features = [hidden.shape[0], hidden.shape[1], hidden[0].sum().item()]
    return {"fill": fill, "classify": classify, "tag": tag, "features": features}


def test_four_pipelines_in_memory_and_from_saved_folders_without_the_package(saved, run_without_package):
    tokenizer, models, folders = saved
    for folder in folders.values():
        config = json.loads((Path(folder) / "config.json").read_text())
        assert set(config["auto_map"]) == AUTO_CLASSES

    def in_memory(task, name):
        model = models[name].bert if task == "feature-extraction" else models[name]
        return pipeline(task, model=model, tokenizer=tokenizer)

    expected = run_pipelines(in_memory)
    reference = by_hand(tokenizer, models)
    assert len(reference["tag"]) > 0  # the random tagger labels some token other than "O": the check has content
    for task in ("fill", "classify", "tag", "features"):
        assert len(expected[task]) == len(reference[task]), task
        for got, want in zip(expected[task], reference[task]):
            if task == "features":
                assert got == pytest.approx(want, abs=1e-3)
            else:  # labels, tokens and offsets exactly; the score (last) to the pipelines' rounding
                assert got[:-1] == want[:-1], task
                assert got[-1] == pytest.approx(want[-1], abs=1e-4), task

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
