"""Checks the scripts make on a `--model_dir` / `--model_name_or_path` and on the paths they will write, before any
expensive work (reading data, loading weights, training, translating), with messages that name the path and the fix.

- `check_model_folder`: a local folder with config.json, weights and a tokenizer, or a Hub id; the model type the
  script needs; custom code (the folder's own .py files, `auto_map`) only with `trust_remote_code`, as everywhere in
  transformers. A folder that is not a model folder says which of its subfolders is ("did you mean .../final?").
- `check_finite_weights`, `check_tokenizer_fits`: a loaded model with NaN/inf weights (a diverged run), or a tokenizer
  with more tokens than the model's vocabulary, is refused instead of giving garbage or an index error in torch.
- `check_tokenizer_folder`: a folder a tokenizer loads from holds its vocabulary, not only tokenizer_config.json.
- `check_writable_dir`, `check_writable_file`, `check_not_the_model_folder`: an output that cannot be written (a
  symbolic link to nothing among them), or that would replace the model a script reads, is refused before the work,
  not after it.
"""

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from vanilla_transformer.scripts.training.errors import ArgumentError, hub_unreachable

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model",
                   "sentencepiece.bpe.model")
# A tokenizer's vocabulary: without one, tokenizer_config.json is settings only, and transformers fails ("need
# sentencepiece or tiktoken") or, for a BertTokenizer, makes one of 5 tokens that turns every word into [UNK].
VOCABULARY_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model",
                    "tokenizer.model", "source.spm", "merges.txt")
VOCABULARY_FREE = ("ByT5Tokenizer", "CanineTokenizer")  # bytes or characters: the settings are the whole tokenizer
SAVE_TOKENIZER = ("save the tokenizer beside the model (tokenizer.save_pretrained(folder)); the scripts' final "
                  "folders hold both")


class ModelFolderError(ArgumentError):
    """A model folder, Hub id or output path that a script cannot use; the message says why and what to do."""


@dataclass
class ModelFolder:
    name: str  # as given on the command line
    path: Path | None  # the local folder; None for a Hub id
    config: dict  # its config.json

    @property
    def model_type(self) -> str:
        return self.config.get("model_type", "")

    def __str__(self) -> str:
        return self.name


def check_model_folder(
    name: str,
    option: str = "--model_dir",
    *,
    model_types: tuple[str, ...] | None = None,
    encoder_decoder: bool | None = None,
    need_weights: bool = True,
    need_tokenizer: bool = True,
    trust_remote_code: bool | None = None,
    wanted: str = "a model folder",
) -> ModelFolder:
    """`name` as a model to load: a local folder, else a Hub id (its config.json fetched, or read from the cache
    when offline). `model_types`: the config's model_type must be one of them; `encoder_decoder`: True for a
    translation model, False for an encoder; `trust_remote_code`: the script's --trust_remote_code (None: the script
    has no such option); `wanted` describes what the script needs, for the messages."""
    if not name or not name.strip():
        raise ModelFolderError(f"{option} is empty: give {wanted}")
    local = Path(name).expanduser()
    if local.is_dir():
        config = _local_config(local, option, wanted)
        folder = ModelFolder(name, local, config)
    elif local.exists():
        raise ModelFolderError(f"{option} {name} is a file, not a model folder: give the folder that holds "
                               "config.json and the weights")
    else:
        folder = ModelFolder(name, None, _hub_config(name, option, wanted))
    model_type = folder.model_type
    if not model_type:
        raise ModelFolderError(f"{option} {name}: its config.json has no model_type; it was not saved by "
                               "save_pretrained (save the model again)")
    if model_types is not None and model_type not in model_types:
        raise ModelFolderError(f"{option} {name} holds a model of type {model_type!r}; this script needs {wanted} "
                               f"(model_type {' or '.join(repr(t) for t in model_types)})")
    if encoder_decoder is not None and bool(folder.config.get("is_encoder_decoder")) != encoder_decoder:
        kind = "an encoder-decoder" if folder.config.get("is_encoder_decoder") else "an encoder"
        raise ModelFolderError(f"{option} {name} holds a model of type {model_type!r} ({kind}); this script needs "
                               f"{wanted}")
    _check_code(folder, option, trust_remote_code)
    if folder.path is not None:
        if need_weights:
            _check_weights(folder.path, option)
        if need_tokenizer:
            check_tokenizer_folder(folder.path, option)
    return folder


