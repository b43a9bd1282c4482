"""Benchmarks: our models against Hugging Face's own at identical shapes and identical weights, in one process.

Each case builds our model and the Hugging Face peer (weights copied through our converters), checks that their
outputs agree, warms both up, then times them interleaved (ours, peer, ours, peer, ...) and reports the
throughput ratio ours / peer (> 1: we are faster) as the median over repeats with its min-max spread, and the
peak memory of one step of each (CPU: peak of the C heap's live bytes in a forked child, `_GlibcHeap`;
CUDA: max_memory_allocated). The cases and the instruments are in `vanilla_transformer.scripts.benchmarking`.

    python scripts/benchmark.py                      # all cases, CPU shapes; results in benchmarks/
    python scripts/benchmark.py --cases 3 4 --repeats 3
    python scripts/benchmark.py --device cuda        # the same cases at BERT-base / paper-base shapes, and
                                                     # 6: bf16 MLM training FLOPs utilisation of the card
    python scripts/benchmark.py --data_dir /data/reference   # the folder of multi30k/ and sst2/ (or VT_DATA_DIR)
"""

import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import HfArgumentParser

from vanilla_transformer.scripts.benchmarking.cases import CASES, check_data
from vanilla_transformer.scripts.benchmarking.common import DATA_DIR_HELP, default_data_dir
from vanilla_transformer.scripts.benchmarking.report import machine, scaling_plot, write_report
from vanilla_transformer.scripts.training.errors import run_command


@dataclass
class BenchmarkArguments:
    cases: list[int] | None = field(default=None, metadata={
        "help": "which cases to run; default 1-5, and 6 (bf16 FLOPs utilisation) on a GPU"})
    device: str = field(default="cpu", metadata={"help": "cpu or cuda"})
    repeats: int = field(default=5, metadata={"help": "timed repeats of each model (interleaved)"})
    warmup: int = field(default=2, metadata={"help": "untimed runs of each model first"})
    output_dir: str = field(default="benchmarks", metadata={"help": "where results.md / results.json / PNGs go"})
    data_dir: str = field(default_factory=default_data_dir, metadata={"help": DATA_DIR_HELP})
    scaling_plot: bool = field(default=True, metadata={"help": "also time the encoder over lengths and batch sizes"})
    peak_tflops: float | None = field(default=None, metadata={
        "help": "the card's dense bf16 peak for case 6's FLOPs utilisation; default: looked up by the GPU's name"})
    seed: int = 0


def run(args: BenchmarkArguments) -> None:
    torch.manual_seed(args.seed)
    print(f"machine: {machine()}")
    results = []
    if args.cases is None:
        args.cases = [1, 2, 3, 4, 5] + ([6] if args.device == "cuda" else [])
    check_data(args.cases, args.data_dir)  # a missing corpus fails now, not after minutes of the cases before it
    for case in args.cases:
        print(f"case {case}: {CASES[case].__doc__.splitlines()[0]}", flush=True)
        results += CASES[case](args)
    write_report(results, args, Path(args.output_dir))
    if args.scaling_plot:
        scaling_plot(args, Path(args.output_dir))


def main(argv: list[str] | None = None) -> int:
    return run_command(run, HfArgumentParser(BenchmarkArguments).parse_args_into_dataclasses, argv,
                       kept=lambda args: f"no results were written ({args.output_dir} gets them at the end): run it "
                                         "again, with fewer --cases or --repeats to be done sooner")


if __name__ == "__main__":
    sys.exit(main())
