"""scripts/publish.py: a Hub-ready folder with a rendered model card, and an upload through the Hub client
(a stand-in client here: there is no network)."""

import json
from pathlib import Path

import yaml
from huggingface_hub import ModelCard

from vanilla_transformer.modeling import VanillaTransformerForConditionalGeneration
from vanilla_transformer.scripts.publish import PublishArguments, publish
from vanilla_transformer.tokenization import special_token_ids, train_bpe_tokenizer


class RecordingHubClient:
    """Stands in for huggingface_hub.HfApi: records what publish asks of it."""

    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs["repo_id"], kwargs))
        self.uploaded = sorted(p.name for p in Path(kwargs["folder_path"]).iterdir())


def test_publish_renders_card_and_uploads(tmp_path, tiny_transformer_config):
    tok = train_bpe_tokenizer(["ein Hund läuft.", "a dog runs."] * 10, vocab_size=60, show_progress=False)
    model = VanillaTransformerForConditionalGeneration(tiny_transformer_config(**special_token_ids(tok)))
    model.save_pretrained(tmp_path / "trained")
    tok.save_pretrained(tmp_path / "trained")
    (tmp_path / "trained" / "training_args.json").write_text(json.dumps({"max_tokens": 3000, "label_smoothing": 0.1}))
    (tmp_path / "scores.json").write_text(json.dumps({"sacrebleu": 38.7, "chrf": 61.2, "note": "not a number"}))

    client = RecordingHubClient()
    args = PublishArguments(
        model_dir=str(tmp_path / "trained"),
        output_dir=str(tmp_path / "hub"),
        metrics_file=str(tmp_path / "scores.json"),
        datasets=["bentrevett/multi30k"],
        language=["de", "en"],
        push_to_hub="someone/tiny-de-en",
        private=True,
    )
    folder = publish(args, api=client)

    card = ModelCard.load(folder / "README.md")
    meta = yaml.safe_load(card.content.split("---")[1])
    assert "custom_code" in meta["tags"] and meta["pipeline_tag"] == "translation"
    assert meta["library_name"] == "transformers" and meta["datasets"] == ["bentrevett/multi30k"]
    values = {m["type"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert values == {"sacrebleu": 38.7, "chrf": 61.2}
    assert '"label_smoothing": 0.1' in card.text and 'model="someone/tiny-de-en"' in card.text

    assert [c[0] for c in client.calls] == ["create_repo", "upload_folder"]
    assert client.calls[0][1] == "someone/tiny-de-en" and client.calls[0][2]["private"] is True
    assert client.calls[1][2]["folder_path"] == str(folder)
    for name in ("README.md", "config.json", "model.safetensors", "modeling_vanilla_transformer.py", "tokenizer.json", "generation_config.json"):
        assert name in client.uploaded, name
    assert "auto_map" in json.loads((folder / "config.json").read_text())
