"""Benchmarks: our models against Hugging Face's own at identical shapes and identical weights, in one process.

Each case builds our model and the Hugging Face peer (weights copied through our converters), checks that their
outputs agree, warms both up, then times them interleaved (ours, peer, ours, peer, ...) and reports the
throughput ratio ours / peer (> 1: we are faster) as the median over repeats with its min-max spread, and the
peak memory of one step of each (CPU: peak of the C heap's live bytes in a forked child, `_GlibcHeap`;
CUDA: max_memory_allocated).

    python scripts/benchmark.py                      # all cases, CPU shapes; results in benchmarks/
    python scripts/benchmark.py --cases 3 4 --repeats 3
    python scripts/benchmark.py --device cuda        # the same cases at BERT-base / paper-base shapes, and
                                                     # 6: bf16 MLM training FLOPs utilisation of the card
"""

import ctypes
import gzip
import json
import os
import platform
import select
import signal
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import HfArgumentParser

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


@dataclass
class BenchmarkArguments:
    cases: list[int] | None = field(default=None, metadata={
        "help": "which cases to run; default 1-5, and 6 (bf16 FLOPs utilisation) on a GPU"})
    device: str = field(default="cpu", metadata={"help": "cpu or cuda"})
    repeats: int = field(default=5, metadata={"help": "timed repeats of each model (interleaved)"})
    warmup: int = field(default=2, metadata={"help": "untimed runs of each model first"})
    output_dir: str = field(default="benchmarks", metadata={"help": "where results.md / results.json / PNGs go"})
    data_dir: str = field(default=str(SHARED), metadata={"help": "the reference corpora (sst2, multi30k)"})
    scaling_plot: bool = field(default=True, metadata={"help": "also time the encoder over lengths and batch sizes"})
    peak_tflops: float | None = field(default=None, metadata={
        "help": "the card's dense bf16 peak for case 6's FLOPs utilisation; default: looked up by the GPU's name"})
    seed: int = 0


@dataclass
class Result:
    case: str
    metric: str  # what the throughput counts
    ours: float  # throughput, median
    peer: float
    ratio: float  # median over repeats of ours / peer
    ratio_min: float
    ratio_max: float
    ours_peak_mb: float | None = None
    peer_peak_mb: float | None = None
    peer_name: str = ""
    note: str = ""
    # case 6: model FLOPs of one step (counted by torch's FlopCounterMode), achieved TFLOP/s, share of the card's peak
    ours_step_tflop: float | None = None
    peer_step_tflop: float | None = None
    ours_tflops: float | None = None
    peer_tflops: float | None = None
    ours_mfu: float | None = None
    peer_mfu: float | None = None


