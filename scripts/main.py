"""The main job, both model families, offline, under 10 minutes on 2 CPU cores:

1. translation: a joint BPE tokenizer and a small encoder-decoder Transformer trained on the embedded default
   parallel corpus (German -> English CLDR display names that ship with Babel), saved as a Hub-ready folder,
   reloaded with AutoModelForSeq2SeqLM and trust_remote_code=True, and run in pipeline("translation");
2. BERT: a WordPiece tokenizer and a small BERT pretrained with masked-LM on the embedded default English text (the
   docstrings of Python's standard library), saved as a Hub-ready folder, reloaded with AutoModelForMaskedLM and
   trust_remote_code=True, and run in pipeline("fill-mask"). It trains with the MLM script's budget recipe
   (`pretrain_mlm.BUDGET_PRESET`: no dropout, pre-LN, one learning-rate cycle that ends with --bert_minutes) and
   reports, on held-out documents, the masked-token top-1 accuracy beside that of always guessing the most frequent
   token, and the perplexity.

The job ends with the commands for the next steps: your own text and parallel corpus, fine-tuning, publishing.

    python scripts/main.py                                   # both, on the embedded default corpora
    python scripts/main.py --families bert                   # one of them
    python scripts/main.py --source_file train.de --target_file train.en --text_file my_text.txt   # your own data
"""

import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import (
    AutoModelForMaskedLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    DataCollatorForLanguageModeling,
    DataCollatorForSeq2Seq,
    HfArgumentParser,
    pipeline,
)

from vanilla_transformer.modeling import (
    VanillaBertConfig,
    VanillaBertForMaskedLM,
    VanillaTransformerConfig,
    VanillaTransformerForConditionalGeneration,
)
from vanilla_transformer.modeling.hub import save_for_hub
from vanilla_transformer.scripts.pretrain_mlm import (
    BUDGET_PRESET,
    masked_token_scores,
    masked_token_sums,
    most_frequent_token,
)
from vanilla_transformer.tokenization import special_token_ids, train_bpe_tokenizer, train_wordpiece_tokenizer
from vanilla_transformer.scripts.training.batching import sized_batches
from vanilla_transformer.scripts.training.loop import LoopArguments, TrainingTask, train
from vanilla_transformer.scripts.training.engine import make_accelerator
from vanilla_transformer.scripts.training.optimization import loop_optimizer
from vanilla_transformer.scripts.training.text_data import group_blocks, stdlib_docstrings
from vanilla_transformer.scripts.training.translation_data import babel_pairs, file_pairs, read_lines

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
    output_dir: str = field(default="outputs/main", metadata={"help": "where the Hub-ready folders go (and training/: "
                                                                      "each part's checkpoint and log.jsonl)"})
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
    # The BERT defaults are the MLM script's budget recipe (pretrain_mlm.BUDGET_PRESET), not the main job's own.
    bert_vocab_size: int = field(default=BUDGET_PRESET["vocab_size"], metadata={"help": "WordPiece vocabulary size"})
    bert_hidden_size: int = BUDGET_PRESET["hidden_size"]
    bert_layers: int = BUDGET_PRESET["num_hidden_layers"]
    bert_heads: int = BUDGET_PRESET["num_attention_heads"]
    bert_intermediate_size: int = BUDGET_PRESET["intermediate_size"]
    block_size: int = field(default=BUDGET_PRESET["block_size"],
                            metadata={"help": "tokens per MLM training block, [CLS] included"})
    bert_batch_size: int = field(default=BUDGET_PRESET["batch_size"], metadata={"help": "blocks per MLM step"})
    bert_minutes: float = field(default=BUDGET_PRESET["max_train_minutes"],
                                metadata={"help": "MLM training time; the learning rate's one cycle ends with it"})
    bert_max_steps: int | None = field(default=None, metadata={"help": "stop MLM training earlier, at this step"})
    bert_learning_rate: float = BUDGET_PRESET["learning_rate"]
    bert_warmup_steps: int = BUDGET_PRESET["warmup_steps"]
    bert_held_out: int = field(default=400, metadata={"help": "documents kept out of training: MLM accuracy, "
                                                             "perplexity"})

    def __post_init__(self):
        unknown = set(self.families) - set(FAMILIES)
        if unknown or not self.families:
            raise ValueError(f"--families {' '.join(self.families)}: choose from {', '.join(FAMILIES)}")
        if bool(self.source_file) != bool(self.target_file):
            raise ValueError("pass both --source_file and --target_file (one sentence per line, aligned)")


