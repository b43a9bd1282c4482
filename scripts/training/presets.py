"""Named recipes, `--preset NAME`: the defaults that measurement chose for a task, so that the documented command is
short and a user copies one name rather than twenty options. A preset only changes defaults: an option given beside
it wins. Each preset's runs (the candidates, the proxies, what each gave on a held-out split) are in its page:
docs/translation.md (multi30k), docs/finetuning.md (sst2)."""

import argparse

# train-translation --preset multi30k: Multi30k de->en (29,000 pairs) in 45 minutes of 2 CPU cores in fp32, chosen on
# the validation split with proxy runs (docs/translation.md, "How the recipe was chosen"). The schedule is one
# learning-rate cycle that follows the clock, so the run ends annealed whatever the CPU; the same shape suits any
# corpus of tens of thousands of pairs on a CPU.
MULTI30K_PRESET = {
    "vocab_size": 8000, "d_model": 256, "encoder_layers": 3, "decoder_layers": 3, "attention_heads": 4,
    "ffn_dim": 1024, "dropout": 0.1, "label_smoothing": 0.1, "max_tokens": 1500,
    "learning_rate": 1e-3, "warmup_steps": 400, "lr_schedule": "one_cycle", "max_train_minutes": 45.0,
    "mixed_precision": "no", "save_steps": 150, "keep_checkpoints": 5, "average_last": 5, "eval_steps": 1000,
    "num_beams": 4, "length_penalties": [1.0, 0.6, 0.8, 1.2],
}
TRANSLATION_PRESETS = {"multi30k": MULTI30K_PRESET}

# finetune-classification --preset sst2: SST-2 from a small sentence-embedding checkpoint (all-MiniLM-L6-v2) in at
# most 30 minutes of 2 CPU cores in fp32 (two epochs where the CPU is fast enough, else what 27 minutes allow, the
# decay following the clock), chosen on sentences held out of the training split with their phrases
# (benchmarks/sst2_heldout.py; docs/finetuning.md, "Choosing on a slice of the training data").
SST2_PRESET = {
    "per_device_train_batch_size": 32, "classifier_pooling": "mean", "num_train_epochs": 2.0,
    "max_train_minutes": 27.0, "mixed_precision": "no",
}
FINETUNE_PRESETS = {"sst2": SST2_PRESET}


def apply_preset(parser: argparse.ArgumentParser, argv: list[str] | None, presets: dict[str, dict]) -> None:
    """Make the parser's defaults those of the --preset in argv, if it names one of `presets` (an unknown name is
    refused by the arguments' own check, which lists the known ones)."""
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--preset")
    given = first.parse_known_args(argv)[0]
    if given.preset in presets:
        parser.set_defaults(**presets[given.preset])


def check_preset(name: str | None, presets: dict[str, dict]) -> str | None:
    """The error message for a --preset that is not one of `presets`, else None."""
    if name is not None and name not in presets:
        return f"--preset {name}: choose from {', '.join(presets)}"
    return None
