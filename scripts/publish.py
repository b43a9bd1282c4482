"""Turn a training output into a Hub-ready folder, and optionally upload it.

The folder holds the weights (safetensors), a config with `auto_map` (and `custom_pipelines` for translation),
the tokenizer, the generation config, the modeling code and a model card rendered from `model_card.md`
(YAML metadata: library, `custom_code` tag, pipeline tag, datasets, measured metrics). With --space, also a
Hugging Face Space folder: a Gradio page trying the model, with a copy of the folder (scripts/serving/space.py).

    python scripts/publish.py --model_dir outputs/multi30k/final --output_dir hub/multi30k-de-en \\
        --metrics_file outputs/multi30k/test_scores.json --datasets bentrevett/multi30k --language de en \\
        --push_to_hub user/vanilla-transformer-multi30k-de-en --space       # and hub/multi30k-de-en-space

Checked before anything is written: the model folder (one of ours, finite weights), the metrics file (JSON, finite
numbers), the output folder (new or empty, or an earlier output of this script; never the model folder) and the
Hub repo id. Only this package's classes load the model: the folder's own .py files never run. An upload that
cannot reach the Hub, or that the Hub refuses, says so: the folder stays ready to push later.
"""

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import HfApi, ModelCard, ModelCardData
from huggingface_hub.utils import HFValidationError, validate_repo_id
from transformers import AutoConfig, AutoTokenizer, HfArgumentParser

import vanilla_transformer.modeling  # noqa: F401  (registers our classes with the Auto classes)
from vanilla_transformer.scripts.serving.space import check_space_dir, space_folder, write_space
from vanilla_transformer.scripts.training.model_folders import (ModelFolderError, check_model_folder,
                                                               check_not_the_model_folder, check_tokenizer_fits,
                                                               check_writable_dir)
from vanilla_transformer.modeling.hub import hub_classes, save_for_hub
from vanilla_transformer.scripts.training.errors import (
    NetworkError,
    errors_without_traceback,
    hub_unreachable,
    parse_arguments,
    when_interrupted,
)

# The model card template: model_card.md at the top of the clone; scripts/model_card.md links to it, so that it is
# installed beside this file (package data of vanilla_transformer.scripts).
CTRANSLATE2_FOLDER = "ctranslate2"  # the exported model's subfolder of the Hub folder
TEMPLATE = Path(__file__).parent / "model_card.md"

# What each head is for on the Hub: (Auto class, pipeline tag, usage line for the card)
HEADS = {
    "ForConditionalGeneration": ("AutoModelForSeq2SeqLM", "translation", 'print(pipe("Ein Hund läuft im Park.", num_beams=4))'),
    "ForMaskedLM": ("AutoModelForMaskedLM", "fill-mask", 'print(pipe("The capital of France is [MASK]."))'),
    "ForSequenceClassification": ("AutoModelForSequenceClassification", "text-classification", 'print(pipe("A moving, funny film."))'),
    "ForTokenClassification": ("AutoModelForTokenClassification", "token-classification", 'print(pipe("Ada Lovelace was born in London."))'),
}


