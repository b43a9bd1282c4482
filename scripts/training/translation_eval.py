"""Translating and scoring, shared by train_translation.py (validation) and evaluate_translation.py (the test set):
batched beam search in order of source length, and corpus sacreBLEU / chrF through `evaluate` with the offline metric
modules shipped beside this file (metrics/: no network)."""

from pathlib import Path

import evaluate
import torch
from tqdm.auto import tqdm
from transformers import LogitsProcessor, LogitsProcessorList

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
