"""The main job: train a joint BPE tokenizer and a small Transformer translation model on the embedded default
corpus, save a Hub-ready folder, reload it through the Auto classes with trust_remote_code=True, and translate
with pipeline("translation"). Offline, a few minutes on 2 CPU cores.

    python scripts/main.py                                   # embedded default: CLDR display names (Babel), de->en
    python scripts/main.py --source_file train.de --target_file train.en   # your own parallel text
"""

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, HfArgumentParser, pipeline

from translation_data import babel_pairs, file_pairs
from vanilla_transformer.modeling import VanillaTransformerConfig, VanillaTransformerForConditionalGeneration
from vanilla_transformer.modeling.hub import save_for_hub
from vanilla_transformer.tokenization import special_token_ids, train_bpe_tokenizer


@dataclass
class MainArguments:
    output_dir: str = field(default="outputs/main", metadata={"help": "where the Hub-ready folders go"})
    source_file: str | None = field(default=None, metadata={"help": "source sentences, one per line (.gz ok)"})
    target_file: str | None = field(default=None, metadata={"help": "their translations, line by line"})
    vocab_size: int = field(default=2000, metadata={"help": "joint BPE vocabulary size"})
    d_model: int = 128
    layers: int = field(default=2, metadata={"help": "encoder and decoder layers each"})
    heads: int = 4
    ffn_dim: int = 512
    epochs: int = field(default=40, metadata={"help": "passes over the training pairs"})
    batch_size: int = 64
    learning_rate: float = field(default=1e-3, metadata={"help": "peak learning rate after warmup"})
    warmup_steps: int = 200
    label_smoothing: float = 0.1
    held_out: int = field(default=30, metadata={"help": "pairs kept out of training, translated at the end"})
    seed: int = 0


def batches(pairs, tokenizer, batch_size, shuffle=True):
    """Length-sorted batches (little padding), in random order."""
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]))
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if shuffle:
        random.shuffle(chunks)
    for chunk in chunks:
        sources, targets = zip(*(pairs[i] for i in chunk))
        batch = tokenizer(list(sources), text_target=list(targets), padding=True, truncation=True, return_tensors="pt")
        batch["labels"] = batch["labels"].masked_fill(batch["labels"] == tokenizer.pad_token_id, -100)
        yield batch


def inverse_sqrt_schedule(step: int, warmup_steps: int) -> float:
    """The paper's schedule (section 5.3), as a factor of the peak rate: linear warmup, then 1/sqrt(step)."""
    step = max(step, 1)
    return min(step / warmup_steps, math.sqrt(warmup_steps / step))


def main(args: MainArguments) -> None:
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    output_dir = Path(args.output_dir)
    if args.source_file or args.target_file:
        if not (args.source_file and args.target_file):
            raise SystemExit("pass both --source_file and --target_file (one sentence per line, aligned)")
        pairs, corpus = file_pairs(args.source_file, args.target_file), f"{args.source_file} -> {args.target_file}"
    else:
        pairs, corpus = babel_pairs("de", "en"), "CLDR display names from Babel, German -> English"
    pairs = [(s, t) for s, t in pairs if s.strip() and t.strip()]
    random.shuffle(pairs)
    held_out, train = pairs[: args.held_out], pairs[args.held_out :]
    print(f"corpus: {corpus}: {len(train)} training pairs, {len(held_out)} held out")

    tokenizer = train_bpe_tokenizer([s for pair in train for s in pair], vocab_size=args.vocab_size, min_frequency=1)
    config = VanillaTransformerConfig(
        d_model=args.d_model,
        encoder_layers=args.layers,
        decoder_layers=args.layers,
        encoder_attention_heads=args.heads,
        decoder_attention_heads=args.heads,
        encoder_ffn_dim=args.ffn_dim,
        decoder_ffn_dim=args.ffn_dim,
        max_position_embeddings=256,
        **special_token_ids(tokenizer),
    )
    model = VanillaTransformerForConditionalGeneration(config)
    print(f"tokenizer: {len(tokenizer)} BPE tokens; model: {model.num_parameters() / 1e6:.2f}M parameters")

    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, betas=(0.9, 0.98), eps=1e-9)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: inverse_sqrt_schedule(s + 1, args.warmup_steps))
    steps_per_epoch = math.ceil(len(train) / args.batch_size)
    model.train()
    start = time.time()
    with tqdm(total=args.epochs * steps_per_epoch, desc="training", unit="step") as bar:
        for _ in range(args.epochs):
            for batch in batches(train, tokenizer, args.batch_size):
                loss = model(**batch, smoothing=args.label_smoothing).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
                bar.update()
    print(f"trained in {time.time() - start:.0f} s")

    model.generation_config.num_beams = 4
    model.generation_config.max_new_tokens = 32
    folder = save_for_hub(model.eval(), output_dir / "translation", tokenizer)
    print(f"saved a Hub-ready folder: {folder}")

    # Reload as a user would, through the Auto classes and the folder's own code.
    reloaded = AutoModelForSeq2SeqLM.from_pretrained(folder, trust_remote_code=True)
    AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    print(f"reloaded with AutoModelForSeq2SeqLM: {type(reloaded).__name__}")
    translator = pipeline("translation", model=str(folder), trust_remote_code=True)
    sources = [s for s, _ in held_out[:10]] + [s for s, _ in train[:5]]
    references = [t for _, t in held_out[:10]] + [t for _, t in train[:5]]
    outputs = translator(sources, num_beams=4)
    print("\ntranslations (first 10 held out, then 5 seen in training):")
    for source, reference, output in zip(sources, references, outputs):
        print(f"  {source!r:40} -> {output['translation_text']!r:40} (reference {reference!r})")


if __name__ == "__main__":
    (main_args,) = HfArgumentParser(MainArguments).parse_args_into_dataclasses()
    main(main_args)
