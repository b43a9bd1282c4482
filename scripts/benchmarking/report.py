"""What the peer benchmark (scripts/benchmark.py) writes to --output_dir: results.md and results.json (results_cuda.*
with --device cuda), and the scaling plot of the encoder (scaling.png)."""

import json
import statistics
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from vanilla_transformer.scripts.benchmarking import common
from vanilla_transformer.scripts.benchmarking.measurement import Result, mb_pair, timed
from vanilla_transformer.scripts.benchmarking.peers import bert_shape, encoder_pair


def machine() -> str:
    """The processor, its cores, the GPU and torch's version."""
    if torch.cuda.is_available() and torch.cuda.current_device() is not None:
        gpu = torch.cuda.get_device_name()
    else:
        gpu = "no GPU"
    return common.machine(gpu, f"torch {torch.__version__}")


def write_report(results: list[Result], args, out: Path) -> None:
    """results.json (the machine, the arguments, every result) and results.md (the table), and the table printed."""
    out.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.device == "cpu" else f"_{args.device}"
    (out / f"results{suffix}.json").write_text(json.dumps({"machine": machine(), "args": asdict(args),
                                                          "results": [asdict(r) for r in results]}, indent=2))
    lines = [f"Machine: {machine()}. Command: `python scripts/benchmark.py {' '.join(sys.argv[1:])}`", "",
             "| case | metric | ours | peer | ratio ours/peer (min-max) | peak MB ours / peer | note |",
             "|---|---|---:|---:|---:|---:|---|"]
    for r in results:
        lines.append(f"| {r.case} | {r.metric} | {r.ours:,.1f} | {r.peer:,.1f} ({r.peer_name}) | **{r.ratio:.2f}x** "
                     f"({r.ratio_min:.2f}-{r.ratio_max:.2f}) | {mb_pair(r.ours_peak_mb, r.peer_peak_mb)} | {r.note} |")
    (out / f"results{suffix}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def scaling_plot(args, out: Path) -> Path:
    """Encoder inference time (ours and BertModel, same weights) against sequence length and batch size: PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shape = bert_shape(args.device)
    ours, peer = encoder_pair(args.device, shape)
    gen = torch.Generator().manual_seed(args.seed)

    def seconds(model, batch, length):
        ids = torch.randint(1000, 30522, (batch, length), generator=gen).to(args.device)
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        model(**inputs)  # warm-up
        return statistics.median(timed(lambda: model(**inputs), args.device) for _ in range(3))

    sweeps = {"sequence length (batch 32)": [(32, n, n) for n in (32, 64, 128, 256, 512)],  # (batch, length, x)
              "batch size (length 128)": [(b, 128, b) for b in (8, 16, 32, 64, 128)]}
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    with torch.inference_mode():
        for axis, (label, points) in zip(axes, sweeps.items()):
            xs = [x for _, _, x in points]
            for name, model in (("ours", ours), ("BertModel", peer)):
                axis.plot(xs, [seconds(model, b, n) * 1000 for b, n, _ in points], marker="o", label=name)
            axis.set_xscale("log", base=2)
            axis.set_yscale("log")
            axis.set_xlabel(label)
            axis.set_ylabel("forward time (ms)")
            axis.grid(True, which="both", alpha=0.3)
            axis.legend()
    name = "L{layers}-H{hidden}".format(**shape)
    figure.suptitle(f"Encoder inference {name}, {machine()}", fontsize=9)
    figure.tight_layout()
    path = out / f"scaling{'' if args.device == 'cpu' else '_' + args.device}.png"
    out.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    print(f"scaling plot: {path}")
    return path