def fit(model, dataset: list, lengths: list[int], collate, args: MainArguments, family: str, batch_size: int,
        schedule: dict, **task_options) -> float:
    """Train `model` on `dataset` through the project's one loop (`vanilla_transformer.scripts.training.loop.train`, as every
    training script): Adam with the paper's betas, linear warmup then the `schedule`'s decay, gradient clipping,
    a progress bar, batches of `batch_size` examples of similar length in an order drawn from (seed, epoch). Its
    checkpoint and log.jsonl go to output_dir/training/<family>, made afresh on each run of the main job. Returns the
    seconds spent; the model is left in eval mode. `schedule`: LoopArguments' learning_rate, warmup_steps, when to
    stop, lr_schedule...; `task_options`: TrainingTask's loss, count_tokens..."""
    run_dir = Path(args.output_dir) / "training" / family
    shutil.rmtree(run_dir, ignore_errors=True)  # the main job starts over each time; its folders are its own
    loop = LoopArguments(output_dir=str(run_dir), seed=args.seed, **schedule,
                         save_steps=10**9, keep_checkpoints=1)  # one checkpoint, at the end
    accelerator = make_accelerator(loop)
    optimizer, scheduler = loop_optimizer(model, loop, loop.learning_rate)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    task = TrainingTask(
        dataset=dataset,
        collate=collate,
        epoch_batches=lambda epoch: sized_batches(lengths, batch_size, args.seed, epoch),
        **{"loss": lambda model, batch, num_items: model(**batch, num_items_in_batch=num_items).loss, **task_options},
    )
    outcome = train(accelerator, model, optimizer, scheduler, task, loop)
    if not outcome.completed:  # Ctrl-C or SIGTERM: the loop saved a checkpoint and stopped; so does the job
        raise KeyboardInterrupt(f"{family} training interrupted at step {outcome.global_step}")
    accelerator.unwrap_model(model).cpu().eval()  # the rest of the job (scoring, saving, pipelines) runs on the CPU
    return outcome.train_seconds


