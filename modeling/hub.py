"""Hub-ready folders: weights (safetensors), a config with `auto_map` (and `custom_pipelines`), the tokenizer,
the generation config and the modeling code, so that anyone loads the folder, or the Hub repo made from it, with
`trust_remote_code=True` on a machine without this package.

The code in a folder is what its model imports: transformers copies the module of the model's class and of its config,
and recursively every module they import relatively (`from .x import y`, inside functions too). This module imports
neither family (each declares its Auto classes and pipelines on its own PreTrainedModel), so a BERT folder holds
BERT's code and the encoder-decoder's folder its own (`tests/test_hub_folders.py` lists both).
"""

import itertools
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import PreTrainedModel


def _reference(cls: type) -> str:
    """How auto_map names a class: "<module file stem>.<class name>", the files lying flat beside config.json."""
    return f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__name__}"


def _own_auto_class(model: PreTrainedModel) -> str | None:
    """The Auto class that builds the model's class; None for a class that is not one of ours (a user's subclass)."""
    if not isinstance(model, HubFolders):
        return None
    return next((auto for auto, cls in model.hub_auto_classes().items() if cls is type(model)), None)


def enable_pipelines(model: PreTrainedModel) -> None:
    """Declare the family's pipelines (translation, text2text-generation) in the config: transformers 5 looks up
    `config.custom_pipelines` before its own (removed) tasks, for a saved folder and for a model in memory:
    `pipeline("translation", model=m, tokenizer=tok, config=m.config, pipeline_class=TranslationPipeline)`."""
    pipelines = model.hub_pipelines() if isinstance(model, HubFolders) else {}
    if pipelines:
        own_auto_class = _own_auto_class(model)
        if own_auto_class is None:
            raise ValueError(f"{type(model).__name__} has no Auto class in {sorted(model.hub_auto_classes())}")
        model.config.custom_pipelines = {
            task: {"impl": _reference(cls), "pt": [own_auto_class], "type": "text"} for task, cls in pipelines.items()
        }


def prepare_for_hub(model: PreTrainedModel) -> bool:
    """Write auto_map and custom_pipelines into the model's config and mark the classes for code export. False
    (and nothing changed) for a class that is not one of ours, a user's subclass say: it saves as transformers does."""
    own_auto_class = _own_auto_class(model)
    if own_auto_class is None:
        return False
    model.config.auto_map = {auto: _reference(cls) for auto, cls in model.hub_auto_classes().items()}
    enable_pipelines(model)
    # save_pretrained copies the module of a class registered for an Auto class, and the modules it imports.
    type(model.config).register_for_auto_class("AutoConfig")
    type(model).register_for_auto_class(own_auto_class)
    return True


class HubFolders:
    """Mixed into both families' PreTrainedModel.

    Saving: every standard path, `save_pretrained`, `push_to_hub`, `Trainer.save_model` and `Trainer(push_to_hub=True)`
    (they all call `save_pretrained`), writes a folder that loads with trust_remote_code=True without this package:
    the code files, `auto_map` for every Auto class the family serves and the pipelines it declares
    (`custom_pipelines`, their module beside the model files). Each family declares both on its PreTrainedModel
    (`hub_auto_classes`, `hub_pipelines`).

    Loading: `from_pretrained` refuses weights that are not finite (NaN or inf), which a flipped bit, a bad copy or a
    diverged run leave in a checkpoint and which would otherwise load without a word and make every output NaN.
    `allow_non_finite_weights=True` loads them anyway (to inspect a diverged run).
    """

    @staticmethod
    def hub_auto_classes() -> dict[str, type]:
        """{Auto class name: class} for every Auto class the family serves, written into a saved folder's auto_map.
        Declared by each family's PreTrainedModel: this module imports neither family, so that a saved folder, which
        carries the code its model imports, holds its own family's files only."""
        raise NotImplementedError("each model family's PreTrainedModel declares its hub_auto_classes()")

    @staticmethod
    def hub_pipelines() -> dict[str, type]:
        """{task: pipeline class} for the tasks the family serves that transformers lacks: none unless declared."""
        return {}

    def save_pretrained(self, save_directory, *args, **kwargs):
        # transformers' save then copies the code: the modules of the classes marked here and what they import, the
        # family's pipeline module among them (custom_pipelines' "impl")
        prepare_for_hub(self)
        return super().save_pretrained(save_directory, *args, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, allow_non_finite_weights: bool = False, **kwargs):
        try:
            loaded = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        except SafetensorError as error:  # its own message names no file
            raise ValueError(
                f"{pretrained_model_name_or_path}: a weights file (.safetensors) is damaged ({error}): it was cut short "
                "or changed after it was written; copy or download it again"
            ) from error
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # (model, loading info) with output_loading_info
        if not allow_non_finite_weights:
            bad = [
                name
                for name, tensor in itertools.chain(model.named_parameters(), model.named_buffers())
                if tensor.is_floating_point() and tensor.device.type != "meta" and not bool(torch.isfinite(tensor).all())
            ]
            if bad:
                raise ValueError(
                    f"{pretrained_model_name_or_path}: {len(bad)} weight tensor(s) hold NaN or inf values "
                    f"({', '.join(bad[:5])}{', ...' if len(bad) > 5 else ''}): the checkpoint is corrupt (a damaged or "
                    "incomplete copy: download or copy it again) or comes from a run that diverged (use an earlier "
                    "checkpoint); from_pretrained(..., allow_non_finite_weights=True) loads it anyway"
                )
        return loaded


def hub_classes(model_type: str) -> dict[str, type]:
    """{Auto class name: our class} of the family of `model_type`, among the families imported (each one's
    PreTrainedModel mixes in HubFolders; `import vanilla_transformer.modeling` imports both)."""
    for family in HubFolders.__subclasses__():
        if family.config_class.model_type == model_type:
            return family.hub_auto_classes()
    raise ValueError(f"no Hub export is defined for model_type={model_type!r}")


def save_tokenizer_with_model(tokenizer, folder: str | Path, config) -> None:
    """Save `tokenizer` into a model's folder with the model's own length limit as its `model_max_length`
    (`config.max_position_embeddings`): a tokenizer trained with the default 512 beside a model of 128 positions would
    let `truncation=True` through at 512 tokens, and the model fail on them. The caller's tokenizer is left as it
    was."""
    limit = getattr(config, "max_position_embeddings", None)
    previous = getattr(tokenizer, "model_max_length", None)
    if limit is not None and previous is not None:
        tokenizer.model_max_length = limit
    try:
        tokenizer.save_pretrained(folder)
    finally:
        if previous is not None:
            tokenizer.model_max_length = previous


def save_for_hub(model: PreTrainedModel, folder: str | Path, tokenizer=None, state_dict: dict | None = None) -> Path:
    """Save `model` (and `tokenizer`) as a folder that loads with trust_remote_code=True without this package:
    `model.save_pretrained(folder)` (Hub-ready by itself, `HubFolders`) and the tokenizer beside it, saying the model's
    length limit (`save_tokenizer_with_model`). `state_dict`: the weights to write instead of the model's own (those
    of a sharded model, gathered whole)."""
    folder = Path(folder)
    if not prepare_for_hub(model):
        raise ValueError(f"{type(model).__name__} is not one of this package's model classes; no Hub export for it")
    model.save_pretrained(folder, state_dict=state_dict)
    if tokenizer is not None:
        save_tokenizer_with_model(tokenizer, folder, model.config)
    return folder
