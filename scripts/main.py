"""The main job, both model families, offline, under 10 minutes on 2 CPU cores:

1. translation: a joint BPE tokenizer and a small encoder-decoder Transformer trained on the embedded default
   parallel corpus (German -> English CLDR display names that ship with Babel), saved as a Hub-ready folder,
   reloaded with AutoModelForSeq2SeqLM and trust_remote_code=True, and run in pipeline("translation");
2. BERT: a WordPiece tokenizer and a small BERT pretrained with masked-LM on the embedded default English text (the
   docstrings of Python's standard library), saved as a Hub-ready folder, reloaded with AutoModelForMaskedLM and
   trust_remote_code=True, and run in pipeline("fill-mask").

    python scripts/main.py                                   # both, on the embedded default corpora
    python scripts/main.py --families bert                   # one of them
    python scripts/main.py --source_file train.de --target_file train.en --text_file my_text.txt   # your own data
"""

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import (
    AutoModelForMaskedLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    DataCollatorForLanguageModeling,
    HfArgumentParser,
    pipeline,
)

from pretrain_mlm import group_blocks
from text_data import stdlib_docstrings
from translation_data import babel_pairs, file_pairs, read_lines
from vanilla_transformer.modeling import (
    VanillaBertConfig,
    VanillaBertForMaskedLM,
    VanillaTransformerConfig,
    VanillaTransformerForConditionalGeneration,
)
from vanilla_transformer.modeling.hub import save_for_hub
from vanilla_transformer.tokenization import special_token_ids, train_bpe_tokenizer, train_wordpiece_tokenizer

FAMILIES = ("translation", "bert")
# Fill-mask probes in the style of the default text (docstrings); the answers are whatever the model learned.
FILL_MASK_PROBES = [
    "Return the [MASK] of the list.",
    "Raise ValueError if the [MASK] is negative.",
    "If the file does not exist, an [MASK] is raised.",
    "Return True if the string is [MASK] and False otherwise.",
]


@dataclass
class MainArguments:
    output_dir: str = field(default="outputs/main", metadata={"help": "where the Hub-ready folders go"})
    families: list[str] = field(default_factory=lambda: list(FAMILIES),
                                metadata={"help": "which model families to train: translation, bert or both"})
    seed: int = 0
    # translation
    source_file: str | None = field(default=None, metadata={"help": "source sentences, one per line (.gz ok)"})
    target_file: str | None = field(default=None, metadata={"help": "their translations, line by line"})
    vocab_size: int = field(default=2000, metadata={"help": "joint BPE vocabulary size"})
    d_model: int = 128
    layers: int = field(default=2, metadata={"help": "encoder and decoder layers each"})
    heads: int = 4
    ffn_dim: int = 512
    epochs: int = field(default=60, metadata={"help": "passes over the training pairs"})
    batch_size: int = 64
    learning_rate: float = field(default=1e-3, metadata={"help": "peak learning rate after warmup"})
    warmup_steps: int = 200
    label_smoothing: float = 0.1
    held_out: int = field(default=30, metadata={"help": "pairs kept out of training, translated at the end"})
    # BERT
    text_file: str | None = field(default=None, metadata={"help": "MLM text, one document per line (.gz ok); "
                                                                  "default: the standard library's docstrings"})
    bert_vocab_size: int = field(default=4000, metadata={"help": "WordPiece vocabulary size"})
    bert_hidden_size: int = 128
    bert_layers: int = 2
    bert_heads: int = 4
    bert_intermediate_size: int = 512
    block_size: int = field(default=64, metadata={"help": "tokens per MLM training block, [CLS] included"})
    bert_batch_size: int = field(default=32, metadata={"help": "blocks per MLM step"})
    bert_epochs: int = field(default=8, metadata={"help": "passes over the MLM blocks"})
    bert_learning_rate: float = 1e-3
    bert_warmup_steps: int = 100
    bert_held_out: int = field(default=200, metadata={"help": "documents kept out of training: MLM perplexity"})

    def __post_init__(self):
        unknown = set(self.families) - set(FAMILIES)
        if unknown or not self.families:
            raise ValueError(f"--families {' '.join(self.families)}: choose from {', '.join(FAMILIES)}")
        if bool(self.source_file) != bool(self.target_file):
            raise ValueError("pass both --source_file and --target_file (one sentence per line, aligned)")