def check_tokenizer_folder(name: str | Path | None, option: str, fix: str = SAVE_TOKENIZER) -> None:
    """A tokenizer to be loaded from `name` (None: none given; a Hub id is not checked here): a local folder that
    holds its vocabulary (tokenizer.json, vocab.txt, ...), not only its settings (tokenizer_config.json); `fix` says
    what to do instead."""
    if name is None:
        return
    folder = Path(name).expanduser()
    if not folder.is_dir():
        if os.sep in str(name) or str(name).startswith((".", "~")):  # a path, not a Hub id
            raise ModelFolderError(f"{option} {name}: no such folder")
        return
    if any((folder / file).is_file() for file in VOCABULARY_FILES):
        return
    settings_file = folder / "tokenizer_config.json"
    if settings_file.is_file():
        settings = _read_json(settings_file, "the folder is damaged: save the tokenizer again")
        if isinstance(settings, dict) and settings.get("tokenizer_class") in VOCABULARY_FREE:
            return
    raise ModelFolderError(
        f"{option} {folder} has no tokenizer files (none of {', '.join(VOCABULARY_FILES[:4])}"
        + ("; its tokenizer_config.json holds the settings, not the vocabulary" if settings_file.is_file() else "")
        + f"): {fix}"
    )


def _local_config(folder: Path, option: str, wanted: str) -> dict:
    config_file = folder / "config.json"
    if not config_file.is_file():
        candidates = _model_subfolders(folder)
        if candidates:
            hint = f"did you mean {candidates[0]}?" if len(candidates) == 1 else (
                f"did you mean one of {', '.join(str(c) for c in candidates[:5])}?")
        else:
            hint = "give the folder a training script saved (its final/ subfolder) or a Hub id"
        raise ModelFolderError(f"{option} {folder} is not a model folder (no config.json); {hint}")
    config = _read_json(config_file, "the folder is damaged: save the model again")
    if not isinstance(config, dict):
        raise ModelFolderError(f"{config_file} is not a JSON object: the folder is damaged; save the model again")
    return config


def _model_subfolders(folder: Path) -> list[Path]:
    """Model folders one or two levels below `folder` (a training run's output_dir), or the `final` folder of the run
    a checkpoint folder belongs to (output_dir/checkpoints/step-N): a `final` one first, then the newest."""
    found = [p.parent for pattern in ("*/config.json", "*/*/config.json") for p in folder.glob(pattern)]
    found += [run / "final" for run in (folder.parent, folder.parent.parent)
              if (run / "final" / "config.json").is_file()]
    return sorted(set(found), key=lambda p: (p.name != "final", -p.stat().st_mtime))


def _hub_config(name: str, option: str, wanted: str) -> dict:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    looks_local = name.startswith((".", "/", "~"))
    try:
        validate_repo_id(name)
    except HFValidationError:
        looks_local = True
    if looks_local:
        parent = Path(name).expanduser().parent
        where = f"{parent} exists, but not {Path(name).name}" if parent.is_dir() else f"no folder {parent} either"
        raise ModelFolderError(f"{option} {name}: no such folder ({where}); give {wanted}")
    try:
        config_file = hf_hub_download(name, "config.json")
    except Exception as error:  # not found, offline without a cached copy, no network, gated repo
        offline = " (HF_HUB_OFFLINE is set: only models already in the cache load)" if os.environ.get(
            "HF_HUB_OFFLINE", "").strip() not in ("", "0") else ""
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        unreachable = hub_unreachable(error)
        why = f"{type(error).__name__}: {first_line}"
        if unreachable:
            why = ("it is not in the cache: unset HF_HUB_OFFLINE to download it from the Hugging Face Hub over the "
                   "network, or give a local folder" if offline else
                   f"{unreachable}: check the network, or give a local folder")
        raise ModelFolderError(
            f"{option} {name}: no such local folder (from {Path.cwd()}), and not loadable as a Hub model id"
            f"{offline}: {why}"
        ) from None
    config = _read_json(Path(config_file), f"the config.json of the Hub model {name} is damaged")
    if not isinstance(config, dict):
        raise ModelFolderError(f"the config.json of the Hub model {name} is not a JSON object")
    return config


