"""The pairs the peer benchmark compares (scripts/benchmark.py): our model and its Hugging Face peer with the same
weights (copied through our converters), at the shape of the device, and the batches they run on: random MLM
tokens, real SST-2 sentences, Multi30k pairs (read from --data_dir)."""

import contextlib
from collections.abc import Callable
from pathlib import Path

import torch

from vanilla_transformer.scripts.benchmarking.common import data_file, read_lines

SST2_DEV = "sst2/dev.tsv"
MULTI30K_TRAIN = ("multi30k/train.de.gz", "multi30k/train.en.gz")


def bert_shape(device: str) -> dict:
    """BERT-base on a GPU, a small BERT on CPU."""
    if device == "cuda":
        return dict(hidden=768, layers=12, heads=12, intermediate=3072)
    return dict(hidden=256, layers=4, heads=4, intermediate=1024)


def seq2seq_shape(device: str) -> dict:
    """The paper's base model on a GPU, a small one on CPU."""
    if device == "cuda":
        return dict(d_model=512, layers=6, heads=8, ffn=2048)
    return dict(d_model=256, layers=3, heads=4, ffn=1024)


# ----------------------------------------------------------------------------------------------- data


def sst2_sentences(data_dir: str | Path, n: int) -> list[str]:
    path = data_file(data_dir, SST2_DEV, "case 2 reads real sentence lengths from it")
    return [line.split("\t")[0] for line in read_lines(path)[1 : n + 1]]


def multi30k(data_dir: str | Path, n: int) -> tuple[list[str], list[str]]:
    german, english = (data_file(data_dir, name, "cases 3-5 and 7 read Multi30k") for name in MULTI30K_TRAIN)
    return read_lines(german, n), read_lines(english, n)


def sst2_batches(sentences: list[str], batch_size: int, device: str) -> list[dict]:
    """Real SST-2 sentences through a WordPiece vocabulary trained on them, each batch padded to its longest."""
    from vanilla_transformer.tokenization import train_wordpiece_tokenizer

    tokenizer = train_wordpiece_tokenizer(sentences, vocab_size=4000, show_progress=False)
    batches = []
    for i in range(0, len(sentences), batch_size):
        batch = tokenizer(sentences[i : i + batch_size], padding=True, truncation=True, max_length=128,
                          return_tensors="pt")
        batches.append({key: batch[key].to(device) for key in ("input_ids", "attention_mask")})
    return batches


def seq2seq_batches(args, n_sentences: int, batch_size: int):
    """The first `n_sentences` Multi30k pairs, padded per batch, through an 8,000-piece joint BPE trained on the first
    10,000 pairs at least (a BPE trained on 64 sentences stops at about 760 pieces: not a Multi30k-sized model)."""
    from vanilla_transformer.tokenization import train_bpe_tokenizer

    sources, targets = multi30k(args.data_dir, max(n_sentences, 10_000))
    tokenizer = train_bpe_tokenizer(sources + targets, vocab_size=8000, show_progress=False)
    sources, targets = sources[:n_sentences], targets[:n_sentences]
    batches = []
    for i in range(0, n_sentences, batch_size):
        batch = tokenizer(sources[i : i + batch_size], text_target=targets[i : i + batch_size], padding=True,
                          return_tensors="pt")
        batch["labels"] = batch["labels"].masked_fill(batch["labels"] == tokenizer.pad_token_id, -100)
        batches.append({k: v.to(args.device) for k, v in batch.items()})
    return tokenizer, batches


def mlm_batch(tokenizer_vocab: int, batch: int, length: int, device: str, generator: torch.Generator):
    """Random tokens with 15% of positions chosen as MLM targets (80/10/10 does not change the cost)."""
    input_ids = torch.randint(1000, tokenizer_vocab, (batch, length), generator=generator)
    labels = torch.full_like(input_ids, -100)
    chosen = torch.rand(batch, length, generator=generator) < 0.15
    labels[chosen] = input_ids[chosen]
    input_ids[chosen] = 103  # [MASK]
    return {"input_ids": input_ids.to(device), "attention_mask": torch.ones_like(input_ids).to(device),
            "labels": labels.to(device)}


# ----------------------------------------------------------------------------------------------- models


def bert_pair(device: str, hidden: int, layers: int, heads: int, intermediate: int, vocab: int = 30522, **extra):
    """Hugging Face BertForMaskedLM and ours with the same weights (sdpa both)."""
    from transformers import BertConfig, BertForMaskedLM

    from vanilla_transformer.modeling.convert_bert import convert_bert_to_vanilla

    config = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=intermediate, max_position_embeddings=512, attn_implementation="sdpa")
    peer = BertForMaskedLM(config).to(device)
    ours = convert_bert_to_vanilla(peer).to(device)
    for key, value in extra.items():
        setattr(ours.config, key, value)
    return ours, peer


def marian_pair(device: str, d_model: int, layers: int, heads: int, ffn: int, vocab: int):
    """Hugging Face MarianMTModel and ours with the same weights (sdpa both)."""
    from transformers import MarianConfig, MarianMTModel

    from vanilla_transformer.modeling.convert_marian import convert_marian_to_vanilla

    config = MarianConfig(vocab_size=vocab, decoder_vocab_size=vocab, d_model=d_model, encoder_layers=layers,
                          decoder_layers=layers, encoder_attention_heads=heads, decoder_attention_heads=heads,
                          encoder_ffn_dim=ffn, decoder_ffn_dim=ffn, activation_function="relu", scale_embedding=True,
                          max_position_embeddings=256, pad_token_id=0, eos_token_id=2, decoder_start_token_id=0,
                          forced_eos_token_id=None, attn_implementation="sdpa")
    peer = MarianMTModel(config).to(device)
    ours = convert_marian_to_vanilla(peer).to(device)
    return ours, peer


def train_step(model, optimizer, batch, autocast_dtype: torch.dtype | None = None) -> Callable[[], float]:
    """One training step on `batch` (forward, backward, optimizer step); the forward in autocast to `autocast_dtype`
    where one is given."""
    device = batch["input_ids"].device.type

    def step():
        with torch.autocast(device, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext():
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return step


def encoder_pair(device: str, shape: dict):
    """Hugging Face BertModel (no pooler) and our encoder with the same weights, in eval mode."""
    from transformers import BertModel

    from vanilla_transformer.modeling.convert_bert import convert_bert_to_vanilla

    _, peer_mlm = bert_pair(device, **shape)
    peer = BertModel(peer_mlm.config, add_pooling_layer=False).to(device).eval()
    peer.load_state_dict(peer_mlm.bert.state_dict(), strict=False)
    ours = convert_bert_to_vanilla(peer).to(device).eval()
    return ours, peer


def generation_pair(args):
    """The generation cases' setup: the first 64 Multi30k sentences as one batch (no labels), and ours and
    MarianMTModel at the device's shape in eval mode. Returns (tokenizer, batch, ours, peer)."""
    tokenizer, batches = seq2seq_batches(args, 64, 64)
    ours, peer = marian_pair(args.device, vocab=len(tokenizer), **seq2seq_shape(args.device))
    ours.eval(), peer.eval()
    batch = {k: v for k, v in batches[0].items() if k != "labels"}
    return tokenizer, batch, ours, peer