def inverse_sqrt_schedule(step: int, warmup_steps: int) -> float:
    """The paper's schedule (section 5.3), as a factor of the peak rate: linear warmup, then 1/sqrt(step)."""
    step = max(step, 1)
    return min(step / warmup_steps, math.sqrt(warmup_steps / step))


def fit(model, batches_per_epoch, epochs: int, learning_rate: float, warmup_steps: int, description: str,
        loss_of=lambda model, batch: model(**batch).loss) -> float:
    """Adam (the paper's betas), warmup then inverse square root, gradient clipping; a progress bar. Returns the
    seconds spent. `batches_per_epoch()` yields one epoch's batches, freshly shuffled."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, betas=(0.9, 0.98), eps=1e-9)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: inverse_sqrt_schedule(s + 1, warmup_steps))
    model.train()
    start = time.time()
    epoch_batches = batches_per_epoch()
    with tqdm(total=epochs * len(epoch_batches), desc=description, unit="step") as bar:
        for epoch in range(epochs):
            for batch in epoch_batches:
                loss = loss_of(model, batch)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
                bar.update()
            if epoch + 1 < epochs:
                epoch_batches = batches_per_epoch()
    model.eval()
    return time.time() - start


# ------------------------------------------------------------------------------------------------ translation


def translation_batches(pairs, tokenizer, batch_size) -> list:
    """Length-sorted batches (little padding), in random order."""
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]))
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    random.shuffle(chunks)
    batches = []
    for chunk in chunks:
        sources, targets = zip(*(pairs[i] for i in chunk))
        batch = tokenizer(list(sources), text_target=list(targets), padding=True, truncation=True, return_tensors="pt")
        batch["labels"] = batch["labels"].masked_fill(batch["labels"] == tokenizer.pad_token_id, -100)
        batches.append(batch)
    return batches


def translation_job(args: MainArguments) -> Path:
    output_dir = Path(args.output_dir)
    if args.source_file:
        pairs, corpus = file_pairs(args.source_file, args.target_file), f"{args.source_file} -> {args.target_file}"
    else:
        pairs, corpus = babel_pairs("de", "en"), "CLDR display names from Babel, German -> English"
    pairs = [(s, t) for s, t in pairs if s.strip() and t.strip()]
    random.shuffle(pairs)
    held_out, train = pairs[: args.held_out], pairs[args.held_out :]
    print(f"[translation] corpus: {corpus}: {len(train)} training pairs, {len(held_out)} held out")

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
    print(f"[translation] tokenizer: {len(tokenizer)} BPE tokens; model: {model.num_parameters() / 1e6:.2f}M "
          "parameters")
    seconds = fit(model, lambda: translation_batches(train, tokenizer, args.batch_size), args.epochs,
                  args.learning_rate, args.warmup_steps, "translation",
                  loss_of=lambda model, batch: model(**batch, smoothing=args.label_smoothing).loss)
    print(f"[translation] trained in {seconds:.0f} s")

    model.generation_config.num_beams = 4
    model.generation_config.max_new_tokens = 32
    folder = save_for_hub(model, output_dir / "translation", tokenizer)
    print(f"[translation] saved a Hub-ready folder: {folder}")

    # Reload as a user would, through the Auto classes and the folder's own code.
    reloaded = AutoModelForSeq2SeqLM.from_pretrained(folder, trust_remote_code=True)
    AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    print(f"[translation] reloaded with AutoModelForSeq2SeqLM: {type(reloaded).__name__}")
    translator = pipeline("translation", model=str(folder), trust_remote_code=True)
    sources = [s for s, _ in held_out[:10]] + [s for s, _ in train[:5]]
    references = [t for _, t in held_out[:10]] + [t for _, t in train[:5]]
    outputs = translator(sources, num_beams=4)
    print("\n[translation] pipeline('translation') on 10 held-out pairs, then 5 seen in training:")
    for source, reference, output in zip(sources, references, outputs):
        print(f"  {source!r:40} -> {output['translation_text']!r:40} (reference {reference!r})")
    return folder


# ------------------------------------------------------------------------------------------------------- BERT


def mlm_blocks(documents: list[str], tokenizer, block_size: int) -> list[dict]:
    """BERT's input format: documents closed with [SEP], concatenated, cut into blocks that open with [CLS]."""
    encoded = tokenizer(documents, add_special_tokens=False, return_attention_mask=False,
                        return_token_type_ids=False, verbose=False)
    blocks = group_blocks(encoded, block_size, tokenizer.cls_token_id, tokenizer.sep_token_id)
    return [dict(zip(blocks, values)) for values in zip(*blocks.values())]


