"""Case 7 of the peer benchmark (scripts/benchmark.py): our model exported to CTranslate2 (int8 and float32 on CPU,
int8_float16 and float16 on a GPU) against our PyTorch generate and MarianMTModel, and the peak resident memory of a
process that loads each engine and translates once."""

import os
from pathlib import Path

import torch

from vanilla_transformer.scripts.benchmarking.measurement import Result, compare
from vanilla_transformer.scripts.benchmarking.peers import generation_pair


def _peak_rss_mb(engine: str, folder: str, sources: list[list[int]], options: dict, threads: int) -> float:
    """In a fresh process (spawned): the peak resident memory that loading `engine` from `folder` and translating
    `sources` once adds to the process, in MB (ru_maxrss after minus the resident size before the model loads)."""
    import resource

    def resident_mb() -> float:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    torch.set_num_threads(threads)
    if engine == "ctranslate2":
        from vanilla_transformer.scripts.serving.ctranslate2_translator import CTranslate2Translator

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

    from vanilla_transformer.modeling.convert_ctranslate2 import export_ctranslate2
    from vanilla_transformer.scripts.serving.ctranslate2_translator import CTranslate2Translator
    from vanilla_transformer.modeling.hub import save_for_hub

    cuda = args.device == "cuda"
    tokenizer, batch, ours, peer = generation_pair(args)
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
