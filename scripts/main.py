"""The main job, both model families, offline, under 10 minutes on 2 CPU cores. It runs the project's own commands
on the embedded corpora (`embedded:...` data sources, see `training.embedded_corpora`), as a user would run them on
theirs, then uses their folders as anyone would:

1. translation: `train-translation` on German -> English CLDR display names that ship with Babel (a joint BPE, a
   small encoder-decoder, validation BLEU), then the folder reloaded with AutoModelForSeq2SeqLM and
   trust_remote_code=True, and held-out pairs run through pipeline("translation");
2. BERT: `pretrain-mlm --preset budget` on the docstrings of Python's standard library (a WordPiece, a small BERT,
   one learning-rate cycle that ends with --bert_minutes; held-out masked-token accuracy beside always guessing the
   most frequent token, and perplexity), then the folder reloaded with AutoModelForMaskedLM and run in
   pipeline("fill-mask").

The job ends with the commands for the next steps: your own text and parallel corpus, fine-tuning, publishing.

    python scripts/main.py                                   # both, on the embedded default corpora
    python scripts/main.py --families bert                   # one of them
    python scripts/main.py --source_file train.de --target_file train.en --text_file my_text.txt   # your own data
"""

import math
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from transformers import AutoModelForMaskedLM, AutoModelForSeq2SeqLM, AutoTokenizer, HfArgumentParser, pipeline

from vanilla_transformer.scripts import pretrain_mlm, train_translation
from vanilla_transformer.scripts.training.embedded_corpora import embedded_split
from vanilla_transformer.scripts.training.errors import ArgumentError, run_command
from vanilla_transformer.scripts.training.translation_data import file_pairs, read_lines

FAMILIES = ("translation", "bert")
# train-translation's options for the embedded corpus: about 1,400 pairs of one to four words, so a small model, short
# sequences and batches of about 64 pairs, for 60 epochs. Options given to `run` as overrides win.
TRANSLATION_PRESET = {
    "vocab_size": 2000, "d_model": 128, "encoder_layers": 2, "decoder_layers": 2, "attention_heads": 4,
    "ffn_dim": 512, "max_length": 32, "max_tokens": 640, "learning_rate": 1e-3, "warmup_steps": 200,
    "num_epochs": 60, "num_beams": 4, "logging_steps": 50, "save_steps": 10**9, "keep_checkpoints": 1,
}
# The BERT recipe's steps to leave the masked-LM plateau (always ".", "the"), measured: a third of a quiet run's
# steps (2,376) gave 25.6%, 31.2% and 29.7% held-out top-1 (seeds 0-2) against 4.3-4.6% for the baseline
# (docs/main-job.md). A machine that makes
# fewer steps in --bert_minutes is told how many minutes it needs.
BERT_STEPS_NEEDED = 2400
# Fill-mask probes in the style of the default text (docstrings); the answers are whatever the model learned.
FILL_MASK_PROBES = [
    "Return the [MASK] of the list.",
    "Raise ValueError if the [MASK] is negative.",
    "If the file does not exist, an [MASK] is raised.",
    "Return True if the string is [MASK] and False otherwise.",
]


@dataclass
class MainArguments:
    output_dir: str = field(default="outputs/main", metadata={"help": "each part's run folder goes here "
                                                                      "(translation/, bert/, their final/ Hub-ready)"})
    families: list[str] = field(default_factory=lambda: list(FAMILIES),
                                metadata={"help": "which model families to train: translation, bert or both"})
    seed: int = 0
    source_file: str | None = field(default=None, metadata={"help": "source sentences, one per line (.gz ok)"})
    target_file: str | None = field(default=None, metadata={"help": "their translations, line by line"})
    text_file: str | None = field(default=None, metadata={"help": "MLM text, one document per line (.gz ok); "
                                                                  "default: the standard library's docstrings"})
    held_out: int = field(default=100, metadata={"help": "pairs or documents of your files kept for validation"})
    bert_minutes: float = field(default=pretrain_mlm.PRESETS["budget"]["max_train_minutes"],
                                metadata={"help": "MLM training time; the learning rate's one cycle ends with it"})
    bert_max_steps: int | None = field(default=None, metadata={"help": "stop MLM training earlier, at this step"})

    def __post_init__(self):
        unknown = set(self.families) - set(FAMILIES)
        if unknown or not self.families:
            raise ArgumentError(f"--families {' '.join(self.families)}: choose from {', '.join(FAMILIES)}")
        if bool(self.source_file) != bool(self.target_file):
            raise ArgumentError("pass both --source_file and --target_file (one sentence per line, aligned)")


def options(values: dict) -> list[str]:
    """{option: value} as command-line arguments; a list value gives several, None none."""
    argv = []
    for name, value in values.items():
        if value is not None:
            argv += [f"--{name}", *map(str, value if isinstance(value, list) else [value])]
    return argv