def bert_job(args: MainArguments) -> Path:
    output_dir = Path(args.output_dir)
    if args.text_file:
        documents, corpus = [line for line in read_lines(args.text_file) if line.strip()], args.text_file
    else:
        documents, corpus = stdlib_docstrings(), "docstrings of Python's standard library"
    random.shuffle(documents)
    held_out, train = documents[: args.bert_held_out], documents[args.bert_held_out :]
    print(f"[bert] corpus: {corpus}: {len(train)} training documents, {len(held_out)} held out")

    tokenizer = train_wordpiece_tokenizer(train, vocab_size=args.bert_vocab_size, show_progress=False)
    train_blocks = mlm_blocks(train, tokenizer, args.block_size)
    held_out_blocks = mlm_blocks(held_out, tokenizer, args.block_size)
    config = VanillaBertConfig(
        vocab_size=len(tokenizer),
        hidden_size=args.bert_hidden_size,
        num_hidden_layers=args.bert_layers,
        num_attention_heads=args.bert_heads,
        intermediate_size=args.bert_intermediate_size,
        max_position_embeddings=max(128, args.block_size),
        pad_token_id=tokenizer.pad_token_id,
        sparse_prediction=True,  # the MLM head on the masked positions only: same loss, less work
    )
    model = VanillaBertForMaskedLM(config)
    print(f"[bert] tokenizer: {len(tokenizer)} WordPiece tokens; {len(train_blocks)} blocks of {args.block_size} "
          f"tokens; model: {model.num_parameters() / 1e6:.2f}M parameters")

    collate = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)  # 80% [MASK], 10% random, 10% kept

    def epoch():
        order = torch.randperm(len(train_blocks)).tolist()
        return [collate([train_blocks[i] for i in order[start : start + args.bert_batch_size]])
                for start in range(0, len(order), args.bert_batch_size)]

    seconds = fit(model, epoch, args.bert_epochs, args.bert_learning_rate, args.bert_warmup_steps, "bert (MLM)")
    print(f"[bert] trained in {seconds:.0f} s; held-out perplexity (masked tokens, 15%): "
          f"{held_out_perplexity(model, held_out_blocks, tokenizer, args.seed):.1f}")
    folder = save_for_hub(model, output_dir / "bert", tokenizer)
    print(f"[bert] saved a Hub-ready folder: {folder}")

    reloaded = AutoModelForMaskedLM.from_pretrained(folder, trust_remote_code=True)
    print(f"[bert] reloaded with AutoModelForMaskedLM: {type(reloaded).__name__}")
    fill_mask = pipeline("fill-mask", model=str(folder), trust_remote_code=True, top_k=3)
    print("\n[bert] pipeline('fill-mask'), the top 3 with their probabilities:")
    for probe, answers in zip(FILL_MASK_PROBES, fill_mask(FILL_MASK_PROBES)):
        print(f"  {probe!r:58} -> " + ", ".join(f"{a['token_str']} ({a['score']:.2f})" for a in answers))
    return folder


@torch.no_grad()
def held_out_perplexity(model, blocks: list[dict], tokenizer, seed: int) -> float:
    """exp(mean cross-entropy per masked token) on held-out blocks, masked once with a fixed seed."""
    collate = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15, seed=seed)
    total, count = 0.0, 0
    for start in range(0, len(blocks), 64):
        batch = collate(blocks[start : start + 64])
        items = int((batch["labels"] != -100).sum())
        if items:
            total += model(**batch).loss.item() * items
            count += items
    return math.exp(total / max(count, 1))


def main(args: MainArguments) -> dict[str, Path]:
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    start = time.time()
    folders = {}
    if "translation" in args.families:
        folders["translation"] = translation_job(args)
    if "bert" in args.families:
        print()
        folders["bert"] = bert_job(args)
    print(f"\nthe main job took {(time.time() - start) / 60:.1f} minutes; Hub-ready folders: "
          + ", ".join(str(folder) for folder in folders.values()))
    return folders


if __name__ == "__main__":
    (main_args,) = HfArgumentParser(MainArguments).parse_args_into_dataclasses()
    main(main_args)