def _read_json(path: Path, fix: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise ModelFolderError(f"{path} is not UTF-8 text ({error.reason} at byte {error.start}): {fix}") from None
    except json.JSONDecodeError as error:
        raise ModelFolderError(f"{path} line {error.lineno}: not valid JSON ({error.msg}): {fix}") from None


def _check_code(folder: ModelFolder, option: str, trust_remote_code: bool | None) -> None:
    """A model type transformers (with this package imported) does not know, or a tokenizer class it does not know,
    loads only through the folder's own code (`auto_map`): that code runs only when the user asked for it."""
    from transformers import CONFIG_MAPPING
    from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

    needs_code = []
    if folder.model_type not in CONFIG_MAPPING:  # else a local class loads it, and the folder's .py files stay unrun
        if "auto_map" not in folder.config:
            raise ModelFolderError(f"{option} {folder}: model_type {folder.model_type!r} is unknown to this "
                                   "transformers and the folder brings no code for it (no auto_map)")
        needs_code.append(f"a model of type {folder.model_type!r}")
    settings_file = folder.path / "tokenizer_config.json" if folder.path is not None else None
    if settings_file is not None and settings_file.is_file():
        settings = _read_json(settings_file, "the folder is damaged: save the tokenizer again")
        tokenizer_class = settings.get("tokenizer_class") if isinstance(settings, dict) else None
        if ("AutoTokenizer" in ((settings.get("auto_map") or {}) if isinstance(settings, dict) else {})
                and tokenizer_class_from_name(tokenizer_class or "") is None):
            needs_code.append(f"a tokenizer of class {tokenizer_class!r}")
    if needs_code and not trust_remote_code:
        files = sorted(p.name for p in folder.path.glob("*.py")) if folder.path else []
        how = ("they run only if you ask: read them, then pass --trust_remote_code" if trust_remote_code is False else
               "this script runs no code of a model folder: use one that transformers or this package can load")
        raise ModelFolderError(
            f"{option} {folder} holds {' and '.join(needs_code)} whose code is the folder's own Python files"
            f"{' (' + ', '.join(files) + ')' if files else ''}; {how}"
        )


def _check_weights(folder: Path, option: str) -> None:
    present = [file for file in WEIGHT_FILES if (folder / file).is_file()]
    if not present:
        raise ModelFolderError(
            f"{option} {folder} has a config.json but no weights (none of {', '.join(WEIGHT_FILES[:3])}): a save "
            "that was cut short, or a folder of config and tokenizer only; save the model again"
        )
    if present[0] == "model.safetensors":
        from safetensors import safe_open

        try:
            with safe_open(folder / "model.safetensors", framework="pt") as weights:
                weights.keys()
        except Exception as error:  # a truncated or overwritten file: safetensors cannot read its header
            raise ModelFolderError(
                f"{folder / 'model.safetensors'} is not a readable safetensors file ({error}): it is damaged or was "
                "cut short; save the model again"
            ) from None


def check_finite_weights(model: torch.nn.Module, where: str) -> None:
    """Refuse a model with NaN or inf in its weights: what a diverged training run saves. Its outputs would be
    garbage reported as a result (a BLEU of 0, the accuracy of one class, an empty heatmap). For the models that did
    not come through our classes' `from_pretrained`, which refuses them itself (`HubFolders`): a transformers model
    (Marian, BERT), or one built from it (`convert_bert_to_vanilla`)."""
    tensors = {name: t for name, t in model.state_dict().items() if t.is_floating_point()}
    bad = [name for name, t in tensors.items() if not torch.isfinite(t).all()]
    if bad:
        raise ModelFolderError(
            f"{where} has NaN or inf weights in {len(bad)} of {len(tensors)} tensors ({', '.join(bad[:3])}"
            f"{', ...' if len(bad) > 3 else ''}): the training that saved it diverged; use an earlier checkpoint, "
            "or train again with a lower learning rate"
        )


def check_tokenizer_fits(tokenizer, config, where: str) -> None:
    """A tokenizer with ids beyond the model's embedding table fails deep in torch (index out of range)."""
    vocab_size = getattr(config, "vocab_size", None)
    if vocab_size is not None and len(tokenizer) > vocab_size:
        raise ModelFolderError(
            f"{where}: the tokenizer has {len(tokenizer)} tokens but the model's vocab_size is {vocab_size}: they do "
            "not belong together; save the model with the tokenizer it was trained with"
        )


def check_writable_dir(path: str | Path, option: str) -> Path:
    """Create `path` (and its parents) and write a probe file in it: a folder that cannot be written fails here,
    before the work, not at the end."""
    path = Path(path).expanduser()
    check_no_dangling_link(path, option)
    if path.exists() and not path.is_dir():
        raise ModelFolderError(f"{option} {path} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as error:
        raise ModelFolderError(f"{option} {path} cannot be written: {error.strerror or error}") from None
    return path


def check_writable_file(path: str | Path, option: str) -> Path:
    """`path` can be written (its folder is created if needed); an existing file there is not touched."""
    path = Path(path).expanduser()
    check_no_dangling_link(path, option)
    if path.is_dir():
        raise ModelFolderError(f"{option} {path} is a folder; name a file in it, e.g. {path / 'scores.json'}")
    ancestor = path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ModelFolderError(f"{option} {path}: {ancestor} is a file, so no folder can be made there")
    check_writable_dir(path.parent, option)
    return path


def check_no_dangling_link(path: str | Path, option: str) -> None:
    """Refuse an output path that is, or lies under, a symbolic link to nothing: making the folder fails there
    ("File exists"), and writing through it would write wherever the link points."""
    path = Path(path).expanduser()
    for link in (path, *path.parents):
        if link.is_symlink() and not link.exists():
            where = f"{option} {path}" + (f": {link}" if link != path else "")
            raise ModelFolderError(f"{where} is a symbolic link to {os.readlink(link)}, which does not exist: create "
                                   f"what it points to, or give another {option}")


def check_not_a_model_file(path: str | Path, model: ModelFolder, option: str) -> None:
    """Refuse to write over a file the model folder is loaded from (its config, weights, tokenizer, code)."""
    path = Path(path).expanduser()
    if model.path is None or path.resolve().parent != model.path.resolve() or not path.exists():
        return
    if path.name in ("config.json", "generation_config.json", "special_tokens_map.json", "merges.txt", *WEIGHT_FILES,
                     *TOKENIZER_FILES) or path.suffix in (".py", ".safetensors", ".bin", ".model"):
        raise ModelFolderError(f"{option} {path} is a file of the model folder {model.name}: writing it would damage "
                               "the model; name a new file")


def check_not_the_model_folder(output: str | Path, model: ModelFolder, option: str) -> None:
    """Refuse to write into the folder a script reads its model from: that would replace the model."""
    if model.path is not None and Path(output).expanduser().resolve() == model.path.resolve():
        raise ModelFolderError(
            f"{option} {output} is the model folder {model.name}: writing there would replace the model it starts "
            "from; choose a new folder"
        )