def fresh_run_folder(folder: Path) -> Path:
    """The main job starts over each time: its run folders are its own (a folder of anything else is refused)."""
    if folder.exists() and not (folder / "training_args.json").is_file() and any(folder.iterdir()):
        raise ArgumentError(f"{folder} exists and is not a run folder of the main job: choose another --output_dir")
    shutil.rmtree(folder, ignore_errors=True)
    return folder


def held_out_split(items: list, count: int, folder: Path, write) -> tuple[str, str]:
    """Your data, shuffled, `count` items kept for validation: written to `folder` with `write(items, name)`, which
    returns the data source to pass to the command."""
    items = list(items)
    random.Random(0).shuffle(items)
    if len(items) <= count:
        raise ArgumentError(f"{len(items)} pairs or documents: fewer than --held_out {count} plus some to train on")
    folder.mkdir(parents=True, exist_ok=True)
    return write(items[count:], "train"), write(items[:count], "validation")


# ------------------------------------------------------------------------------------------------ translation


def translation_job(args: MainArguments, overrides: dict | None = None) -> Path:
    run_dir = fresh_run_folder(Path(args.output_dir) / "translation")
    if args.source_file:
        def write(pairs, name):
            for side, suffix in ((0, "src"), (1, "tgt")):
                (run_dir.parent / "data" / f"{name}.{suffix}").write_text("".join(p[side] + "\n" for p in pairs))
            return str(run_dir.parent / "data" / name)

        pairs = [(s, t) for s, t in file_pairs(args.source_file, args.target_file) if s.strip() and t.strip()]
        splits = held_out_split(pairs, args.held_out, run_dir.parent / "data", write)
        corpus, languages = f"{args.source_file} -> {args.target_file}", ["src", "tgt"]
    else:
        splits = ("embedded:cldr-de-en:train", "embedded:cldr-de-en:validation")
        corpus, languages = "CLDR display names from Babel, German -> English", ["de", "en"]
    print(f"[translation] corpus: {corpus}; train-translation --train_split {splits[0]} --validation_split "
          f"{splits[1]} --output_dir {run_dir}")
    argv = options({**TRANSLATION_PRESET, "train_split": splits[0], "validation_split": splits[1],
                    "source_lang": languages[0], "target_lang": languages[1], "output_dir": str(run_dir),
                    "seed": args.seed, **(overrides or {})})
    outcome = train_translation.run(*train_translation.parse_args(argv))
    if not outcome.completed:  # Ctrl-C or SIGTERM: the run saved a checkpoint and stopped; so does the job
        raise KeyboardInterrupt(f"translation training interrupted at step {outcome.global_step}")
    folder = run_dir / "final"

    # Reload as a user would, through the Auto classes and the folder's own code.
    reloaded = AutoModelForSeq2SeqLM.from_pretrained(folder, trust_remote_code=True)
    AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    print(f"[translation] reloaded with AutoModelForSeq2SeqLM: {type(reloaded).__name__}")
    translator = pipeline("translation", model=str(folder), trust_remote_code=True)
    held_out, train = (list(pair_source(split, languages)) for split in (splits[1], splits[0]))
    shown = held_out[:10] + train[:5]
    outputs = translator([s for s, _ in shown], num_beams=4)
    print("\n[translation] pipeline('translation') on 10 held-out pairs, then 5 seen in training:")
    for (source, reference), output in zip(shown, outputs):
        print(f"  {source!r:40} -> {output['translation_text']!r:40} (reference {reference!r})")
    return folder


def pair_source(split: str, languages: list[str]):
    if split.startswith("embedded:"):
        return embedded_split(split)
    return zip(read_lines(f"{split}.{languages[0]}"), read_lines(f"{split}.{languages[1]}"))


# ------------------------------------------------------------------------------------------------------- BERT