@dataclass
class PublishArguments:
    model_dir: str = field(metadata={"help": "a saved model folder (a training script's final output)"})
    output_dir: str = field(metadata={"help": "where to write the Hub-ready folder"})
    metrics_file: str | None = field(default=None, metadata={"help": "JSON {metric name: value} measured on a test set"})
    model_name: str | None = field(default=None, metadata={"help": "the card's title (default: the folder name)"})
    datasets: list[str] = field(default_factory=list, metadata={"help": "Hub ids of the training data"})
    language: list[str] = field(default_factory=list, metadata={"help": "ISO codes of the languages"})
    license: str = "apache-2.0"
    training_data: str = field(default="Not documented.", metadata={"help": "a paragraph on the training data"})
    training_recipe: str | None = field(default=None, metadata={"help": "a paragraph, or read from the model folder's training_args.json"})
    intended_use: str = "Research and experiments with small Transformer models; a starting point for fine-tuning."
    limitations: str = (
        "Trained from scratch on a small corpus: expect errors on text unlike the training data, and no knowledge "
        "beyond it. Not evaluated for bias or safety; do not use for decisions about people."
    )
    ctranslate2: str | None = field(default=None, metadata={
        "help": "also export the model to CTranslate2 in the subfolder ctranslate2/, with this weight type "
        "(float32, int8, int8_float32, float16, ...; needs the serve extra); the card shows how to use it"})
    push_to_hub: str | None = field(default=None, metadata={"help": "upload to this Hub repo id (user/name)"})
    space: bool = field(default=False, metadata={"help": "also write a Hugging Face Space, a Gradio page, in <output_dir>-space"})
    space_dir: str | None = field(default=None, metadata={"help": "the Space's folder, instead (implies --space)"})
    private: bool = field(default=False, metadata={"help": "create the Hub repo as private"})
    token: str | None = field(default=None, metadata={"help": "Hub token (default: the logged-in one)"})


def load_model(model_dir: str):
    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=False)
    classes = hub_classes(config.model_type)
    architecture = (config.architectures or [classes["AutoModel"].__name__])[0]
    model_class = next((cls for cls in classes.values() if cls.__name__ == architecture), None)
    if model_class is None:
        raise SystemExit(f"{model_dir}: architecture {architecture} is not one of ours ({sorted(c.__name__ for c in classes.values())})")
    model = model_class.from_pretrained(model_dir)  # refuses NaN or inf weights (HubFolders)
    return model


def read_metrics(path: str | None) -> dict[str, float]:
    """The top-level numbers of a JSON file of scores (evaluate_translation.py's output, or {name: value})."""
    if path is None:
        return {}
    if not Path(path).is_file():
        raise ModelFolderError(f"--metrics_file {path}: no such file")
    try:
        scores = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        where = f"line {error.lineno}: " if isinstance(error, json.JSONDecodeError) else ""
        raise ModelFolderError(f"--metrics_file {path}: {where}not valid JSON ({getattr(error, 'msg', error)})"
                               ) from None
    if not isinstance(scores, dict):
        raise ModelFolderError(f"--metrics_file {path} holds a JSON {type(scores).__name__}; expected an object "
                               '{"metric name": value, ...}')
    metrics = {name: value for name, value in scores.items()
               if isinstance(value, (int, float)) and not isinstance(value, bool)}
    broken = {name: value for name, value in metrics.items() if not math.isfinite(value)}
    if broken:
        raise ModelFolderError(f"--metrics_file {path}: {broken} is not a score to publish (the model or its "
                               "evaluation is broken); evaluate again")
    if not metrics:
        print(f"warning: --metrics_file {path} has no numbers at its top level: the card gets no metrics")
    return metrics


def check_output_dir(output_dir: Path, model) -> None:
    """New or empty, or an earlier output of this script (its card carries our tag); never the model folder."""
    check_not_the_model_folder(output_dir, model, "--output_dir")
    if output_dir.is_dir() and any(output_dir.iterdir()):
        card = output_dir / "README.md"
        ours = card.is_file() and "vanilla-transformer" in (ModelCard.load(card).data.tags or [])
        if not ours:
            raise ModelFolderError(f"--output_dir {output_dir} is not empty and not an earlier output of publish.py: "
                                   "choose a new or empty folder")
    check_writable_dir(output_dir, "--output_dir")


