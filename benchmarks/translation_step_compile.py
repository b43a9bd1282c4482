"""Does `torch.compile` make a training step of the Multi30k preset's model cheaper on this CPU? Issue 27's Multi30k
recipe is short of updates (validation loss still falling at the end of every 45-minute run), so a cheaper step would
be a recipe gain with no change to the model.

The preset's model (`MULTI30K_PRESET`: d_model 256, 3+3 layers, ffn 1,024, tied joint vocabulary) takes the same
real Multi30k token batches (~1,500 tokens, length-bucketed, so every batch has its own shape) eagerly and then
compiled (inductor, `dynamic=True`), in the same process, from the same initial weights; each side's first
`--warmup` steps are left out of its time. The compiled model's first loss must equal the eager one (a compiled step
that computed something else would be no speed-up).

    python benchmarks/translation_step_compile.py --tokenizer outputs/multi30k/final \\
        --data_dir ../shared/data/multi30k --threads 2 --steps 30 --warmup 3 --out benchmarks/translation_step_compile.json

Timings depend on the machine and on what else runs; the ratio between the two sides, measured in one run, is the
figure (docs/translation.md, "How the recipe was chosen").
"""

import argparse
import copy
import gzip
import json
import platform
import time
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerFast

from vanilla_transformer.modeling.configuration_vanilla_transformer import VanillaTransformerConfig
from vanilla_transformer.modeling.modeling_vanilla_transformer import VanillaTransformerForConditionalGeneration
from vanilla_transformer.scripts.training.batching import token_batches
from vanilla_transformer.scripts.training.presets import MULTI30K_PRESET


def read_gz(path: Path, rows: int) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return [line.rstrip("\n") for _, line in zip(range(rows), handle)]


def make_batches(tokenizer, data_dir: Path, rows: int, max_tokens: int) -> list[dict[str, torch.Tensor]]:
    source = tokenizer(read_gz(data_dir / "train.de.gz", rows))["input_ids"]
    target = tokenizer(text_target=read_gz(data_dir / "train.en.gz", rows))["input_ids"]
    lengths = [max(len(s), len(t)) for s, t in zip(source, target)]
    batches = []
    for rows_of_batch in token_batches(lengths, max_tokens, seed=0, epoch=0):
        width_s = max(len(source[i]) for i in rows_of_batch)
        width_t = max(len(target[i]) for i in rows_of_batch)
        ids = torch.full((len(rows_of_batch), width_s), tokenizer.pad_token_id)
        mask = torch.zeros(len(rows_of_batch), width_s, dtype=torch.long)
        labels = torch.full((len(rows_of_batch), width_t), -100)
        for r, i in enumerate(rows_of_batch):
            ids[r, : len(source[i])] = torch.tensor(source[i])
            mask[r, : len(source[i])] = 1
            labels[r, : len(target[i])] = torch.tensor(target[i])
        batches.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return batches


def timed_steps(model, forward, batches, warmup: int, smoothing: float) -> dict:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-9)
    first_loss, tokens, seconds = None, 0, 0.0
    start_all = time.perf_counter()
    for index, batch in enumerate(batches):
        start = time.perf_counter()
        loss = forward(**batch, smoothing=smoothing).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if first_loss is None:
            first_loss = loss.item()
        if index >= warmup:
            seconds += time.perf_counter() - start
            tokens += int((batch["labels"] != -100).sum())
    measured = len(batches) - warmup
    return {"first_loss": first_loss, "warmup_and_steps_s": round(time.perf_counter() - start_all, 1),
            "measured_steps": measured, "s_per_step": round(seconds / measured, 4),
            "target_tokens_per_s": round(tokens / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", required=True, help="a trained Multi30k folder or its tokenizer folder")
    parser.add_argument("--data_dir", default="../shared/data/multi30k")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=60, help="measured steps per side, after --warmup")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--out", help="write the figures to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    tokenizer = PreTrainedTokenizerFast.from_pretrained(args.tokenizer)
    batches = make_batches(tokenizer, Path(args.data_dir), rows=8000, max_tokens=MULTI30K_PRESET["max_tokens"])
    batches = batches[: args.warmup + args.steps]
    if len(batches) < args.warmup + args.steps:
        raise SystemExit(f"only {len(batches)} batches: lower --steps")
    preset = MULTI30K_PRESET
    config = VanillaTransformerConfig(
        vocab_size=len(tokenizer), d_model=preset["d_model"], encoder_layers=preset["encoder_layers"],
        decoder_layers=preset["decoder_layers"], encoder_attention_heads=preset["attention_heads"],
        decoder_attention_heads=preset["attention_heads"], encoder_ffn_dim=preset["ffn_dim"],
        decoder_ffn_dim=preset["ffn_dim"], dropout=0.0, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.bos_token_id,
    )
    # dropout 0 here, so that the two sides' first losses can be compared; the preset trains with 0.1
    eager_model = VanillaTransformerForConditionalGeneration(config).train()
    compiled_model = copy.deepcopy(eager_model)
    smoothing = preset["label_smoothing"]

    eager = timed_steps(eager_model, eager_model, batches, args.warmup, smoothing)
    print("eager   ", eager, flush=True)
    compiled = timed_steps(compiled_model, torch.compile(compiled_model, dynamic=True), batches, args.warmup,
                           smoothing)
    print("compiled", compiled, flush=True)
    if abs(compiled["first_loss"] - eager["first_loss"]) > 1e-3 * abs(eager["first_loss"]):
        raise SystemExit(f"the compiled step computes another loss: {compiled['first_loss']} != {eager['first_loss']}")
    result = {
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads,
                    "torch": torch.__version__},
        "eager": eager, "compiled": compiled,
        "compiled_over_eager_time_per_step": round(compiled["s_per_step"] / eager["s_per_step"], 3),
    }
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
