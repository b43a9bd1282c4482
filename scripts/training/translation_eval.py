"""Translating and scoring, shared by train_translation.py (validation) and evaluate_translation.py (the test set):
batched beam search in order of source length, and corpus sacreBLEU / chrF through `evaluate` with the offline metric
modules shipped beside this file (metrics/: no network); `validate` (loss, BLEU, chrF on every process's share) and
`choose_on_validation` (the final weights and length penalty) for a training run."""

from pathlib import Path

import evaluate
import torch
from accelerate.utils import gather_object
from tqdm.auto import tqdm
from transformers import DataCollatorForSeq2Seq, LogitsProcessor, LogitsProcessorList

from vanilla_transformer.scripts.training.batching import token_batches
from vanilla_transformer.scripts.training.checkpoints import average_checkpoints, is_sharded
from vanilla_transformer.scripts.training.evaluation import evaluation_share, mean_loss
from vanilla_transformer.scripts.training.translation_data import pair_lengths

METRICS_DIR = Path(__file__).resolve().parent / "metrics"  # installed with the package (package data)


def load_metrics() -> dict:
    """{"sacrebleu": ..., "chrf": ...}: the local evaluate modules (no network)."""
    return {name: evaluate.load(str(METRICS_DIR / name)) for name in ("sacrebleu", "chrf")}


def score(hypotheses: list[str], references: list[str], metrics: dict) -> dict:
    bleu = metrics["sacrebleu"].compute(predictions=hypotheses, references=[[r] for r in references])
    chrf = metrics["chrf"].compute(predictions=hypotheses, references=[[r] for r in references])
    return {
        "sacrebleu": round(bleu["score"], 2),
        "chrf": round(chrf["score"], 2),
        "sacrebleu_signature": bleu["signature"],
        "chrf_signature": chrf["signature"],
    }


class SourceLengthLimit(LogitsProcessor):
    """End each translation after `factor` x its source length + 10 tokens (Marian's --max-length-factor, fairseq's
    max_len_a/b): per sentence, so a result does not depend on the batch it was in, and a half-trained model's
    repetition loops stop early instead of running to max_new_tokens."""

    def __init__(self, source_lengths: torch.Tensor, eos_token_id: int, factor: float):
        self.limits = (factor * source_lengths).long() + 10  # (B,)
        self.eos_token_id = eos_token_id

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        limits = self.limits.repeat_interleave(input_ids.shape[0] // len(self.limits))  # (B * beams,)
        done = input_ids.shape[1] - 1 >= limits  # tokens generated so far, after the decoder start token
        if done.any():
            scores = scores.masked_fill(done[:, None], float("-inf"))
            scores[done, self.eos_token_id] = 0.0
        return scores


def generation_batches(sources: list[str], batch_size: int) -> list[list[int]]:
    """Indices of `sources` in batches of `batch_size`, in order of source length (little padding)."""
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


@torch.no_grad()
def translate_batch(model, tokenizer, sources: list[str], max_length_factor: float = 2.0,
                    **generate_kwargs) -> list[str]:
    """One `generate` call on `sources` together (`synced_gpus=True` among `generate_kwargs` for a sharded model)."""
    batch = tokenizer(sources, padding=True, truncation=True, max_length=model.config.max_position_embeddings,
                      return_tensors="pt").to(model.device)
    limit = SourceLengthLimit(batch["attention_mask"].sum(1), tokenizer.eos_token_id, max_length_factor)
    output = model.generate(**batch, logits_processor=LogitsProcessorList([limit]), **generate_kwargs)
    return tokenizer.batch_decode(output, skip_special_tokens=True)


def translate(model, tokenizer, sources: list[str], batch_size: int = 64, show_progress: bool = False,
              max_length_factor: float = 2.0, **generate_kwargs) -> list[str]:
    """Batched generation, in order of source length (little padding); the results in the order of `sources`.
    `generate_kwargs` override the model's generation config (num_beams, length_penalty, max_new_tokens...)."""
    translations = [""] * len(sources)
    for chunk in tqdm(generation_batches(sources, batch_size), desc="translating", unit="batch",
                      disable=not show_progress):
        texts = translate_batch(model, tokenizer, [sources[i] for i in chunk], max_length_factor, **generate_kwargs)
        for i, text in zip(chunk, texts):
            translations[i] = text
    return translations


@torch.no_grad()
def validate(accelerator, model, tokenizer, validation_set, validation_pairs, args, metrics,
             with_loss: bool = True, **generate_kwargs) -> dict:
    """Validation loss (cross-entropy per target token, no smoothing) and corpus BLEU / chrF of beam search, with
    each process handling a share of the batches. Every process makes the same number of forward passes and
    `generate` calls (`evaluation_share`), and a sharded model generates with `synced_gpus=True`: under FSDP2 each
    forward pass is a collective, and a process whose beams have finished keeps stepping with the others."""
    result = {}
    # The bare model: a DDP forward is a collective (buffer broadcast), which evaluation does not need.
    model = accelerator.unwrap_model(model)
    if with_loss:
        batches = token_batches(pair_lengths(validation_set), args.max_tokens, seed=0, epoch=0, shuffle=False)
        collate = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100, return_tensors="pt")
        features = validation_set.select_columns(["input_ids", "labels"])
        loss = mean_loss(accelerator, model, batches, lambda indices: collate([features[i] for i in indices]))
        result["val_loss"] = round(loss, 4)  # per target token, no smoothing
    sources, references = list(validation_pairs["source"]), list(validation_pairs["target"])
    mine, padding = evaluation_share(generation_batches(sources, args.eval_batch_size), accelerator.num_processes,
                                     accelerator.process_index)
    generation = dict(num_beams=args.num_beams, max_new_tokens=args.max_length, synced_gpus=is_sharded(model),
                      **generate_kwargs)
    hypotheses = []
    for batch in mine:
        hypotheses += zip(batch, translate_batch(model, tokenizer, [sources[i] for i in batch], **generation))
    for batch in padding:  # the same number of generate calls on every process; not counted
        translate_batch(model, tokenizer, [sources[i] for i in batch], **generation)
    by_index = dict(gather_object(hypotheses))
    scores = score([by_index[i] for i in range(len(sources))], references, metrics)
    result.update(val_bleu=scores["sacrebleu"], val_chrf=scores["chrf"])
    return result


