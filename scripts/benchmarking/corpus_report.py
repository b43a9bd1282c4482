"""What the corpus benchmark (scripts/benchmark_corpus.py) writes to --output_dir besides corpus_results.json: the
table (corpus_results.md) and the plot (corpus_scaling.png)."""

import platform
import sys
from pathlib import Path

import psutil

from vanilla_transformer.scripts.benchmarking import common


def machine() -> str:
    """The processor, its cores, the memory and Python's version."""
    return common.machine(f"{psutil.virtual_memory().total / 2**30:.0f} GB memory",
                          f"Python {platform.python_version()}")


def write_table(results: dict, out: Path) -> str:
    """corpus_results.md: the machine and the command, then a table for each family; returns it."""
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
    """corpus_scaling.png: a row of four panels for each family against corpus size (None without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot")
        return None
    families = [family for family in ("translation", "mlm") if results.get(family)]
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