# ----------------------------------------------------------------------------------------------- measurement


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: str) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def peak_memory_mb(fn: Callable[[], object], device: str) -> float | None:
    """Peak extra memory of one call of `fn`, over what is allocated before it."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    heap = _GlibcHeap.load()
    if heap is None:
        return None
    # A fresh forked child per model keeps one model's freed-but-cached memory from hiding the other's.
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(read_fd)
            # The parent's OpenMP thread pool does not survive fork(): one thread runs the step without it.
            torch.set_num_threads(1)
            os.write(write_fd, str(heap.peak_during(fn)).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    ready, _, _ = select.select([read_fd], [], [], 600)
    if not ready:  # a library that deadlocks after fork: report no figure rather than hang
        os.kill(pid, signal.SIGKILL)
    text = os.read(read_fd, 64).decode() if ready else ""
    os.close(read_fd)
    os.waitpid(pid, 0)
    return int(text) / 2**20 if text else None


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


class _GlibcHeap:
    """Bytes in use on the C heap (glibc's mallinfo2: every arena and mapped block), tensors and Python objects.

    `peak_during(fn)` samples it at every Python-level and builtin call and return while `fn` runs (each torch op
    included), so the figure is the peak of live memory between operations over what was in use before, however
    the allocator caches. (A process's resident high-water mark also counts heap memory that earlier steps freed
    and a fragmented layout could not reuse: it moved by tens of MB between identical runs here.) Temporaries
    inside one kernel are not seen, for either model."""

    def __init__(self, libc):
        self.mallinfo2 = libc.mallinfo2
        self.mallinfo2.restype = _Mallinfo2

    @classmethod
    def load(cls) -> "_GlibcHeap | None":
        try:
            return cls(ctypes.CDLL("libc.so.6"))
        except (OSError, AttributeError):  # not glibc 2.33+: no figure
            return None

    def in_use(self) -> int:
        info = self.mallinfo2()
        return info.uordblks + info.hblkhd

    def peak_during(self, fn: Callable[[], object]) -> int:
        before = peak = self.in_use()

        def sample(frame, event, arg):
            nonlocal peak
            peak = max(peak, self.in_use())

        sys.setprofile(sample)
        try:
            fn()
        finally:
            sys.setprofile(None)
        return max(peak, self.in_use()) - before


def compare(case: str, metric: str, work: float, ours: Callable, peer: Callable, args, peer_name: str, note: str = "",
            memory: bool = True) -> Result:
    """Throughput of `ours` and `peer` (work units per second), interleaved, and their ratio."""
    for _ in range(args.warmup):
        ours()
        peer()
    ours_times, peer_times = [], []
    for _ in range(args.repeats):
        ours_times.append(timed(ours, args.device))
        peer_times.append(timed(peer, args.device))
    ratios = [p / o for o, p in zip(ours_times, peer_times)]  # time_peer / time_ours = throughput ratio
    result = Result(
        case=case,
        metric=metric,
        ours=work / statistics.median(ours_times),
        peer=work / statistics.median(peer_times),
        ratio=statistics.median(ratios),
        ratio_min=min(ratios),
        ratio_max=max(ratios),
        peer_name=peer_name,
        note=note,
    )
    if memory:
        result.ours_peak_mb = peak_memory_mb(ours, args.device)
        result.peer_peak_mb = peak_memory_mb(peer, args.device)
    print(f"  {case}: ours {result.ours:,.1f} vs {peer_name} {result.peer:,.1f} {metric} -> ratio "
          f"{result.ratio:.2f}x ({result.ratio_min:.2f}-{result.ratio_max:.2f}); peak MB ours / peer "
          f"{_mb_pair(result.ours_peak_mb, result.peer_peak_mb)}", flush=True)
    return result


def _mb(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def _mb_pair(ours: float | None, peer: float | None) -> str:
    """Whole MB, or two decimals where the two are within 1 MB (which one is lower still shows)."""
    close = ours is not None and peer is not None and abs(ours - peer) < 1
    return f"{_mb(ours, 2 if close else 0)} / {_mb(peer, 2 if close else 0)}"


# ----------------------------------------------------------------------------------------------- data


def read_lines(path: Path, limit: int | None = None) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        lines = [line.rstrip("\n") for line in handle]
    return lines[:limit] if limit else lines


def sst2_sentences(data_dir: Path, n: int) -> list[str]:
    path = data_dir / "sst2" / "dev.tsv"
    if not path.is_file():
        raise SystemExit(f"case 2 reads real sentence lengths from {path}; pass --data_dir")
    return [line.split("\t")[0] for line in read_lines(path)[1 : n + 1]]


def multi30k(data_dir: Path, n: int) -> tuple[list[str], list[str]]:
    base = data_dir / "multi30k"
    if not (base / "train.de.gz").is_file():
        raise SystemExit(f"cases 3-5 read Multi30k from {base}; pass --data_dir")
    return read_lines(base / "train.de.gz", n), read_lines(base / "train.en.gz", n)


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


def marian_pair(device: str, d_model: int, layers: int, heads: int, ffn: int, vocab: int, **ours_config):
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


def train_step(model, optimizer, batch) -> Callable[[], float]:
    def step():
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return step


def mlm_batch(tokenizer_vocab: int, batch: int, length: int, device: str, generator: torch.Generator):
    """Random tokens with 15% of positions chosen as MLM targets (80/10/10 does not change the cost)."""
    input_ids = torch.randint(1000, tokenizer_vocab, (batch, length), generator=generator)
    labels = torch.full_like(input_ids, -100)
    chosen = torch.rand(batch, length, generator=generator) < 0.15
    labels[chosen] = input_ids[chosen]
    input_ids[chosen] = 103  # [MASK]
    return {"input_ids": input_ids.to(device), "attention_mask": torch.ones_like(input_ids).to(device),
            "labels": labels.to(device)}


# Dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, from the vendors' data sheets; first match on the name wins.
BF16_PEAK_TFLOPS = (("H200", 989.4), ("H100 PCIe", 756.4), ("H100 NVL", 835.5), ("H100", 989.4), ("A100", 312.0))


def bf16_peak_tflops(args) -> float | None:
    if args.peak_tflops:
        return args.peak_tflops
    if args.device != "cuda":
        return None
    name = torch.cuda.get_device_name()
    return next((peak for key, peak in BF16_PEAK_TFLOPS if key in name), None)


def step_flops(step: Callable[[], object]) -> float:
    """Floating-point operations of one call (matrix products and attention, forward and backward), counted by
    torch's FlopCounterMode: what the model does, including any work it saves (sparse prediction, no padding)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return float(counter.get_total_flops())


# ----------------------------------------------------------------------------------------------- cases


def case_mlm_training(args) -> list[Result]:
    """1. MLM training step (forward + backward + AdamW): tokens/s."""
    cuda = args.device == "cuda"
    shape = dict(hidden=768, layers=12, heads=12, intermediate=3072) if cuda else dict(hidden=256, layers=4, heads=4, intermediate=1024)
    batch_size, length = (32, 128)
    ours, peer = bert_pair(args.device, **shape, sparse_prediction=True)
    gen = torch.Generator().manual_seed(args.seed)
    batch = mlm_batch(30522, batch_size, length, args.device, gen)
    ours.train(), peer.train()
    ours.config.hidden_dropout_prob = 0.0
    with torch.no_grad():
        ours.eval(), peer.eval()
        torch.testing.assert_close(ours(**batch).loss, peer(**batch).loss, rtol=1e-4, atol=1e-4)
        ours.train(), peer.train()
    ours_step = train_step(ours, torch.optim.AdamW(ours.parameters(), lr=1e-4), batch)
    peer_step = train_step(peer, torch.optim.AdamW(peer.parameters(), lr=1e-4), batch)
    name = "L{layers}-H{hidden}-A{heads}".format(**shape)
    return [compare(f"1. MLM training step {name}, seq {length}, batch {batch_size}", "tokens/s",
                    batch_size * length, ours_step, peer_step, args, "BertForMaskedLM",
                    note="ours: sparse prediction (vocabulary projection at the 15% masked positions only)")]


def case_encoder_inference(args) -> list[Result]:
    """2. Encoder inference (feature extraction), batch 64: fixed length 128 and real SST-2 lengths."""
    from transformers import BertModel

    from vanilla_transformer.modeling.convert_bert import convert_bert_to_vanilla

    cuda = args.device == "cuda"
    shape = dict(hidden=768, layers=12, heads=12, intermediate=3072) if cuda else dict(hidden=256, layers=4, heads=4, intermediate=1024)
    _, peer_mlm = bert_pair(args.device, **shape)
    peer = BertModel(peer_mlm.config, add_pooling_layer=False).to(args.device).eval()
    peer.load_state_dict(peer_mlm.bert.state_dict(), strict=False)
    ours = convert_bert_to_vanilla(peer).to(args.device).eval()
    ours.config.skip_padding = True  # no work on padding (exact at real tokens)
    results = []
    gen = torch.Generator().manual_seed(args.seed)
    fixed = torch.randint(1000, 30522, (64, 128), generator=gen).to(args.device)
    fixed_batch = {"input_ids": fixed, "attention_mask": torch.ones_like(fixed)}

    variable_batches = sst2_batches(sst2_sentences(Path(args.data_dir), 64 * 8), batch_size=64, device=args.device)
    with torch.inference_mode():
        _check_hidden(ours, peer, fixed_batch)
        for batch in variable_batches[:2]:
            _check_hidden(ours, peer, batch)
        results.append(compare("2a. encoder inference, fixed length 128, batch 64", "sequences/s", 64,
                               lambda: ours(**fixed_batch), lambda: peer(**fixed_batch), args, "BertModel"))
        n = sum(b["input_ids"].shape[0] for b in variable_batches)
        pad = 1 - sum(int(b["attention_mask"].sum()) for b in variable_batches) / sum(b["attention_mask"].numel() for b in variable_batches)
        results.append(compare("2b. encoder inference, SST-2 sentences padded per batch, batch 64", "sequences/s", n,
                               lambda: [ours(**b) for b in variable_batches], lambda: [peer(**b) for b in variable_batches],
                               args, "BertModel", note=f"{pad:.0%} of the padded positions are padding; ours: skip_padding"))
    return results


def sst2_batches(sentences: list[str], batch_size: int, device: str) -> list[dict]:
    """Real SST-2 sentences through a WordPiece vocabulary trained on them, each batch padded to its longest."""
    from vanilla_transformer.tokenization import train_wordpiece_tokenizer

    tokenizer = train_wordpiece_tokenizer(sentences, vocab_size=4000, show_progress=False)
    batches = []
    for i in range(0, len(sentences), batch_size):
        batch = tokenizer(sentences[i : i + batch_size], padding=True, truncation=True, max_length=128, return_tensors="pt")
        batches.append({"input_ids": batch["input_ids"].to(device), "attention_mask": batch["attention_mask"].to(device)})
    return batches


def _check_hidden(ours, peer, batch):
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(ours(**batch).last_hidden_state[mask], peer(**batch).last_hidden_state[mask],
                               rtol=1e-4, atol=1e-4)


def seq2seq_batches(args, n_sentences: int, batch_size: int):
    """The first `n_sentences` Multi30k pairs, padded per batch, through an 8,000-piece joint BPE trained on the first
    10,000 pairs at least (a BPE trained on 64 sentences stops at about 760 pieces: not a Multi30k-sized model)."""
    from vanilla_transformer.tokenization import train_bpe_tokenizer

    sources, targets = multi30k(Path(args.data_dir), max(n_sentences, 10_000))
    tokenizer = train_bpe_tokenizer(sources + targets, vocab_size=8000, show_progress=False)
    sources, targets = sources[:n_sentences], targets[:n_sentences]
    batches = []
    for i in range(0, n_sentences, batch_size):
        batch = tokenizer(sources[i : i + batch_size], text_target=targets[i : i + batch_size], padding=True,
                          return_tensors="pt")
        batch["labels"] = batch["labels"].masked_fill(batch["labels"] == tokenizer.pad_token_id, -100)
        batches.append({k: v.to(args.device) for k, v in batch.items()})
    return tokenizer, batches


def case_seq2seq_training(args) -> list[Result]:
    """3. Seq2seq training step, d_model 256, 3+3 layers, 4 heads, ffn 1024, vocab 8,000: target tokens/s."""
    cuda = args.device == "cuda"
    shape = dict(d_model=512, layers=6, heads=8, ffn=2048) if cuda else dict(d_model=256, layers=3, heads=4, ffn=1024)
    tokenizer, batches = seq2seq_batches(args, 128 * 4, 128)
    ours, peer = marian_pair(args.device, vocab=len(tokenizer), **shape)
    ours.config.skip_padding = True  # no work on padding (exact at real tokens)
    ours.eval(), peer.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(**batches[0]).loss, peer(**batches[0]).loss, rtol=1e-4, atol=1e-4)
    ours.train(), peer.train()
    ours_opt, peer_opt = torch.optim.AdamW(ours.parameters()), torch.optim.AdamW(peer.parameters())
    tokens = sum(int((b["labels"] != -100).sum()) for b in batches)

    def run(model, optimizer):
        return lambda: [train_step(model, optimizer, b)() for b in batches]

    return [compare("3. seq2seq training step d256 3+3 ffn1024, Multi30k batches of 128 pairs", "target tokens/s",
                    tokens, run(ours, ours_opt), run(peer, peer_opt), args, "MarianMTModel",
                    note="ours: skip_padding")]