def render_card(model, args: PublishArguments, metrics: dict[str, float], repo_id: str) -> ModelCard:
    head = next((suffix for suffix in HEADS if type(model).__name__.endswith(suffix)), None)
    _, pipeline_tag, usage = HEADS.get(head, ("AutoModel", "feature-extraction", 'print(pipe("Hello world.")[0][0][:5])'))
    card_data = ModelCardData(
        library_name="transformers",
        tags=["custom_code", "vanilla-transformer", model.config.model_type],
        pipeline_tag=pipeline_tag,
        datasets=args.datasets or None,
        language=args.language or None,
        license=args.license,
        metrics=sorted(metrics) or None,
        model_name=args.model_name,
        **({"model-index": [_model_index(args, metrics, pipeline_tag)]} if metrics else {}),
    )
    config = model.config.to_dict()
    shown = ("vocab_size", "d_model", "hidden_size", "encoder_layers", "decoder_layers", "num_hidden_layers",
             "encoder_attention_heads", "decoder_attention_heads", "num_attention_heads", "num_key_value_heads",
             "encoder_ffn_dim", "decoder_ffn_dim", "intermediate_size", "normalize_before", "position_embedding_type",
             "max_position_embeddings")
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE),
        model_name=args.model_name,
        repo_id=repo_id,
        model_type=model.config.model_type,
        summary=f"{type(model).__name__} for {pipeline_tag}.",
        pipeline_tag=pipeline_tag,
        usage_example=usage,
        architecture={key: config[key] for key in shown if key in config},
        num_parameters=f"{model.num_parameters() / 1e6:.1f}M",
        training_data=args.training_data,
        training_recipe=args.training_recipe or "Not documented.",
        metrics=metrics,
        intended_use=args.intended_use,
        limitations=args.limitations,
        ctranslate2=ctranslate2_usage(model, args) if args.ctranslate2 else None,
    )


def ctranslate2_usage(model, args: PublishArguments) -> dict:
    """What the card's CTranslate2 section shows: the subfolder, its weight type, and the saved decoding settings."""
    generation = getattr(model, "generation_config", None)
    return {
        "folder": CTRANSLATE2_FOLDER,
        "quantization": args.ctranslate2,
        "translator": model.config.is_encoder_decoder,
        "num_beams": (generation.num_beams if generation else None) or 1,
        "length_penalty": 1.0 if generation is None or generation.length_penalty is None else generation.length_penalty,
        # longer outputs have no position vectors (CTranslate2 raises)
        "max_new_tokens": min((generation.max_new_tokens if generation else None) or 128,
                              model.config.max_position_embeddings),
    }


def _model_index(args: PublishArguments, metrics: dict[str, float], pipeline_tag: str) -> dict:
    return {
        "name": args.model_name,
        "results": [
            {
                "task": {"type": pipeline_tag},
                "dataset": {"name": args.datasets[0] if args.datasets else "custom", "type": args.datasets[0] if args.datasets else "custom"},
                "metrics": [{"type": name, "value": value, "name": name} for name, value in sorted(metrics.items())],
            }
        ],
    }


