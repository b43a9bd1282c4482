"""Benchmark of the data path on corpora of paper size: millions of translation pairs (WMT 2014 en-de, the paper's
corpus, has 4.5 million) and a gigabyte of text for masked-LM pretraining, on the machine at hand.

The corpora are made here, in --work_dir, from the reference corpora in --data_dir (default: $VT_DATA_DIR, else
../shared/data from the current folder; nothing is downloaded or committed):

- translation: pair k joins two Multi30k training pairs i and j, (de_i + " " + de_j, en_i + " " + en_j), each (i, j)
  drawn once (29,000 pairs give 841 million): distinct, aligned pairs of ~23 words a side, like WMT's sentences;
- MLM: one document per line, each a string of WikiText-2 sentences drawn at random, as many as a WikiText-2
  paragraph has, every document distinct (valid and test: the reference data has no train split).

For each size, each measurement is a fresh process that runs the real command (so that its peak memory is its
own), the datasets cache starting empty:

1. tokenizer: vanilla-transformer-train-tokenizer on the training text (joint BPE, or WordPiece);
2. cold: train_translation.py / pretrain_mlm.py with that tokenizer, up to the first batch its training loop yields:
   the text is read into Arrow and tokenized. Tokenization speed = corpus size / (cold time - warm time);
3. warm: the same command again, in a new output folder: from the cache;
4. resume: a warm run stopped after 2 steps, then --resume: the time to the first batch of the resumed run.

Times are wall clock from the process start (imports included) to the first batch (to the end for the tokenizer);
the model is tiny: the data path is measured, not the model. Memory: the peak resident memory of the process and
its children (datasets' map workers), sampled every 0.5 s as the proportional set size (a page shared by n
processes counts 1/n), and its anonymous part (the heap; the rest is pages of memory-mapped files, which the kernel
can drop). "Cache files" counts the Arrow files a run wrote: none, when it starts from the cache. Goals: peak memory
under 4 GB, warm time to the first batch under 30 s.

    python scripts/benchmark_corpus.py        # 0.5M-4.5M pairs, 125 MB-1 GB of text: about an hour on 2 CPU cores
    python scripts/benchmark_corpus.py --pairs 500000 2000000 4500000 --text_mb 100 1000   # 34 minutes: the run of
                                                                                            # docs/large-corpora.md
    python scripts/benchmark_corpus.py --quick --output_dir /tmp/corpus-check   # tiny sizes: checks that it runs

Writes corpus_results.json, corpus_results.md and corpus_scaling.png (matplotlib) to --output_dir, the JSON after
every size (an interrupted run keeps what it measured); each run's output is in --work_dir/logs. The corpora, the
measuring and the report are in `vanilla_transformer.scripts.benchmarking`.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from vanilla_transformer.scripts.benchmarking.common import DATA_DIR_HELP, data_file, default_data_dir
from vanilla_transformer.scripts.benchmarking.corpora import make_pairs, make_text
from vanilla_transformer.scripts.benchmarking.corpus_report import machine, plot, write_table
from vanilla_transformer.scripts.benchmarking.processes import measure
from vanilla_transformer.scripts.training.errors import (
    ArgumentError,
    errors_without_traceback,
    parse_arguments,
    when_interrupted,
)

FAMILIES = ("translation", "mlm")
# The files of --data_dir each family reads.
DATA_FILES = {"translation": ("multi30k/train.de.gz", "multi30k/train.en.gz"),
              "mlm": ("wikitext2/valid.txt", "wikitext2/test.txt")}
# The models are tiny: what is measured is the data path up to the first batch, not a training step.
TINY_TRANSLATION = ["--d_model", "32", "--encoder_layers", "1", "--decoder_layers", "1", "--attention_heads", "2",
                    "--ffn_dim", "64"]
TINY_BERT = ["--hidden_size", "32", "--num_hidden_layers", "1", "--num_attention_heads", "2",
             "--intermediate_size", "64"]
QUICK = {"pairs": [2_000, 6_000], "text_mb": [0.5, 1.5]}


@dataclass
class CorpusBenchmarkArguments:
    work_dir: str = field(
        default=str(Path(tempfile.gettempdir()) / "vanilla-transformer-corpus-benchmark"),
        metadata={"help": "the corpora, their datasets cache and the runs (several GB at full size; each size's folder "
                          "is deleted after its measurements unless --keep_files)"})
    output_dir: str = field(default="benchmarks", metadata={"help": "where corpus_results.json/.md and the plot go"})
    families: list[str] = field(default_factory=lambda: list(FAMILIES), metadata={"help": "translation, mlm"})
    pairs: list[int] = field(default_factory=lambda: [500_000, 1_500_000, 3_000_000, 4_500_000],
                             metadata={"help": "translation corpus sizes, in pairs"})
    text_mb: list[float] = field(default_factory=lambda: [125.0, 250.0, 500.0, 1000.0],
                                 metadata={"help": "MLM text file sizes, in MB (10^6 bytes)"})
    vocab_size: int = field(default=8000, metadata={"help": "the tokenizers' vocabulary size"})
    quick: bool = field(default=False, metadata={"help": "tiny sizes (2,000 and 6,000 pairs, 0.5 and 1.5 MB of "
                                                         "text): a check that everything runs"})
    data_dir: str = field(default_factory=default_data_dir, metadata={"help": DATA_DIR_HELP})
    keep_files: bool = field(default=False, metadata={"help": "keep each size's corpus, cache and runs"})
    seed: int = 0

    def __post_init__(self):
        unknown = set(self.families) - set(FAMILIES)
        if unknown or not self.families:
            raise ArgumentError(f"--families {' '.join(self.families)}: choose from {', '.join(FAMILIES)}")
        if self.quick:
            self.pairs, self.text_mb = QUICK["pairs"], QUICK["text_mb"]
        if min(self.pairs, default=1) < 1 or min(self.text_mb, default=1) <= 0 or self.vocab_size < 10:
            raise ArgumentError("--pairs, --text_mb and --vocab_size must be positive (a vocabulary of 10 at least)")


def measure_translation(pairs: int, args: CorpusBenchmarkArguments) -> dict:
    folder = Path(args.work_dir) / f"translation-{pairs}"
    shutil.rmtree(folder, ignore_errors=True)
    multi30k = Path(args.data_dir) / "multi30k"
    started = time.time()
    files = make_pairs(multi30k, pairs, folder / "data", args.seed)
    result = {"pairs": pairs, "text_mb": round(sum(f.stat().st_size for f in files) / 1e6, 1),
              "making_seconds": round(time.time() - started, 1)}
    cache, logs = folder / "datasets-cache", Path(args.work_dir) / "logs"
    print(f"translation, {pairs:,} pairs ({result['text_mb']:,} MB) in {folder}", flush=True)
    result["tokenizer"] = measure(f"translation-{pairs}-tokenizer", "train_tokenizer", [
        "--kind", "bpe", "--vocab_size", str(args.vocab_size), "--output_dir", folder / "tokenizer",
        "--files", *files], cache, logs)
    common = ["--train_split", folder / "data" / "train", "--validation_split", multi30k / "val",
              "--tokenizer", folder / "tokenizer", *TINY_TRANSLATION, "--max_steps", "1000000", "--seed",
              str(args.seed)]
    _measure_runs(result, pairs, f"translation-{pairs}", "train_translation", common, folder, cache, logs)
    if not args.keep_files:
        shutil.rmtree(folder, ignore_errors=True)
    return result


def measure_mlm(megabytes: float, args: CorpusBenchmarkArguments) -> dict:
    folder = Path(args.work_dir) / f"mlm-{megabytes:g}mb"
    shutil.rmtree(folder, ignore_errors=True)
    wikitext = Path(args.data_dir) / "wikitext2"
    started = time.time()
    text = folder / "data" / "train.txt"
    documents = make_text(wikitext, megabytes, text, args.seed)
    result = {"text_mb": round(text.stat().st_size / 1e6, 1), "documents": documents,
              "making_seconds": round(time.time() - started, 1)}
    cache, logs = folder / "datasets-cache", Path(args.work_dir) / "logs"
    print(f"mlm, {result['text_mb']:,} MB ({documents:,} documents) in {folder}", flush=True)
    result["tokenizer"] = measure(f"mlm-{megabytes:g}mb-tokenizer", "train_tokenizer", [
        "--kind", "wordpiece", "--vocab_size", str(args.vocab_size), "--output_dir", folder / "tokenizer",
        "--files", text], cache, logs)
    common = ["--train_file", text, "--validation_file", wikitext / "test.txt", "--tokenizer_name",
              folder / "tokenizer", *TINY_BERT, "--max_steps", "1000000", "--seed", str(args.seed)]
    _measure_runs(result, documents, f"mlm-{megabytes:g}mb", "pretrain_mlm", common, folder, cache, logs)
    if not args.keep_files:
        shutil.rmtree(folder, ignore_errors=True)
    return result


def _measure_runs(result: dict, examples: int, name: str, command: str, common: list, folder: Path, cache: Path,
                  logs: Path) -> None:
    """The cold, warm and resumed runs of a training command on `examples` pairs or documents, into `result`."""
    result["cold"] = measure(f"{name}-cold", command, [*common, "--output_dir", folder / "cold",
                                                         "--max_steps_this_run", "1"], cache, logs)
    result["warm"] = measure(f"{name}-warm", command, [*common, "--output_dir", folder / "warm",
                                                         "--max_steps_this_run", "2"], cache, logs)
    result["resume"] = measure(f"{name}-resume", command, [*common, "--output_dir", folder / "warm",
                                                             "--max_steps_this_run", "1", "--resume"], cache, logs)
    # what the cache saves: reading the text into Arrow and tokenizing it (at tiny sizes, mostly noise)
    saved = result["cold"]["first_batch_seconds"] - result["warm"]["first_batch_seconds"]
    result["tokenizing_seconds"] = round(max(saved, 0.01), 2)
    result["tokenized_per_second"] = round(examples / result["tokenizing_seconds"])
    result["tokenized_mb_per_second"] = round(result["text_mb"] / result["tokenizing_seconds"], 2)


def run(args: CorpusBenchmarkArguments) -> dict:
    for family in args.families:
        for name in DATA_FILES[family]:
            data_file(args.data_dir, name, f"the {family} corpus is made from it")
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    results = {"machine": machine(), "load_before": [round(x, 2) for x in os.getloadavg()], "args": asdict(args)}
    measures = {"translation": (args.pairs, measure_translation), "mlm": (args.text_mb, measure_mlm)}
    for family in args.families:
        sizes, measure_size = measures[family]
        results[family] = []
        for size in sizes:
            results[family].append(measure_size(size, args))
            (out / "corpus_results.json").write_text(json.dumps(results, indent=1))
    results["load_after"] = [round(x, 2) for x in os.getloadavg()]
    results["wall_minutes"] = round((time.time() - started) / 60, 1)
    (out / "corpus_results.json").write_text(json.dumps(results, indent=1))
    print(write_table(results, out))
    figure = plot(results, out)
    print(f"results: {out / 'corpus_results.json'}, {out / 'corpus_results.md'}" + (f", {figure}" if figure else ""))
    return results


def main(argv: list[str] | None = None) -> int:
    with errors_without_traceback():
        parser = HfArgumentParser(CorpusBenchmarkArguments, description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        (arguments,) = parse_arguments(parser, argv)
        when_interrupted(lambda: f"the sizes measured to the end, if any, are in {arguments.output_dir}/"
                                 f"corpus_results.json, the size being measured left its files in {arguments.work_dir}"
                                 ": run it again (fewer --pairs or --text_mb sizes to be done sooner)")
        run(arguments)
    return 0


if __name__ == "__main__":
    sys.exit(main())