def case_generation(args) -> list[Result]:
    """4. Generation, 64 sentences, greedy and beam 4, up to 64 new tokens; ours with and without the cache."""
    cuda = args.device == "cuda"
    shape = dict(d_model=512, layers=6, heads=8, ffn=2048) if cuda else dict(d_model=256, layers=3, heads=4, ffn=1024)
    tokenizer, batches = seq2seq_batches(args, 64, 64)
    ours, peer = marian_pair(args.device, vocab=len(tokenizer), **shape)
    ours.eval(), peer.eval()
    batch = {k: v for k, v in batches[0].items() if k != "labels"}
    results = []
    # Random weights rarely say </s>: every sentence runs the full 64 new tokens, the same work for both.
    for name, options in (("greedy", dict(num_beams=1)), ("beam 4", dict(num_beams=4))):
        options = dict(options, max_new_tokens=64, do_sample=False)
        with torch.inference_mode():
            ours_ids, peer_ids = ours.generate(**batch, **options), peer.generate(**batch, **options)
            if not torch.equal(ours_ids, peer_ids):
                raise AssertionError(f"{name}: our generations differ from Marian's")
            results.append(compare(f"4. generation {name}, 64 sentences, 64 new tokens", "sentences/s", 64,
                                   lambda: ours.generate(**batch, **options), lambda: peer.generate(**batch, **options),
                                   args, "MarianMTModel"))
    with torch.inference_mode():
        options = dict(num_beams=1, max_new_tokens=64, do_sample=False)
        cached, uncached = ours.generate(**batch, **options), ours.generate(**batch, **options, use_cache=False)
        if not torch.equal(cached, uncached):
            raise AssertionError("generation with and without the cache differ")
        results.append(compare("4c. ours greedy with cache vs ours without", "sentences/s", 64,
                               lambda: ours.generate(**batch, **options),
                               lambda: ours.generate(**batch, **options, use_cache=False), args, "ours, no cache",
                               memory=False))
    return results


