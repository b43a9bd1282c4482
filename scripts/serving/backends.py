"""What `vanilla-transformer serve` runs: a model folder loaded once, its inputs checked before they are queued.

- `PyTorchTranslation`: a translation folder (ours, or any seq2seq folder transformers loads), `generate()`.
- `CTranslate2Translation`: its CTranslate2 export (`vanilla-transformer export-ctranslate2`), no PyTorch model.
- `BertTasks`: a BERT-style folder, through transformers' pipelines: fill-mask (a masked-LM head), text
  classification and token classification (a fine-tuned head), whichever heads the folder's `architectures` name.

Every back end turns a request's texts into inputs with `encode` (refusing, with `BadRequest`, a text that is empty
or longer than the model's positions) and runs a batch of them with `run(key, inputs)`, on the batcher's thread.
The folder is untrusted input: `check_model_folder` refuses custom code unless `trust_remote_code`, our classes'
`from_pretrained` bound the config's sizes, and the few fields read here (languages, positions) are checked.
"""

import json
import re
from dataclasses import dataclass
from pathlib import Path

from vanilla_transformer.scripts.training.errors import ArgumentError

LANGUAGE_CODE = re.compile(r"[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})*")
MAX_SMALL_FILE = 1 << 20  # training_args.json, config.json of an export: read only when this small


