"""`vanilla-transformer <command> [options]`: every tool of the project behind one command, as `hf`, `accelerate`
and `transformers` have theirs. `vanilla-transformer --help` lists the commands; `vanilla-transformer <command>
--help` explains one. Each command is a module of `vanilla_transformer.scripts` with a `main(argv)`, also run as
`python -m vanilla_transformer.scripts.<module>` or `python scripts/<module>.py` in a clone; the older
`vanilla-transformer-<command>` console names remain as aliases.
"""

import importlib
import sys

# command -> (module, what it does): the modules are imported only when their command runs (torch takes seconds)
COMMANDS = {
    "main": ("main", "the main job: both families trained on the embedded corpora, reloaded, run in pipelines"),
    "train-tokenizer": ("train_tokenizer", "a joint BPE (translation) or a WordPiece (BERT) from text files"),
    "train-translation": ("train_translation", "train the encoder-decoder Transformer on a parallel corpus"),
    "evaluate-translation": ("evaluate_translation", "sacreBLEU and chrF of a translation model on a test split"),
    "pretrain-mlm": ("pretrain_mlm", "masked-LM pretraining of a BERT-style encoder"),
    "finetune-classification": ("finetune_classification", "fine-tune a BERT for text classification (Trainer)"),
    "finetune-token-classification": ("finetune_token_classification",
                                      "fine-tune a BERT to tag words, e.g. named entities, from CoNLL files (Trainer)"),
    "visualize-attention": ("visualize_attention", "heatmaps of every attention head for a sentence"),
    "publish": ("publish", "a Hub-ready folder with a model card, optionally pushed to the Hub"),
    "export-ctranslate2": ("export_ctranslate2", "export a translation model to CTranslate2 for fast serving"),
    "serve": ("serve", "an HTTP server for a model folder or its CTranslate2 export (LibreTranslate-compatible)"),
    "demo": ("demo", "a Gradio page to try a model folder: translation with its attention, fill-mask, labels"),
    "benchmark": ("benchmark", "speed and memory against Hugging Face models of the same architecture"),
    "benchmark-corpus": ("benchmark_corpus", "tokenizer, tokenization and first-batch time on corpora of any size"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {what}" for name, (_, what) in COMMANDS.items()]
    return ("usage: vanilla-transformer <command> [options]\n\n"
            "The Transformer of 'Attention Is All You Need' and a BERT-style encoder, trained, evaluated and published "
            "as Hugging Face models.\n\ncommands:\n" + "\n".join(lines)
            + "\n\n`vanilla-transformer <command> --help` explains a command and lists its options.")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0].replace("_", "-"), argv[1:]  # train_translation, the module's name, is train-translation
    if name not in COMMANDS:
        close = [known for known in COMMANDS if known.startswith(name)]
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        print(f"vanilla-transformer: error: no command {name!r}{hint} (vanilla-transformer --help lists them)",
              file=sys.stderr)
        return 2
    module = importlib.import_module(f"vanilla_transformer.scripts.{COMMANDS[name][0]}")
    sys.argv[0] = f"vanilla-transformer {name}"  # what argparse's usage lines show
    return module.main(rest) or 0


if __name__ == "__main__":
    sys.exit(main())
