"""Export a saved model folder to CTranslate2, the inference engine translation models are deployed with.

The encoder-decoder becomes a `ctranslate2.Translator` directory, the BERT-style encoder a `ctranslate2.Encoder`
one. The tokenizer (tokenizer.json) and the generation config travel with it, so the directory is all a server
needs: ctranslate2 and tokenizers, no PyTorch.

    python scripts/export_ctranslate2.py --model_dir outputs/multi30k/final --output_dir outputs/multi30k/ct2-int8 \\
        --quantization int8 --compare_split ../shared/data/multi30k/test_2016_flickr --source_lang de --target_lang en

Quantization: float32 (exact: the same ids as our generate, see docs/serving.md), int8 or int8_float32 (CPU:
int8 weights and matrix products), float16 or int8_float16 (GPU). `--compare_split` then translates a test set
with our `generate` and with the export (greedy, and beam search with the saved beam size and length penalty) and
reports the share of identical outputs and both sacreBLEU scores (comparison.json in the output directory).
Translate with the result:

    from vanilla_transformer.scripts.serving.ctranslate2_translator import CTranslate2Translator
    CTranslate2Translator("outputs/multi30k/ct2-int8").translate(["Ein Hund läuft im Park."], num_beams=4)

or with ctranslate2 and tokenizers alone (the model card shows how).
"""

import gzip
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from vanilla_transformer.modeling.convert_ctranslate2 import QUANTIZATIONS, export_ctranslate2
from vanilla_transformer.scripts.serving.ctranslate2_translator import CTranslate2Translator
from vanilla_transformer.scripts.training.errors import errors_without_traceback, parse_arguments, when_interrupted
from vanilla_transformer.scripts.training.model_folders import check_no_dangling_link
from vanilla_transformer.scripts.training.translation_data import CorpusArguments, split_files


@dataclass
class ExportArguments:
    model_dir: str = field(metadata={"help": "a saved vanilla_transformer or vanilla_bert folder, with its tokenizer"})
    output_dir: str = field(metadata={"help": "the CTranslate2 model directory to write"})
    quantization: str = field(
        default="float32",
        metadata={
            "help": "weight type: float32 (exact), int8 / int8_float32 (CPU), float16 / int8_float16 (GPU), "
            "int16, bfloat16, int8_bfloat16",
            "choices": list(QUANTIZATIONS),
        },
    )
    force: bool = field(default=False, metadata={"help": "replace output_dir if it exists"})
    compare_split: str | None = field(default=None, metadata={
        "help": "a parallel test set ({split}.{lang} files, .gz accepted): translate it with our generate and with "
        "the export, and report identical outputs and sacreBLEU (encoder-decoder only)"})
    source_lang: str = field(default="de", metadata={"help": "source language suffix of --compare_split"})
    target_lang: str = field(default="en", metadata={"help": "target language suffix of --compare_split"})
    max_new_tokens: int = field(default=64, metadata={"help": "longest output in the comparison, </s> included"})
    batch_size: int = field(default=64, metadata={"help": "sentences per batch in the comparison"})


def read_lines(split: str, lang: str) -> list[str] | None:
    for path in (Path(f"{split}.{lang}"), Path(f"{split}.{lang}.gz")):
        if path.is_file():
            opener = gzip.open if path.suffix == ".gz" else open
            with opener(path, "rt", encoding="utf-8") as lines:
                return [line.rstrip("\n") for line in lines]
    return None


def our_ids(model, sources: list[list[int]], batch_size: int, **generation) -> list[list[int]]:
    """Our generate over length-sorted batches: ids without the decoder start token, up to the first </s>.

    Cut at </s>, not at the padding: transformers' beam search fills the rows that finished early with
    `pad_token_id or eos_token_id` (generation/utils.py, 5.0 to 5.24), so with our pad id 0 the fill is </s>, not <pad>.
    """
    import torch

    pad, eos, outputs = model.config.pad_token_id, model.config.eos_token_id, [None] * len(sources)
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = max(len(sources[i]) for i in chunk)
        input_ids = torch.tensor([sources[i] + [pad] * (width - len(sources[i])) for i in chunk])
        attention_mask = torch.tensor([[1] * len(sources[i]) + [0] * (width - len(sources[i])) for i in chunk])
        with torch.inference_mode():
            generated = model.generate(input_ids=input_ids, attention_mask=attention_mask, do_sample=False,
                                       **generation)
        for i, row in zip(chunk, generated.tolist()):
            row = row[1:]
            outputs[i] = row[: row.index(eos) + 1] if eos in row else row
    return outputs