class BadRequest(ValueError):
    """A request the model cannot answer as sent; the message says what to send instead (HTTP `status`)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class FolderError(ArgumentError):
    """A folder `serve` cannot use; the message names the fix."""


def _read_small_json(path: Path) -> dict:
    if not path.is_file() or path.stat().st_size > MAX_SMALL_FILE:
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def is_ctranslate2_export(folder: Path) -> bool:
    return (folder / "model.bin").is_file() and (folder / "shared_vocabulary.json").is_file()


def check_language(code, option: str) -> str:
    if not isinstance(code, str) or not LANGUAGE_CODE.fullmatch(code):
        raise FolderError(f"{option} {code!r} is not a language code: give one such as de, en or pt-BR")
    return code


def model_languages(folder: Path, source_lang: str | None, target_lang: str | None) -> tuple[str, str]:
    """The pair the model translates: the options, else the training_args.json its training run saved."""
    saved = _read_small_json(folder / "training_args.json")
    source, target = source_lang or saved.get("source_lang"), target_lang or saved.get("target_lang")
    if source is None or target is None:
        raise FolderError(f"{folder} does not say which languages it translates (no training_args.json with "
                          "source_lang and target_lang): give --source_lang and --target_lang")
    return check_language(source, "source_lang"), check_language(target, "target_lang")


def check_texts(texts: list[str], field: str) -> None:
    for index, text in enumerate(texts):
        if not text.strip():
            where = f"{field}[{index}]" if len(texts) > 1 else field
            raise BadRequest(f"{where} is empty: send the text itself")


def check_length(lengths: list[int], limit: int, field: str, unit: str = "tokens") -> None:
    for index, length in enumerate(lengths):
        if length > limit:
            where = f"{field}[{index}]" if len(lengths) > 1 else field
            raise BadRequest(f"{where} is {length} {unit} long; this model reads at most {limit} "
                             "(max_position_embeddings): split it into sentences and send them as a list")


@dataclass(frozen=True)
class GenerationOptions:
    """What a translation batch shares: requests with other options wait for a batch of their own."""

    num_beams: int
    length_penalty: float
    max_new_tokens: int


class Translation:
    """What the two translation back ends share: languages, defaults, bounds, `encode`."""

    task = "translation"
    engine = ""

    def __init__(self, folder: Path, source_lang: str | None, target_lang: str | None, max_beams: int,
                 defaults: dict, max_positions: int):
        self.folder = folder
        self.source_lang, self.target_lang = model_languages(folder, source_lang, target_lang)
        self.max_beams = max_beams
        self.max_positions = max_positions
        beams = defaults.get("num_beams") or 1
        penalty = defaults.get("length_penalty")
        new_tokens = defaults.get("max_new_tokens") or (defaults.get("max_length") or 20) - 1
        penalty = 1.0 if penalty is None else penalty
        for name, value in (("num_beams", beams), ("max_new_tokens", new_tokens), ("length_penalty", penalty)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not -1e6 < value < 1e9:
                raise FolderError(f"{folder}/generation_config.json: {name} {value!r} is not a usable number; "
                                  "fix or delete the file")
        # the saved defaults, within the server's bounds
        self.defaults = GenerationOptions(max(1, min(int(beams), max_beams)), float(penalty),
                                          max(1, min(int(new_tokens), max_positions)))

    def options(self, beam_size: int | None, length_penalty: float | None, max_new_tokens: int | None
                ) -> GenerationOptions:
        if beam_size is not None and not 1 <= beam_size <= self.max_beams:
            raise BadRequest(f"beam_size {beam_size}: this server takes 1 to {self.max_beams}")
        if length_penalty is not None and not -10.0 <= length_penalty <= 10.0:
            raise BadRequest(f"length_penalty {length_penalty}: give a number from -10 to 10 (1.0 divides a "
                             "hypothesis' log-probability by its length; 0 does not)")
        if max_new_tokens is not None and not 1 <= max_new_tokens <= self.max_positions:
            raise BadRequest(f"max_new_tokens {max_new_tokens}: this model writes 1 to {self.max_positions} tokens "
                             "(max_position_embeddings)")
        return GenerationOptions(self.defaults.num_beams if beam_size is None else beam_size,
                                 self.defaults.length_penalty if length_penalty is None else length_penalty,
                                 self.defaults.max_new_tokens if max_new_tokens is None else max_new_tokens)

    def check_pair(self, source: str, target: str | None) -> None:
        if source not in ("auto", self.source_lang) or target not in (None, self.target_lang):
            raise BadRequest(f"this model translates {self.source_lang} to {self.target_lang} only, not "
                             f"{source} to {target}: send source {self.source_lang!r} (or 'auto') and target "
                             f"{self.target_lang!r}")

    def encode(self, texts: list[str]) -> list[list[int]]:
        check_texts(texts, "q")
        ids = self._token_ids(texts)
        check_length([len(x) for x in ids], self.max_positions, "q")
        return ids

    def describe(self) -> dict:
        return {"task": self.task, "engine": self.engine, "source": self.source_lang, "target": self.target_lang,
                "max_positions": self.max_positions, "defaults": self.defaults.__dict__}


class PyTorchTranslation(Translation):
    engine = "pytorch"

    def __init__(self, folder: Path, *, trust_remote_code: bool, source_lang=None, target_lang=None,
                 max_beams: int = 8, device: str = "cpu"):
        import torch
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        self.torch = torch
        self.model = AutoModelForSeq2SeqLM.from_pretrained(folder, trust_remote_code=trust_remote_code)
        self.model = self.model.to(device).eval()
        from vanilla_transformer.modeling.hub import HubFolders
        from vanilla_transformer.scripts.training.model_folders import check_finite_weights

        if not isinstance(self.model, HubFolders):  # ours refused NaN/inf weights in from_pretrained; others did not
            check_finite_weights(self.model, str(folder))
        self.tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
        generation = self.model.generation_config
        super().__init__(folder, source_lang, target_lang, max_beams,
                         {"num_beams": generation.num_beams, "length_penalty": generation.length_penalty,
                          "max_new_tokens": generation.max_new_tokens, "max_length": generation.max_length},
                         int(self.model.config.max_position_embeddings))

    def _token_ids(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts)["input_ids"]

    def run(self, options: GenerationOptions, sources: list[list[int]]) -> list[str]:
        batch = self.tokenizer.pad({"input_ids": sources}, return_tensors="pt").to(self.model.device)
        with self.torch.inference_mode():
            output = self.model.generate(**batch, num_beams=options.num_beams, length_penalty=options.length_penalty,
                                         max_new_tokens=options.max_new_tokens, max_length=None)
        return self.tokenizer.batch_decode(output, skip_special_tokens=True)


class CTranslate2Translation(Translation):
    engine = "ctranslate2"

    def __init__(self, folder: Path, *, source_lang=None, target_lang=None, max_beams: int = 8,
                 device: str = "cpu", compute_type: str = "default", threads: int = 0):
        from tokenizers import Tokenizer

        from vanilla_transformer.scripts.serving.ctranslate2_translator import CTranslate2Translator

        positions = _read_small_json(folder / "config.json").get("max_position_embeddings")
        if not isinstance(positions, int) or isinstance(positions, bool) or not 1 <= positions <= 1 << 20:
            raise FolderError(f"{folder}/config.json has no usable max_position_embeddings ({positions!r}): export "
                              "the model again with vanilla-transformer export-ctranslate2")
        try:
            self.translator = CTranslate2Translator(folder, device=device, compute_type=compute_type,
                                                    intra_threads=threads)
            self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))  # without the translator's truncation
        except Exception as error:  # noqa: BLE001: ctranslate2 and tokenizers raise their own kinds
            raise FolderError(f"{folder} is not a usable CTranslate2 export ({type(error).__name__}: {error}): export "
                              "the model again with vanilla-transformer export-ctranslate2") from None
        t = self.translator
        super().__init__(folder, source_lang, target_lang, max_beams,
                         {"num_beams": t.num_beams, "length_penalty": t.length_penalty,
                          "max_new_tokens": t.max_new_tokens}, positions)

    def _token_ids(self, texts: list[str]) -> list[list[int]]:
        return [encoding.ids for encoding in self.tokenizer.encode_batch(texts)]

    def run(self, options: GenerationOptions, sources: list[list[int]]) -> list[str]:
        ids = self.translator.generate_ids(sources, options.num_beams, options.length_penalty,
                                           options.max_new_tokens, batch_size=len(sources))
        return self.tokenizer.decode_batch(ids, skip_special_tokens=True)


# the head a folder's `architectures` names -> the pipeline task it serves and the endpoint that serves it
HEADS = {"ForMaskedLM": ("fill-mask", "/fill-mask"),
         "ForSequenceClassification": ("text-classification", "/classify"),
         "ForTokenClassification": ("token-classification", "/tag")}


class BertTasks:
    """A BERT-style folder's pipelines, one per head its config names."""

    task = "bert"
    engine = "pytorch"

    def __init__(self, folder: Path, config, *, trust_remote_code: bool, device: str = "cpu", max_top_k: int = 50):
        from transformers import AutoTokenizer, pipeline

        architectures = config.architectures or []
        self.tasks = {HEADS[suffix][0]: HEADS[suffix][1] for name in architectures for suffix in HEADS
                      if name.endswith(suffix)}
        if not self.tasks:
            raise FolderError(f"{folder} holds {', '.join(architectures) or 'a model without a head'}: serve takes a "
                              "masked-LM, text-classification or token-classification folder (a pretrain-mlm or "
                              "fine-tuning run's final/)")
        self.folder = folder
        self.tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
        extra = {"text-classification": {"top_k": None}, "token-classification": {"aggregation_strategy": "simple"}}
        self.pipelines = {task: pipeline(task, model=str(folder), tokenizer=self.tokenizer, device=device,
                                         trust_remote_code=trust_remote_code, **extra.get(task, {}))
                          for task in self.tasks}
        self.max_positions = int(config.max_position_embeddings)
        self.max_top_k = min(max_top_k, len(self.tokenizer))

    def encode(self, task: str, texts: list[str]) -> list[str]:
        """The texts themselves (the pipeline tokenizes them again on the batcher's thread), once checked."""
        check_texts(texts, "text")
        ids = self.tokenizer(texts)["input_ids"]
        check_length([len(x) for x in ids], self.max_positions, "text")
        if task == "fill-mask":
            mask = self.tokenizer.mask_token
            for index, row in enumerate(ids):
                if row.count(self.tokenizer.mask_token_id) != 1:
                    where = f"text[{index}]" if len(texts) > 1 else "text"
                    raise BadRequest(f"{where} has {row.count(self.tokenizer.mask_token_id)} {mask} tokens: put "
                                     f"exactly one {mask} where the word to guess goes")
        return texts

    def check_top_k(self, top_k: int) -> int:
        if not 1 <= top_k <= self.max_top_k:
            raise BadRequest(f"top_k {top_k}: this server gives 1 to {self.max_top_k} answers")
        return top_k

    def run(self, key: tuple, texts: list[str]) -> list:
        task, top_k = key
        options = {"top_k": top_k} if task == "fill-mask" else {}
        outputs = self.pipelines[task](texts, batch_size=len(texts), **options)
        if task == "fill-mask" and len(texts) == 1 and outputs and isinstance(outputs[0], dict):
            outputs = [outputs]  # the fill-mask pipeline unwraps a list of one text: its answers come flat
        if task == "fill-mask":
            return [[{"token": a["token_str"], "score": float(a["score"]), "sequence": a["sequence"]} for a in answers]
                    for answers in outputs]
        if task == "text-classification":
            return [[{"label": a["label"], "score": float(a["score"])} for a in labels] for labels in outputs]
        return [[{"entity": e["entity_group"], "word": e["word"], "start": int(e["start"]), "end": int(e["end"]),
                  "score": float(e["score"])} for e in entities] for entities in outputs]

    def describe(self) -> dict:
        return {"task": "bert", "engine": self.engine, "tasks": sorted(self.tasks),
                "max_positions": self.max_positions}