def bert_job(args: MainArguments, overrides: dict | None = None) -> Path:
    run_dir = fresh_run_folder(Path(args.output_dir) / "bert")
    if args.text_file:
        def write(documents, name):
            path = run_dir.parent / "data" / f"text_{name}.txt"
            path.write_text("".join(document + "\n" for document in documents))
            return str(path)

        documents = [line for line in read_lines(args.text_file) if line.strip()]
        files, corpus = held_out_split(documents, args.held_out, run_dir.parent / "data", write), args.text_file
    else:
        files = ("embedded:stdlib-docstrings:train", "embedded:stdlib-docstrings:validation")
        corpus = "docstrings of Python's standard library"
    print(f"\n[bert] corpus: {corpus}; pretrain-mlm --preset budget --train_file {files[0]} --validation_file "
          f"{files[1]} --output_dir {run_dir}")
    argv = ["--preset", "budget", *options({"train_file": files[0], "validation_file": files[1],
                                            "output_dir": str(run_dir), "seed": args.seed,
                                            "max_train_minutes": args.bert_minutes, "max_steps": args.bert_max_steps,
                                            "logging_steps": 100, "save_steps": 10**9, "keep_checkpoints": 1,
                                            **(overrides or {})})]
    outcome = pretrain_mlm.run(*pretrain_mlm.parse_args(argv))
    if not outcome.completed:
        raise KeyboardInterrupt(f"BERT training interrupted at step {outcome.global_step}")
    scores = outcome.metrics
    print(f"[bert] {outcome.global_step} steps in {outcome.train_seconds:.0f} s; held-out masked tokens: top-1 "
          f"accuracy {scores['val_accuracy']:.1%}, against {scores['val_frequency_baseline']:.1%} for always guessing "
          f"the most frequent token; perplexity {scores['val_perplexity']:.1f}")
    print(budget_advice(outcome.global_step, outcome.train_seconds, scores, args))
    folder = run_dir / "final"

    reloaded = AutoModelForMaskedLM.from_pretrained(folder, trust_remote_code=True)
    print(f"[bert] reloaded with AutoModelForMaskedLM: {type(reloaded).__name__}")
    fill_mask = pipeline("fill-mask", model=str(folder), trust_remote_code=True, top_k=3)
    print("\n[bert] pipeline('fill-mask'), the top 3 with their probabilities:")
    for probe, answers in zip(FILL_MASK_PROBES, fill_mask(FILL_MASK_PROBES)):
        print(f"  {probe!r:58} -> " + ", ".join(f"{a['token_str']} ({a['score']:.2f})" for a in answers))
    return folder


def budget_advice(steps: int, seconds: float, scores: dict, args: MainArguments) -> str:
    """What this machine's speed means for the BERT recipe: enough steps, or the minutes it would need."""
    if args.bert_max_steps is not None:
        return f"[bert] {steps} steps, as --bert_max_steps asked (the recipe is measured with {BERT_STEPS_NEEDED:,} or more)"
    if steps >= BERT_STEPS_NEEDED:
        return f"[bert] {steps} steps: enough for this recipe (it leaves the plateau after about {BERT_STEPS_NEEDED:,})"
    minutes = BERT_STEPS_NEEDED / max(steps, 1) * seconds / 60
    plateau = ("still on the masked-LM plateau (not far above the baseline)"
               if scores["val_accuracy"] < 2 * scores["val_frequency_baseline"] else "short of its usual result")
    return (f"[bert] this machine made {steps} steps in {seconds / 60:.1f} minutes ({steps / max(seconds, 1):.1f} "
            f"steps/s, busy or slow): the model is likely {plateau}. The recipe needs about {BERT_STEPS_NEEDED:,} "
            f"steps: run the job again with --bert_minutes {math.ceil(minutes)} (or on a quieter machine)")


def run(args: MainArguments, translation_overrides: dict | None = None,
        bert_overrides: dict | None = None) -> dict[str, Path]:
    """Both parts; `*_overrides`: the commands' options to change (e.g. a smaller model in a test)."""
    start = time.time()
    folders = {}
    if "translation" in args.families:
        folders["translation"] = translation_job(args, translation_overrides)
    if "bert" in args.families:
        folders["bert"] = bert_job(args, bert_overrides)
    print(f"\nthe main job took {(time.time() - start) / 60:.1f} minutes; Hub-ready folders: "
          + ", ".join(str(folder) for folder in folders.values()))
    print(NEXT_STEPS.format(bert=folders.get("bert", Path(args.output_dir) / "bert" / "final")))
    return folders


NEXT_STEPS = """
What next (after `pip install .`; in a clone, `.venv/bin/vanilla-transformer`). Every command explains itself with
--help; docs/main-job.md has more.
  your own text, one document per line (the recipe above, for longer: the learning rate follows the budget)
    vanilla-transformer pretrain-mlm --preset budget --train_file my_text.txt --validation_file my_valid.txt \\
      --output_dir outputs/my-bert --max_train_minutes 30
  your own parallel corpus, {{split}}.{{lang}} files with one sentence per line
    vanilla-transformer train-translation --train_split data/train --validation_split data/val \\
      --source_lang de --target_lang en --output_dir outputs/my-model --max_train_minutes 45 --average_last 5
  fine-tuning this BERT (or yours) for classification, on TSV files (sentence, label), or to tag words (CoNLL files)
    vanilla-transformer finetune-classification --model_name_or_path {bert} \\
      --train_file train.tsv --validation_file dev.tsv --output_dir runs/my-classifier
    vanilla-transformer finetune-token-classification --model_name_or_path {bert} \\
      --train_file train.conll --validation_file dev.conll --output_dir runs/my-tagger
  publishing a model folder with a model card, to the Hugging Face Hub
    vanilla-transformer publish --model_dir outputs/my-bert/final --output_dir hub/my-bert --push_to_hub user/my-bert"""


def main(argv: list[str] | None = None) -> int:
    return run_command(run, HfArgumentParser(MainArguments).parse_args_into_dataclasses, argv)


if __name__ == "__main__":
    sys.exit(main())