def choose_on_validation(accelerator, model, tokenizer, validation_set, validation_pairs, args, loop, metrics,
                         last_metrics: dict) -> dict:
    """The final weights (the last step's, or the average of the last checkpoints) and the length penalty: the
    best validation BLEU (then chrF). Leaves the model with the chosen weights and generation settings."""
    length_penalty = args.length_penalties[0]
    choice = {"weights": "last step", "length_penalty": length_penalty, "val_bleu": last_metrics["val_bleu"],
              "val_chrf": last_metrics["val_chrf"], "tried": [{"weights": "last step", "length_penalty": length_penalty,
                                                                 **last_metrics}]}
    checkpoints = sorted((Path(loop.output_dir) / "checkpoints").glob("step-*"),
                         key=lambda p: int(p.name.removeprefix("step-")))[-loop.average_last :]
    if loop.average_last > 1 and len(checkpoints) > 1:
        last_state = {k: v.clone() for k, v in model.state_dict().items()}
        average_checkpoints(model, checkpoints)
        averaged = validate(accelerator, model, tokenizer, validation_set, validation_pairs, args, metrics,
                            length_penalty=length_penalty)
        name = f"average of {', '.join(p.name for p in checkpoints)}"
        choice["tried"].append({"weights": name, "length_penalty": length_penalty, **averaged})
        accelerator.print(f"validation, {name}: {averaged}")
        if (averaged["val_bleu"], averaged["val_chrf"]) > (choice["val_bleu"], choice["val_chrf"]):
            choice.update(weights=name, val_bleu=averaged["val_bleu"], val_chrf=averaged["val_chrf"])
        else:
            model.load_state_dict(last_state)
    for penalty in args.length_penalties[1:]:
        scores = validate(accelerator, model, tokenizer, validation_set, validation_pairs, args, metrics,
                          with_loss=False, length_penalty=penalty)
        choice["tried"].append({"weights": choice["weights"], "length_penalty": penalty, **scores})
        accelerator.print(f"validation, length penalty {penalty}: {scores}")
        if (scores["val_bleu"], scores["val_chrf"]) > (choice["val_bleu"], choice["val_chrf"]):
            choice.update(length_penalty=penalty, val_bleu=scores["val_bleu"], val_chrf=scores["val_chrf"])
    accelerator.unwrap_model(model).generation_config.length_penalty = choice["length_penalty"]
    accelerator.print(f"chosen on validation: {choice['weights']}, length penalty {choice['length_penalty']}: "
                      f"BLEU {choice['val_bleu']}, chrF {choice['val_chrf']}")
    return choice