def case_gqa(args) -> list[Result]:
    """5. Decoding with grouped-query (2 key/value heads) and multi-query attention against multi-head."""
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache

    from vanilla_transformer.modeling import VanillaTransformerConfig, VanillaTransformerForConditionalGeneration
    from vanilla_transformer.modeling.compat import output_cache

    cuda = args.device == "cuda"
    d_model, layers, heads, ffn = (512, 6, 8, 2048) if cuda else (256, 3, 4, 1024)
    tokenizer, batches = seq2seq_batches(args, 64, 64)
    batch = {k: v for k, v in batches[0].items() if k != "labels"}
    options = dict(num_beams=1, max_new_tokens=64, do_sample=False)

    def build(kv_heads):
        config = VanillaTransformerConfig(vocab_size=len(tokenizer), d_model=d_model, encoder_layers=layers,
                                          decoder_layers=layers, encoder_attention_heads=heads,
                                          decoder_attention_heads=heads, encoder_ffn_dim=ffn, decoder_ffn_dim=ffn,
                                          num_key_value_heads=kv_heads, max_position_embeddings=256)
        model = VanillaTransformerForConditionalGeneration(config).to(args.device).eval()
        model.generation_config.eos_token_id = None  # decode all 64 tokens: the same work for every variant
        return model

    def cache_mb(model):
        with torch.inference_mode():
            out = model.generate(**batch, **options, return_dict_in_generate=True)
        cache = output_cache(out)
        size = sum(t.numel() * t.element_size() for layer in cache.self_attention_cache.layers for t in (layer.keys, layer.values))
        size += sum(t.numel() * t.element_size() for layer in cache.cross_attention_cache.layers for t in (layer.keys, layer.values))
        return size / 2**20

    mha = build(None)
    results = []
    for kv_heads, name in ((2, "grouped-query, 2 key/value heads"), (1, "multi-query")):
        variant = build(kv_heads)
        with torch.inference_mode():
            result = compare(f"5. greedy decoding, {name} vs multi-head ({heads} heads)", "sentences/s", 64,
                             lambda: variant.generate(**batch, **options), lambda: mha.generate(**batch, **options),
                             args, "ours, multi-head", memory=False)
        result.ours_peak_mb, result.peer_peak_mb = cache_mb(variant), cache_mb(mha)
        result.note = "peak MB columns: KV cache size after 64 tokens"
        print(f"    KV cache: {result.ours_peak_mb:.1f} MB vs {result.peer_peak_mb:.1f} MB", flush=True)
        results.append(result)
    return results


