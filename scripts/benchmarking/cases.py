"""The cases of the peer benchmark (scripts/benchmark.py), `CASES` by number. Each builds our model and its Hugging
Face peer with the same weights, checks that their outputs agree, and returns the `Result`s of `compare`. Case 7 (the
CTranslate2 export) is in `ctranslate2_case`."""

import torch

from vanilla_transformer.scripts.benchmarking.common import data_file
from vanilla_transformer.scripts.benchmarking.ctranslate2_case import case_ctranslate2
from vanilla_transformer.scripts.benchmarking.measurement import Result, bf16_peak_tflops, compare, step_flops
from vanilla_transformer.scripts.benchmarking.peers import (
    MULTI30K_TRAIN,
    SST2_DEV,
    bert_pair,
    bert_shape,
    encoder_pair,
    generation_pair,
    marian_pair,
    mlm_batch,
    seq2seq_batches,
    seq2seq_shape,
    sst2_batches,
    sst2_sentences,
    train_step,
)


def case_mlm_training(args) -> list[Result]:
    """1. MLM training step (forward + backward + AdamW): tokens/s."""
    shape = bert_shape(args.device)
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
    ours, peer = encoder_pair(args.device, bert_shape(args.device))
    ours.config.skip_padding = True  # no work on padding (exact at real tokens)
    results = []
    gen = torch.Generator().manual_seed(args.seed)
    fixed = torch.randint(1000, 30522, (64, 128), generator=gen).to(args.device)
    fixed_batch = {"input_ids": fixed, "attention_mask": torch.ones_like(fixed)}

    variable_batches = sst2_batches(sst2_sentences(args.data_dir, 64 * 8), batch_size=64, device=args.device)
    with torch.inference_mode():
        _check_hidden(ours, peer, fixed_batch)
        for batch in variable_batches[:2]:
            _check_hidden(ours, peer, batch)
        results.append(compare("2a. encoder inference, fixed length 128, batch 64", "sequences/s", 64,
                               lambda: ours(**fixed_batch), lambda: peer(**fixed_batch), args, "BertModel"))
        n = sum(b["input_ids"].shape[0] for b in variable_batches)
        masks = [b["attention_mask"] for b in variable_batches]
        pad = 1 - sum(int(mask.sum()) for mask in masks) / sum(mask.numel() for mask in masks)
        results.append(compare("2b. encoder inference, SST-2 sentences padded per batch, batch 64", "sequences/s", n,
                               lambda: [ours(**b) for b in variable_batches],
                               lambda: [peer(**b) for b in variable_batches], args, "BertModel",
                               note=f"{pad:.0%} of the padded positions are padding; ours: skip_padding"))
    return results


def _check_hidden(ours, peer, batch):
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(ours(**batch).last_hidden_state[mask], peer(**batch).last_hidden_state[mask],
                               rtol=1e-4, atol=1e-4)


def case_seq2seq_training(args) -> list[Result]:
    """3. Seq2seq training step, d_model 256, 3+3 layers, 4 heads, ffn 1024, vocab 8,000: target tokens/s."""
    tokenizer, batches = seq2seq_batches(args, 128 * 4, 128)
    ours, peer = marian_pair(args.device, vocab=len(tokenizer), **seq2seq_shape(args.device))
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
    _, batch, ours, peer = generation_pair(args)
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
    from vanilla_transformer.modeling import VanillaTransformerConfig, VanillaTransformerForConditionalGeneration
    from vanilla_transformer.modeling.compat import output_cache

    shape = seq2seq_shape(args.device)
    d_model, layers, heads, ffn = shape["d_model"], shape["layers"], shape["heads"], shape["ffn"]
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
        cache_layers = [*cache.self_attention_cache.layers, *cache.cross_attention_cache.layers]
        return sum(t.numel() * t.element_size() for layer in cache_layers for t in (layer.keys, layer.values)) / 2**20

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


def case_mfu(args) -> list[Result]:
    """6. MLM training step in bf16 autocast (BERT-base shape on a GPU): model-FLOPs utilisation."""
    cuda = args.device == "cuda"
    shape = bert_shape(args.device)
    batch_size, length = (256, 128) if cuda else (32, 128)  # BERT's phase-1 batch: 256 sequences of 128 tokens
    ours, peer = bert_pair(args.device, **shape, sparse_prediction=True)
    batch = mlm_batch(30522, batch_size, length, args.device, torch.Generator().manual_seed(args.seed))
    ours.train(), peer.train()

    def bf16_step(model):
        return train_step(model, torch.optim.AdamW(model.parameters(), lr=1e-4, fused=cuda), batch, torch.bfloat16)

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


CASES = {1: case_mlm_training, 2: case_encoder_inference, 3: case_seq2seq_training, 4: case_generation, 5: case_gqa,
         6: case_mfu, 7: case_ctranslate2}
# The files of --data_dir each case reads (1 and 6 run on random tokens).
DATA_FILES = {2: (SST2_DEV,), 3: MULTI30K_TRAIN, 4: MULTI30K_TRAIN, 5: MULTI30K_TRAIN, 7: MULTI30K_TRAIN}


def check_data(cases: list[int], data_dir: str) -> None:
    """Before any work: every file the chosen cases read is in data_dir (else a one-line error naming --data_dir)."""
    for case in cases:
        for name in DATA_FILES.get(case, ()):
            data_file(data_dir, name, f"case {case} reads it")