def recipe_from(model_dir: Path) -> str | None:
    """A training script's arguments, if it left them beside the model."""
    for name in ("training_args.json", "train_args.json", "finetune_args.json"):
        path = model_dir / name
        if path.is_file():
            try:
                arguments = json.loads(path.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as error:
                print(f"warning: {path} is not valid JSON ({error}): the card's training recipe is left out")
                return None
            if name == "finetune_args.json":  # {"args": ..., "train_sha256": ..., "classes": ...}
                arguments = arguments.get("args", arguments)
            return "Trained with:\n\n```json\n" + json.dumps(arguments, indent=2, sort_keys=True) + "\n```"
    return None


def publish(args: PublishArguments, api: HfApi | None = None) -> Path:
    model_dir, output_dir = Path(args.model_dir), Path(args.output_dir)
    # Everything is checked before anything is written.
    folder = check_model_folder(args.model_dir, "--model_dir", model_types=("vanilla_transformer", "vanilla_bert"),
                                wanted="a model folder of this package (a training script's final/)")
    if folder.path is None:
        raise ModelFolderError(f"--model_dir {args.model_dir}: no such folder; publish.py takes a local folder")
    if args.push_to_hub:
        try:
            validate_repo_id(args.push_to_hub)
        except HFValidationError as error:
            raise ModelFolderError(f"--push_to_hub {args.push_to_hub} is not a Hub repo id (user/name): {error}") from None
    metrics = read_metrics(args.metrics_file)
    check_output_dir(output_dir, folder)
    space_dir = space_folder(args.space, args.space_dir, output_dir)
    if space_dir is not None:
        check_space_dir(space_dir, output_dir, folder)
    args.model_name = args.model_name or model_dir.resolve().name
    args.training_recipe = args.training_recipe or recipe_from(model_dir)
    model = load_model(str(model_dir))
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
    check_tokenizer_fits(tokenizer, model.config, args.model_dir)
    save_for_hub(model, output_dir, tokenizer)
    if args.ctranslate2:  # from the folder just written: its tokenizer and generation config travel along
        from vanilla_transformer.modeling.convert_ctranslate2 import export_ctranslate2

        export_ctranslate2(output_dir, output_dir / CTRANSLATE2_FOLDER, args.ctranslate2, force=True)
    repo_id = args.push_to_hub or f"<user>/{args.model_name}"
    if space_dir is not None:  # before the card: a card of this run still means that everything was written
        print(f"Space folder: {write_space(space_dir, output_dir, args.model_name, args.push_to_hub, args.license)}")
    render_card(model, args, metrics, repo_id).save(output_dir / "README.md")
    print(f"Hub-ready folder: {output_dir}")
    if args.push_to_hub:
        push(args, output_dir, api)
    return output_dir


def push(args: PublishArguments, output_dir: Path, api: HfApi | None) -> None:
    """Upload the folder to --push_to_hub. The Hub out of reach, or refusing (a missing or read-only token, a
    namespace that is not yours): a `NetworkError` saying so, and how to push the folder, which is ready, later."""
    try:
        api = api or HfApi(token=args.token)
        api.create_repo(args.push_to_hub, private=args.private, exist_ok=True)
        commit = api.upload_folder(repo_id=args.push_to_hub, folder_path=str(output_dir),
                                   commit_message=f"Upload {args.model_name}")
    except Exception as error:
        unreachable = hub_unreachable(error)
        status = getattr(getattr(error, "response", None), "status_code", None)
        if unreachable:
            raise NetworkError(f"{unreachable}: check the network or HF_HUB_OFFLINE; {push_later(args)}") from None
        if isinstance(status, int) and 400 <= status < 500:
            said = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise NetworkError(f"the Hugging Face Hub refused to create or write {args.push_to_hub} ({said}): log in "
                               f"(`hf auth login`) or pass --token, with write access to it; {push_later(args)}"
                               ) from None
        raise
    print(f"uploaded: {getattr(commit, 'commit_url', commit)}")


def push_later(args: PublishArguments) -> str:
    private = " --private" if args.private else ""
    return (f"the folder is ready in {args.output_dir} to push later with `hf upload {args.push_to_hub} "
            f"{args.output_dir} .{private}` (or this command again)")


def interrupted(args: PublishArguments, started: float) -> str:
    """What Ctrl-C left: the card is written last, so a card of this run means a complete folder."""
    output_dir, card = Path(args.output_dir), Path(args.output_dir) / "README.md"
    if card.is_file() and card.stat().st_mtime >= started:
        return f"the folder {output_dir} is complete" + (f"; {push_later(args)}" if args.push_to_hub else "")
    if output_dir.is_dir() and any(output_dir.iterdir()):
        return f"{output_dir} is incomplete: delete it, then run the same command again"
    return "nothing was written: run the same command again"


def main(argv: list[str] | None = None) -> int:
    started = time.time()
    with errors_without_traceback():
        (args,) = parse_arguments(HfArgumentParser(PublishArguments), argv)
        when_interrupted(lambda: interrupted(args, started))
        publish(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