def scaling_plot(args, out: Path) -> Path:
    """Encoder inference time (ours and BertModel, same weights) against sequence length and batch size: PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from transformers import BertModel

    from vanilla_transformer.modeling.convert_bert import convert_bert_to_vanilla

    cuda = args.device == "cuda"
    shape = dict(hidden=768, layers=12, heads=12, intermediate=3072) if cuda else dict(hidden=256, layers=4, heads=4, intermediate=1024)
    _, peer_mlm = bert_pair(args.device, **shape)
    peer = BertModel(peer_mlm.config, add_pooling_layer=False).to(args.device).eval()
    peer.load_state_dict(peer_mlm.bert.state_dict(), strict=False)
    ours = convert_bert_to_vanilla(peer).to(args.device).eval()
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


def case_mfu(args) -> list[Result]:
    """6. MLM training step in bf16 autocast (BERT-base shape on a GPU): model-FLOPs utilisation."""
    cuda = args.device == "cuda"
    shape = dict(hidden=768, layers=12, heads=12, intermediate=3072) if cuda else dict(hidden=256, layers=4, heads=4, intermediate=1024)
    batch_size, length = (256, 128) if cuda else (32, 128)  # BERT's phase-1 batch: 256 sequences of 128 tokens
    ours, peer = bert_pair(args.device, **shape, sparse_prediction=True)
    batch = mlm_batch(30522, batch_size, length, args.device, torch.Generator().manual_seed(args.seed))
    ours.train(), peer.train()

    def bf16_step(model):
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=cuda)

        def step():
            with torch.autocast(args.device, dtype=torch.bfloat16):
                loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return loss

        return step

    ours_step, peer_step = bf16_step(ours), bf16_step(peer)
    flops = step_flops(ours_step), step_flops(peer_step)
    name = "L{layers}-H{hidden}-A{heads}".format(**shape)
    result = compare(f"6. MLM training step bf16 {name}, seq {length}, batch {batch_size}", "tokens/s",
                     batch_size * length, ours_step, peer_step, args, "BertForMaskedLM",
                     note="ours: sparse prediction")
    peak = bf16_peak_tflops(args)
    for side, count, throughput in (("ours", flops[0], result.ours), ("peer", flops[1], result.peer)):
        tflops = count * throughput / (batch_size * length) / 1e12  # FLOPs per step x steps per second
        setattr(result, f"{side}_step_tflop", count / 1e12)
        setattr(result, f"{side}_tflops", tflops)
        setattr(result, f"{side}_mfu", tflops / peak if peak else None)
    utilisation = (f"; MFU ours {result.ours_mfu:.1%}, peer {result.peer_mfu:.1%} of {peak:,.0f} TFLOP/s"
                   if peak else "; no bf16 peak known for this device (--peak_tflops)")
    result.note += (f"; FLOPs/step ours {result.ours_step_tflop:.3f} T, peer {result.peer_step_tflop:.3f} T; "
                    f"achieved ours {result.ours_tflops:.2f}, peer {result.peer_tflops:.2f} TFLOP/s{utilisation}")
    print(f"    {result.note}", flush=True)
    return [result]


def _peak_rss_mb(engine: str, folder: str, sources: list[list[int]], options: dict, threads: int) -> float:
    """In a fresh process (spawned): the peak resident memory that loading `engine` from `folder` and translating
    `sources` once adds to the process, in MB (ru_maxrss after minus the resident size before the model loads)."""
    import resource

    def resident_mb() -> float:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    torch.set_num_threads(threads)
    if engine == "ctranslate2":
        from vanilla_transformer.modeling.convert_ctranslate2 import CTranslate2Translator

        before = resident_mb()
        translator = CTranslate2Translator(folder, intra_threads=threads)
        translator.generate_ids(sources, batch_size=len(sources), **options)
    else:
        from transformers import AutoModelForSeq2SeqLM

        import vanilla_transformer.modeling  # noqa: F401

        before = resident_mb()
        model = AutoModelForSeq2SeqLM.from_pretrained(folder).eval()
        batch = _padded(sources, model.config.pad_token_id)
        with torch.inference_mode():
            model.generate(**batch, do_sample=False, **options)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before


def _padded(sources: list[list[int]], pad: int) -> dict:
    width = max(len(ids) for ids in sources)
    return {"input_ids": torch.tensor([ids + [pad] * (width - len(ids)) for ids in sources]),
            "attention_mask": torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids in sources])}


def case_ctranslate2(args) -> list[Result]:
    """7. The CTranslate2 export (int8 and float32) against our generate and MarianMTModel: 64 sentences, beam 4."""
    import multiprocessing
    import tempfile

    from vanilla_transformer.modeling.convert_ctranslate2 import CTranslate2Translator, export_ctranslate2
    from vanilla_transformer.modeling.hub import save_for_hub

    cuda = args.device == "cuda"
    shape = dict(d_model=512, layers=6, heads=8, ffn=2048) if cuda else dict(d_model=256, layers=3, heads=4, ffn=1024)
    tokenizer, batches = seq2seq_batches(args, 64, 64)
    ours, peer = marian_pair(args.device, vocab=len(tokenizer), **shape)
    ours.eval(), peer.eval()
    batch = {k: v for k, v in batches[0].items() if k != "labels"}
    sources = [row[row != tokenizer.pad_token_id].tolist() for row in batch["input_ids"].cpu()]
    # Random weights rarely say </s>: every sentence runs the full 64 new tokens in every engine (checked below).
    options = dict(num_beams=4, length_penalty=1.0, max_new_tokens=64)
    threads = torch.get_num_threads()
    folder = Path(tempfile.mkdtemp(prefix="ct2-benchmark-"))
    save_for_hub(ours.cpu(), folder / "ours", tokenizer)
    peer.save_pretrained(folder / "marian")
    ours.to(args.device)
    translators = {}
    for quantization in ("int8_float16", "float16") if cuda else ("int8", "float32"):
        export_ctranslate2(folder / "ours", folder / quantization, quantization=quantization)
        translators[quantization] = CTranslate2Translator(folder / quantization, device=args.device,
                                                          intra_threads=threads)
    with torch.inference_mode():
        expected = ours.generate(**batch, do_sample=False, early_stopping=True, **options)
    expected = [[t for t in row[1:] if t != tokenizer.pad_token_id] for row in expected.tolist()]
    exact = "float16" if cuda else "float32"
    if translators[exact].generate_ids(sources, batch_size=64, **options) != expected:
        raise AssertionError(f"the {exact} export's beam search differs from our generate")

    def export_run(quantization):
        return lambda: translators[quantization].generate_ids(sources, batch_size=64, **options)

    def generate_run(model):
        return lambda: model.generate(**batch, do_sample=False, **options)

    memory = {}
    if not cuda:  # peak resident memory of a process that loads each engine and translates once (spawned)
        context = multiprocessing.get_context("spawn")
        with context.Pool(1) as pool:
            for name, engine, path in [("ours", "torch", folder / "ours"), ("marian", "torch", folder / "marian")] + [
                (q, "ctranslate2", folder / q) for q in translators
            ]:
                memory[name] = pool.apply(_peak_rss_mb, (engine, str(path), sources, options, threads))
    results = []
    with torch.inference_mode():
        for quantization in translators:
            for peer_name, model in (("ours (PyTorch generate)", ours), ("MarianMTModel", peer)):
                result = compare(f"7. CTranslate2 {quantization} export, 64 sentences, beam 4, 64 new tokens",
                                 "sentences/s", 64, export_run(quantization), generate_run(model), args, peer_name,
                                 note=f"{threads} threads each; memory: peak resident MB of a process that loads "
                                 "the model and translates once", memory=False)
                result.ours_peak_mb = memory.get(quantization)
                result.peer_peak_mb = memory.get("ours" if model is ours else "marian")
                results.append(result)
    return results


CASES = {1: case_mlm_training, 2: case_encoder_inference, 3: case_seq2seq_training, 4: case_generation, 5: case_gqa,
         6: case_mfu, 7: case_ctranslate2}


# ----------------------------------------------------------------------------------------------- reporting


def machine() -> str:
    if torch.cuda.is_available() and torch.cuda.current_device() is not None:
        gpu = torch.cuda.get_device_name()
    else:
        gpu = "no GPU"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, {gpu}, torch {torch.__version__}"


def write_report(results: list[Result], args, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.device == "cpu" else f"_{args.device}"
    (out / f"results{suffix}.json").write_text(json.dumps({"machine": machine(), "args": asdict(args),
                                                          "results": [asdict(r) for r in results]}, indent=2))
    lines = [f"Machine: {machine()}. Command: `python scripts/benchmark.py {' '.join(sys.argv[1:])}`", "",
             "| case | metric | ours | peer | ratio ours/peer (min-max) | peak MB ours / peer | note |",
             "|---|---|---:|---:|---:|---:|---|"]
    for r in results:
        lines.append(f"| {r.case} | {r.metric} | {r.ours:,.1f} | {r.peer:,.1f} ({r.peer_name}) | **{r.ratio:.2f}x** "
                     f"({r.ratio_min:.2f}-{r.ratio_max:.2f}) | {_mb_pair(r.ours_peak_mb, r.peer_peak_mb)} | {r.note} |")
    (out / f"results{suffix}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def run(args: BenchmarkArguments) -> None:
    torch.manual_seed(args.seed)
    print(f"machine: {machine()}")
    results = []
    if args.cases is None:
        args.cases = [1, 2, 3, 4, 5] + ([6] if args.device == "cuda" else [])
    for case in args.cases:
        print(f"case {case}: {CASES[case].__doc__.splitlines()[0]}", flush=True)
        results += CASES[case](args)
    write_report(results, args, Path(args.output_dir))
    if args.scaling_plot:
        scaling_plot(args, Path(args.output_dir))


def main(argv: list[str] | None = None) -> int:
    (benchmark_args,) = HfArgumentParser(BenchmarkArguments).parse_args_into_dataclasses(args=argv)
    run(benchmark_args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
