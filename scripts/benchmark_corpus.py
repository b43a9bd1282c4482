"""Benchmark of the data path on corpora of paper size: millions of translation pairs (WMT 2014 en-de, the paper's
corpus, has 4.5 million) and a gigabyte of text for masked-LM pretraining, on the machine at hand.

The corpora are made here, in --work_dir, from the reference corpora (nothing is downloaded or committed):

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
every size (an interrupted run keeps what it measured); each run's output is in --work_dir/logs.
"""

import argparse
import contextlib
import importlib
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import psutil
from transformers import HfArgumentParser

from vanilla_transformer.training.errors import ArgumentError, errors_without_traceback
from vanilla_transformer.training.translation_data import text_lines

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FAMILIES = ("translation", "mlm")
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
    data_dir: str = field(default=str(SHARED), metadata={"help": "the reference corpora (multi30k/, wikitext2/)"})
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


# ------------------------------------------------------------------------------------------------------ corpora


def make_pairs(multi30k: Path, count: int, folder: Path, seed: int = 0) -> list[Path]:
    """`count` distinct pairs into folder/train.de and folder/train.en: pair k is Multi30k training pairs i and j
    joined, (de_i + " " + de_j, en_i + " " + en_j), with i != j and every (i, j) drawn once."""
    german, english = list(text_lines(multi30k / "train.de.gz")), list(text_lines(multi30k / "train.en.gz"))
    n = len(german)
    if count > n * (n - 1):
        raise ArgumentError(f"--pairs {count}: at most {n * (n - 1):,} distinct pairs from {n:,} Multi30k pairs")
    rng = np.random.default_rng(seed)
    codes = np.empty(0, dtype=np.int64)  # i * n + j
    while len(codes) < count:
        drawn = rng.integers(0, n * n, 2 * (count - len(codes)) + 16)
        codes = np.unique(np.concatenate([codes, drawn[drawn // n != drawn % n]]))
    codes = rng.permutation(codes)[:count]
    folder.mkdir(parents=True, exist_ok=True)
    files = [folder / "train.de", folder / "train.en"]
    with open(files[0], "w", encoding="utf-8") as de, open(files[1], "w", encoding="utf-8") as en:
        for i, j in zip(*(part.tolist() for part in np.divmod(codes, n))):
            de.write(f"{german[i]} {german[j]}\n")
            en.write(f"{english[i]} {english[j]}\n")
    return files


def make_text(wikitext: Path, megabytes: float, path: Path, seed: int = 0) -> int:
    """A text file of `megabytes` MB (10^6 bytes, or one document more), one document per line: each a string of
    WikiText-2 sentences drawn at random, as many as a paragraph of WikiText-2 has (at least 2), every document
    distinct. Returns the number of documents."""
    sentences, per_paragraph = [], []
    for name in ("valid.txt", "test.txt"):
        for line in text_lines(wikitext / name):
            if not line.strip() or line.strip().startswith("="):  # blank lines and section titles
                continue
            pieces = re.split(r"(?<= \.) ", line.strip())  # after " . ": WikiText's tokenized full stop
            sentences += pieces
            per_paragraph.append(max(2, len(pieces)))
    rng = np.random.default_rng(seed)
    target, written, seen = megabytes * 1e6, 0, set()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as out:
        while written < target:
            for size in rng.choice(per_paragraph, 1024).tolist():
                document = " ".join(sentences[i] for i in rng.integers(0, len(sentences), size).tolist())
                if document in seen:
                    continue
                seen.add(document)
                out.write(document + "\n")
                written += len(document.encode()) + 1
                if written >= target:
                    break
    return len(seen)


# ------------------------------------------------------------------------------------------------- measurement


@contextlib.contextmanager
def noting_the_first_batch(noted: dict):
    """Within: the wall-clock time at which the first batch comes out of a DataLoader goes to
    noted["first_batch_time"] (the training loop's loader: the scripts use no other before it)."""
    from torch.utils.data import DataLoader

    iterate = DataLoader.__iter__

    def noting(loader):
        for batch in iterate(loader):
            noted.setdefault("first_batch_time", time.time())
            yield batch

    DataLoader.__iter__ = noting
    try:
        yield noted
    finally:
        DataLoader.__iter__ = iterate


def measured_run(command: str, argv: list[str], result_file: str) -> None:
    """What a measured process runs: `command`'s main(argv) (a script of vanilla_transformer.scripts), noting the
    time of the first batch, then the resident high-water marks; all written to `result_file` as JSON."""
    with noting_the_first_batch({}) as noted:
        status = importlib.import_module(f"vanilla_transformer.scripts.{command}").main(argv)
    # the kernel's high-water mark of this process, and of the largest of its finished children (map workers)
    noted["max_rss_mb"] = max(resource.getrusage(who).ru_maxrss
                              for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)) / 1024
    Path(result_file).write_text(json.dumps(noted))
    sys.exit(status)


def _memory_mb(process: psutil.Process) -> tuple[float, float]:
    """(proportional set size, its anonymous part) of `process` and its children, in MB."""
    pss = anonymous = 0
    for member in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.Error, OSError):
            rollup = Path(f"/proc/{member.pid}/smaps_rollup").read_text()
            values = dict(re.findall(r"^(\w+):\s+(\d+) kB", rollup, re.MULTILINE))
            pss += int(values["Pss"])
            anonymous += int(values.get("Pss_Anon", values["Pss"]))
    return pss / 1024, anonymous / 1024


def measure(name: str, command: str, argv: list[str], cache: Path, logs: Path) -> dict:
    """Run `command` with `argv` in a fresh process (datasets cache: `cache`), sampling its memory; its output goes
    to logs/name.log. Returns seconds (the whole run), first_batch_seconds (from the process start; None for the
    tokenizer), peak_mb and peak_anonymous_mb (sampled), max_rss_mb (the largest process's high-water mark) and
    cache_files (Arrow files it wrote)."""
    logs.mkdir(parents=True, exist_ok=True)
    result_file = logs / f"{name}.json"
    code = (f"from vanilla_transformer.scripts.benchmark_corpus import measured_run; "
            f"measured_run({command!r}, {[str(a) for a in argv]!r}, {str(result_file)!r})")
    env = {**os.environ, "HF_DATASETS_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    before = set(cache.rglob("*.arrow")) if cache.is_dir() else set()
    peak, peak_anonymous = 0.0, 0.0
    with open(logs / f"{name}.log", "w") as log:
        started = time.time()
        child = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=log, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL)
        watched = psutil.Process(child.pid)
        while child.poll() is None:
            with contextlib.suppress(psutil.Error):
                pss, anonymous = _memory_mb(watched)
                peak, peak_anonymous = max(peak, pss), max(peak_anonymous, anonymous)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=0.5)  # reading smaps_rollup costs CPU: not more often
        seconds = time.time() - started
    if child.returncode != 0:
        tail = (logs / f"{name}.log").read_text()[-3000:]
        raise RuntimeError(f"{name}: {command} {' '.join(map(str, argv))} failed (exit {child.returncode}):\n{tail}")
    noted = json.loads(result_file.read_text())
    first_batch = noted.get("first_batch_time")
    after = set(cache.rglob("*.arrow")) if cache.is_dir() else set()
    return {"seconds": round(seconds, 2),
            "first_batch_seconds": round(first_batch - started, 2) if first_batch else None,
            "peak_mb": round(peak), "peak_anonymous_mb": round(peak_anonymous),
            "max_rss_mb": round(noted["max_rss_mb"]), "cache_files": len(after - before)}


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


# ------------------------------------------------------------------------------------------------------ report


def machine() -> str:
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
            f"{psutil.virtual_memory().total / 2**30:.0f} GB memory, Python {platform.python_version()}")