def compare(args: ExportArguments) -> dict:
    """Our generate (float32 PyTorch) against the export on --compare_split."""
    import sacrebleu
    from transformers import AutoModelForSeq2SeqLM

    sources = read_lines(args.compare_split, args.source_lang)
    if sources is None:
        raise SystemExit(f"error: no {args.compare_split}.{args.source_lang}[.gz]")
    references = read_lines(args.compare_split, args.target_lang)
    model = AutoModelForSeq2SeqLM.from_pretrained(args.model_dir).eval()
    translator = CTranslate2Translator(args.output_dir)
    source_ids = [encoding.ids for encoding in translator.tokenizer.encode_batch(sources)]
    beams = max(model.generation_config.num_beams or 1, 4)  # the saved beam size, at least 4
    penalty = 1.0 if model.generation_config.length_penalty is None else model.generation_config.length_penalty
    settings = {"greedy": dict(num_beams=1), f"beam {beams}": dict(num_beams=beams, length_penalty=penalty)}
    report = {"sentences": len(sources), "max_new_tokens": args.max_new_tokens, "length_penalty": penalty,
              "quantization": args.quantization, "identical": {}, "seconds": {}, "sacrebleu": {}}
    for name, options in settings.items():
        start = time.perf_counter()
        exported = translator.generate_ids(source_ids, max_new_tokens=args.max_new_tokens,
                                           batch_size=args.batch_size, **options)
        report["seconds"][f"exported {name}"] = round(time.perf_counter() - start, 1)
        # transformers' default beam search may search on after num_beams hypotheses finished; CTranslate2's
        # stops there, as transformers' early_stopping=True does: both are reported
        for stopping in ("default", "early_stopping=True") if options["num_beams"] > 1 else ("default",):
            extra = {"early_stopping": True} if stopping != "default" else {}
            start = time.perf_counter()
            ours = our_ids(model, source_ids, args.batch_size, max_new_tokens=args.max_new_tokens, **options, **extra)
            label = name if stopping == "default" else f"{name}, ours with {stopping}"
            report["seconds"][f"ours {label}"] = round(time.perf_counter() - start, 1)
            report["identical"][label] = round(sum(a == b for a, b in zip(ours, exported)) / len(sources), 4)
            if references is not None and stopping == "default":
                decode = translator.tokenizer.decode_batch
                for who, ids in (("ours", ours), ("exported", exported)):
                    bleu = sacrebleu.corpus_bleu(decode(ids, skip_special_tokens=True), [references])
                    report["sacrebleu"][f"{who} {name}"] = round(bleu.score, 2)
        print(json.dumps(report, indent=1), flush=True)
    return report


def main(argv: list[str] | None = None) -> int:
    with errors_without_traceback():
        (args,) = parse_arguments(HfArgumentParser(ExportArguments, description=__doc__.split("\n\n")[0]), argv)
        check_no_dangling_link(args.output_dir, "--output_dir")
        if args.compare_split is not None:  # before the export: a wrong path fails at once
            split_files(args.compare_split, CorpusArguments(source_lang=args.source_lang, target_lang=args.target_lang))
        when_interrupted(lambda: f"{args.output_dir} may be incomplete: run the same command again with --force")
        try:
            output_dir = export_ctranslate2(args.model_dir, args.output_dir, args.quantization, force=args.force)
        except (ValueError, RuntimeError, OSError) as error:  # unsupported variant, existing output, missing files
            raise SystemExit(f"error: {error}") from None
        print(f"exported {args.model_dir} to {output_dir} ({args.quantization})")
        if args.compare_split is not None:
            when_interrupted(lambda: f"the export in {output_dir} is complete; its comparison.json is not written: "
                                     "run the same command again with --force for it")
            report = compare(args)
            (Path(output_dir) / "comparison.json").write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