# ------------------------------------------------------------------------------------------------ translation


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
    sources, targets = zip(*train)
    encoded = tokenizer(list(sources), text_target=list(targets), truncation=True)
    examples = [{"input_ids": ids, "labels": labels} for ids, labels in zip(encoded["input_ids"], encoded["labels"])]
    collate = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100, return_tensors="pt")
    seconds = fit(model, examples, [len(e["input_ids"]) for e in examples], collate, args, "translation",
                  args.batch_size, dict(num_epochs=args.epochs, learning_rate=args.learning_rate,
                                        warmup_steps=args.warmup_steps),
                  loss=lambda model, batch, num_items: model(**batch, smoothing=args.label_smoothing,
                                                             num_items_in_batch=num_items).loss)
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
        hidden_dropout_prob=BUDGET_PRESET["dropout"],
        attention_probs_dropout_prob=BUDGET_PRESET["dropout"],
        normalize_before=BUDGET_PRESET["pre_ln"],
        initializer_range=BUDGET_PRESET["initializer_range"],
    )
    model = VanillaBertForMaskedLM(config)
    print(f"[bert] tokenizer: {len(tokenizer)} WordPiece tokens; {len(train_blocks)} blocks of {args.block_size} "
          f"tokens; model: {model.num_parameters() / 1e6:.2f}M parameters")

    collate = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)  # 80% [MASK], 10% random, 10% kept

    schedule = dict(max_train_minutes=args.bert_minutes, max_steps=args.bert_max_steps, lr_schedule="one_cycle",
                    learning_rate=args.bert_learning_rate, warmup_steps=args.bert_warmup_steps,
                    weight_decay=BUDGET_PRESET["weight_decay"])
    seconds = fit(model, train_blocks, [len(b["input_ids"]) for b in train_blocks], collate, args, "bert",
                  args.bert_batch_size, schedule,
                  count_tokens=lambda batch: batch["attention_mask"].sum())  # the labels are a subset of the inputs
    frequent = most_frequent_token([b["input_ids"] for b in train_blocks],
                                   [b["special_tokens_mask"] for b in train_blocks])
    scores = held_out_scores(model, held_out_blocks, tokenizer, args.seed, frequent)
    print(f"[bert] trained in {seconds:.0f} s. On the {len(held_out)} held-out documents ({scores['masked']} "
          f"masked tokens, 15%): top-1 accuracy {scores['val_accuracy']:.1%}, against "
          f"{scores['val_frequency_baseline']:.1%} for always guessing the most frequent token "
          f"({tokenizer.convert_ids_to_tokens(frequent)!r}); perplexity {scores['val_perplexity']:.1f}")
    folder = save_for_hub(model, output_dir / "bert", tokenizer)
    print(f"[bert] saved a Hub-ready folder: {folder}")

    reloaded = AutoModelForMaskedLM.from_pretrained(folder, trust_remote_code=True)
    print(f"[bert] reloaded with AutoModelForMaskedLM: {type(reloaded).__name__}")
    fill_mask = pipeline("fill-mask", model=str(folder), trust_remote_code=True, top_k=3)
    print("\n[bert] pipeline('fill-mask'), the top 3 with their probabilities:")
    for probe, answers in zip(FILL_MASK_PROBES, fill_mask(FILL_MASK_PROBES)):
        print(f"  {probe!r:58} -> " + ", ".join(f"{a['token_str']} ({a['score']:.2f})" for a in answers))
    return folder


def held_out_scores(model, blocks: list[dict], tokenizer, seed: int, frequent_token: int) -> dict:
    """On held-out blocks masked once with a fixed seed (15%): the MLM script's validation scores (loss, perplexity,
    top-1 accuracy, the frequency baseline's accuracy: always `frequent_token`) and the number of masked tokens."""
    # seed + 1: before transformers 5.24 the collator treats seed=0 as no seed (the global RNG), so the held-out
    # positions would change between calls
    collate = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15, seed=seed + 1)
    batches = [collate(blocks[start : start + 64]) for start in range(0, len(blocks), 64)]
    sums = masked_token_sums(model, batches, frequent_token)
    return {**masked_token_scores(sums), "masked": int(sums[1])}


def run(args: MainArguments) -> dict[str, Path]:
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
    print(NEXT_STEPS.format(bert=folders.get("bert", Path(args.output_dir) / "bert")))
    return folders


NEXT_STEPS = """
What next (after `pip install .`; in a clone, `.venv/bin/python scripts/<name>.py` with _ for -, e.g.
scripts/pretrain_mlm.py). Every command explains itself with --help; docs/main-job.md has more.
  your own text, one document per line (the recipe above, for longer: the learning rate follows the budget)
    vanilla-transformer-pretrain-mlm --preset budget --train_file my_text.txt --validation_file my_valid.txt \\
      --output_dir outputs/my-bert --max_train_minutes 30
  your own parallel corpus, {{split}}.{{lang}} files with one sentence per line
    vanilla-transformer-train-translation --train_split data/train --validation_split data/val \\
      --source_lang de --target_lang en --output_dir outputs/my-model --max_train_minutes 45 --average_last 5
  fine-tuning this BERT (or yours) for classification, on TSV files (sentence, label)
    vanilla-transformer-finetune-classification --model_name_or_path {bert} \\
      --train_file train.tsv --validation_file dev.tsv --output_dir runs/my-classifier
  publishing a model folder with a model card, to the Hugging Face Hub
    vanilla-transformer-publish --model_dir outputs/my-bert/final --output_dir hub/my-bert --push_to_hub user/my-bert"""


def main(argv: list[str] | None = None) -> int:
    (args,) = HfArgumentParser(MainArguments).parse_args_into_dataclasses(args=argv)
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