def write_table(results: dict, out: Path) -> str:
    lines = [f"Machine: {results['machine']}; load average at the start {results['load_before']}, at the end "
             f"{results['load_after']}; {results['wall_minutes']} minutes in all. Command: `python "
             f"scripts/benchmark_corpus.py {' '.join(sys.argv[1:])}`", ""]
    for family, size, unit in (("translation", "pairs", "pairs/s"), ("mlm", "documents", "documents/s")):
        if not results.get(family):
            continue
        lines += [f"{family}:", "",
                  f"| {size} | text MB | tokenizer training s (peak MB) | tokenization {unit}, MB/s | cold run: "
                  "first batch s (peak MB) | warm run: first batch s (peak MB) | resume: first batch s (peak MB) | "
                  "cache files written cold / warm / resume |",
                  "|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in results[family]:
            lines.append(
                f"| {r[size]:,} | {r['text_mb']:,} | {r['tokenizer']['seconds']:,} ({r['tokenizer']['peak_mb']:,}) | "
                f"{r['tokenized_per_second']:,}, {r['tokenized_mb_per_second']} | "
                + " | ".join(f"{r[run]['first_batch_seconds']} ({r[run]['peak_mb']:,})"
                             for run in ("cold", "warm", "resume"))
                + f" | {r['cold']['cache_files']} / {r['warm']['cache_files']} / {r['resume']['cache_files']} |")
        lines.append("")
    table = "\n".join(lines)
    (out / "corpus_results.md").write_text(table)
    return table


def plot(results: dict, out: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot")
        return None
    families = [family for family in FAMILIES if results.get(family)]
    figure, axes = plt.subplots(len(families), 4, figsize=(17, 3.8 * len(families)), squeeze=False)
    for row, family in zip(axes, families):
        rows = results[family]
        if family == "translation":
            x, label, speed = [r["pairs"] / 1e6 for r in rows], "million pairs", "pairs/s"
        else:
            x, label, speed = [r["text_mb"] / 1e3 for r in rows], "GB of text", "MB/s"
        row[0].plot(x, [r["tokenizer"]["seconds"] for r in rows], "o-")
        row[0].set_title(f"{family}: tokenizer training (s)")
        row[0].set_ylim(bottom=0)
        key = "tokenized_per_second" if family == "translation" else "tokenized_mb_per_second"
        row[1].plot(x, [r[key] for r in rows], "o-")
        row[1].set_title(f"{family}: tokenization ({speed}, cold cache)")
        row[1].set_ylim(bottom=0)
        for run, name in (("tokenizer", "tokenizer training"), ("cold", "cold run"), ("warm", "warm run")):
            row[2].plot(x, [r[run]["peak_mb"] / 1024 for r in rows], "o-", label=name)
        row[2].axhline(4, color="gray", linestyle="--", label="goal: 4 GB")
        row[2].set_title(f"{family}: peak resident memory (GB)")
        row[2].set_ylim(bottom=0)
        for run, name in (("warm", "warm run"), ("resume", "resumed run")):
            row[3].plot(x, [r[run]["first_batch_seconds"] for r in rows], "o-", label=name)
        row[3].axhline(30, color="gray", linestyle="--", label="goal: 30 s")
        row[3].set_title(f"{family}: time to the first batch (s)")
        row[3].set_ylim(bottom=0)
        for ax in row:
            ax.set_xlabel(label)
            ax.set_xlim(left=0)
            ax.grid(alpha=0.3)
        row[2].legend(fontsize=8)
        row[3].legend(fontsize=8)
    figure.tight_layout()
    path = out / "corpus_scaling.png"
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path


def run(args: CorpusBenchmarkArguments) -> dict:
    needed = {"translation": Path(args.data_dir) / "multi30k" / "train.de.gz",
              "mlm": Path(args.data_dir) / "wikitext2" / "valid.txt"}
    for family in args.families:
        if not needed[family].is_file():
            raise ArgumentError(f"--data_dir {args.data_dir}: no {needed[family]} (the reference corpora)")
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
        (arguments,) = parser.parse_args_into_dataclasses(args=argv)
        run(arguments)
    return 0


if __name__ == "__main__":
    sys.exit(main())
