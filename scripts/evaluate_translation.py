"""Translate a test set with a trained model (batched beam search) and score it with sacreBLEU and chrF through
`evaluate`, using the offline metric modules installed with the package (`vanilla_transformer.scripts.training.metrics`).
Writes the scores and every translation to JSON (and the hypotheses, one per line, beside it), e.g. Multi30k de->en:

    python scripts/evaluate_translation.py --model_dir outputs/multi30k/final \\
        --split ../shared/data/multi30k/test_2016_flickr --output_file outputs/multi30k/test_scores.json

Scores are corpus-level, on detokenized cased output against the raw references (sacreBLEU's default 13a
tokenization): the numbers that compare across papers. Beam size and length penalty default to the model's
generation config (chosen on the validation set by train_translation.py).

The model folder, the options and the output paths are checked before the test set is read and translated: a wrong
--model_dir, a model with NaN weights, or an --output_file that cannot be written fails at once, not after the work.
"""

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, HfArgumentParser

import vanilla_transformer.modeling  # noqa: F401  (registers our models with the Auto classes)
from vanilla_transformer.modeling.hub import HubFolders
from vanilla_transformer.scripts.training.errors import ArgumentError, DataError, parse_arguments, run_command
from vanilla_transformer.scripts.training.model_folders import (
    check_finite_weights,
    check_model_folder,
    check_not_a_model_file,
    check_tokenizer_fits,
    check_writable_file,
)
from vanilla_transformer.scripts.training.translation_data import CorpusArguments, load_parallel
from vanilla_transformer.scripts.training.translation_eval import load_metrics, score, translate


@dataclass
class EvaluationArguments:
    model_dir: str = field(metadata={"help": "a saved model folder with its tokenizer (train_translation's final/)"})
    split: str = field(metadata={"help": "the test pairs: a prefix of {split}.{lang}[.gz] files, a .tsv/.jsonl "
                                         "file, or a split name with --dataset_name"})
    output_file: str = field(metadata={"help": "JSON with the scores and the translations"})
    num_beams: int | None = field(default=None, metadata={"help": "beam size (default: the model's generation config)"})
    length_penalty: float | None = field(
        default=None, metadata={"help": "beam score = log-probability / length**length_penalty (default: the model's)"}
    )
    batch_size: int = field(default=64, metadata={"help": "sentences translated together"})

    def __post_init__(self):
        if self.num_beams is not None and self.num_beams < 1:
            raise ArgumentError(f"--num_beams must be at least 1, got {self.num_beams}")
        if self.batch_size < 1:
            raise ArgumentError(f"--batch_size must be at least 1, got {self.batch_size}")
        if self.length_penalty is not None and not math.isfinite(self.length_penalty):
            raise ArgumentError(f"--length_penalty must be a finite number, got {self.length_penalty}")


def run(args: EvaluationArguments, corpus: CorpusArguments) -> dict:
    # Checked before the test set is read and translated; our package is imported, so our folders load with the
    # local classes: the folder's own .py files never run.
    folder = check_model_folder(args.model_dir, "--model_dir", encoder_decoder=True,
                                wanted="a translation model folder (train_translation.py's final/)")
    output = check_writable_file(args.output_file, "--output_file")
    hypotheses_file = check_writable_file(output.with_suffix(".hyp.txt"), "--output_file")
    languages = (corpus.source_lang, corpus.target_lang)
    test_set = [Path(args.split)] + [Path(f"{args.split}.{lang}{gz}") for lang in languages for gz in ("", ".gz")]
    for path in (output, hypotheses_file):
        check_not_a_model_file(path, folder, "--output_file")
        if any(path.resolve() == data.resolve() for data in test_set if data.is_file()):
            raise ArgumentError(f"--output_file {args.output_file}: {path} is a file of the test set --split "
                                f"{args.split}; name a new file")
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir, trust_remote_code=False)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForSeq2SeqLM.from_pretrained(args.model_dir, trust_remote_code=False).to(device).eval()
    if not isinstance(model, HubFolders):  # ours refused NaN/inf weights in from_pretrained; others (Marian) did not
        check_finite_weights(model, args.model_dir)
    check_tokenizer_fits(tokenizer, model.config, args.model_dir)
    pairs = load_parallel(args.split, corpus)
    if len(pairs) == 0:
        raise DataError(f"{args.split}: no pairs to translate")
    sources = [text or "" for text in pairs["source"]]  # None: a missing value
    references = [text or "" for text in pairs["target"]]
    empty = sum(1 for s in sources if not s.strip())
    if empty:
        print(f"warning: {empty} of {len(sources)} sources are empty; they are scored as empty translations")
    empty = sum(1 for r in references if not r.strip())
    if empty:
        print(f"warning: {empty} of {len(references)} references are empty; they are scored as they are")
    generation = {"num_beams": args.num_beams or model.generation_config.num_beams or 1,  # None: not saved
                  "length_penalty": args.length_penalty if args.length_penalty is not None
                  else model.generation_config.length_penalty}
    start = time.monotonic()
    hypotheses = translate(model, tokenizer, sources, batch_size=args.batch_size, show_progress=True, **generation)
    seconds = time.monotonic() - start
    # The numbers at the top level are the scores (scripts/publish.py puts them in the model card); the rest nests.
    result = {
        **score(hypotheses, references, load_metrics()),
        "settings": {**generation, "model_dir": args.model_dir, "split": args.split, "num_segments": len(sources),
                     "seconds": round(seconds, 1)},
        "translations": [{"source": s, "reference": r, "hypothesis": h}
                         for s, r, h in zip(sources, references, hypotheses)],
    }
    output.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    hypotheses_file.write_text("".join(h + "\n" for h in hypotheses))
    print(f"{args.split}: sacreBLEU {result['sacrebleu']} ({result['sacrebleu_signature']}), chrF {result['chrf']}; "
          f"{len(sources)} segments in {seconds:.0f} s, beam {generation['num_beams']}, "
          f"length penalty {generation['length_penalty']} -> {output}")
    return result


def parse_args(argv: list[str] | None = None) -> tuple[EvaluationArguments, CorpusArguments]:
    return parse_arguments(HfArgumentParser((EvaluationArguments, CorpusArguments)), argv)


def main(argv: list[str] | None = None) -> int:
    return run_command(run, parse_args, argv, kept=lambda args, corpus: (
        f"nothing was written (--output_file {args.output_file} is written at the end): run the same command again"))


if __name__ == "__main__":
    sys.exit(main())