def load_backend(model_dir: str, *, trust_remote_code: bool = False, source_lang: str | None = None,
                 target_lang: str | None = None, max_beams: int = 8, device: str = "cpu",
                 compute_type: str = "default", threads: int = 0):
    """The back end for `model_dir`: its CTranslate2 export, a translation folder or a BERT-style folder."""
    folder = Path(model_dir).expanduser()
    if folder.is_dir() and is_ctranslate2_export(folder):
        return CTranslate2Translation(folder, source_lang=source_lang, target_lang=target_lang, max_beams=max_beams,
                                      device=device, compute_type=compute_type, threads=threads)
    from transformers import AutoConfig

    from vanilla_transformer.scripts.training.model_folders import check_model_folder

    checked = check_model_folder(model_dir, "--model_dir", trust_remote_code=trust_remote_code,
                                 wanted="a translation or BERT-style model folder with its tokenizer, or a CTranslate2 "
                                        "export of one")
    if checked.path is None:
        raise FolderError(f"--model_dir {model_dir} is not a local folder: download it first (hf download "
                          f"{model_dir} --local-dir <folder>), so that serving never waits on the network")
    config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    if config.is_encoder_decoder:
        return PyTorchTranslation(folder, trust_remote_code=trust_remote_code, source_lang=source_lang,
                                  target_lang=target_lang, max_beams=max_beams, device=device)
    return BertTasks(folder, config, trust_remote_code=trust_remote_code, device=device)


__all__ = ["BadRequest", "BertTasks", "CTranslate2Translation", "FolderError", "GenerationOptions",
           "PyTorchTranslation", "load_backend"]
