"""The arguments of masked-LM pretraining (pretrain_mlm.py, and the main job's BERT through it): the data, the
tokenizer, a new model's size or a checkpoint to continue, blocks and masking; the default size (BERT-Mini) and the
presets (`--preset budget`, which the main job uses)."""

from dataclasses import dataclass, field

from vanilla_transformer.scripts.training.errors import ArgumentError

# A new model's size when none is given: BERT-Mini (Turc et al. 2019), small enough for a CPU.
DEFAULT_SIZE = {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 1024}
# --preset budget: pretraining for a few minutes on a CPU, after Cramming (Geiping and Goldstein 2023) and what
# measurement on 2 CPU cores showed: no dropout, pre-LN, one learning-rate cycle that ends with the time budget, a
# small model, vocabulary and blocks, and an initialisation scaled to the width (BERT's 0.02 is for 768-wide layers;
# 0.05 gives a 128-wide model BERT-base's starting attention-logit spread). Why each: docs/mlm.md, "the budget preset".
BUDGET_PRESET = {
    "vocab_size": 2000, "block_size": 16, "batch_size": 64, "hidden_size": 128, "num_hidden_layers": 2,
    "num_attention_heads": 2, "intermediate_size": 512, "dropout": 0.0, "pre_ln": True, "initializer_range": 0.05,
    "lr_schedule": "one_cycle", "learning_rate": 3e-3, "warmup_steps": 200, "weight_decay": 0.01,
    "max_train_minutes": 5.0,
}
PRESETS = {"budget": BUDGET_PRESET}
NEW_MODEL_ONLY = (*DEFAULT_SIZE, "dropout", "pre_ln", "initializer_range")  # a checkpoint's config fixes these


@dataclass
class PretrainArguments:
    preset: str | None = field(
        default=None, metadata={"help": "budget: the recipe for a few minutes on a CPU (BUDGET_PRESET in this "
                                        "script); options given beside it win"}
    )
    train_file: str | None = field(default=None, metadata={"help": "training text, one document per line (.gz ok), or "
                                                                   "an embedded corpus (embedded:stdlib-docstrings:train)"})
    validation_file: str | None = field(default=None, metadata={"help": "validation text, likewise: loss, perplexity"})
    dataset_name: str | None = field(default=None, metadata={"help": "a datasets Hub id (instead of local files)"})
    dataset_config_name: str | None = None
    train_split: str = "train"
    validation_split: str = "validation"
    text_column: str = field(default="text", metadata={"help": "the text column of --dataset_name"})
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "continue pretraining this vanilla_bert folder (default: a new model)"}
    )
    tokenizer_name: str | None = field(
        default=None, metadata={"help": "a saved WordPiece tokenizer folder (default: the checkpoint's, or one trained "
                                        "on the training text into output_dir/tokenizer)"}
    )
    vocab_size: int = field(default=8000, metadata={"help": "WordPiece vocabulary size, when training one"})
    hidden_size: int | None = field(default=None, metadata={"help": "new model only (default 256)"})
    num_hidden_layers: int | None = field(default=None, metadata={"help": "new model only (default 4)"})
    num_attention_heads: int | None = field(default=None, metadata={"help": "new model only (default 4)"})
    intermediate_size: int | None = field(default=None, metadata={"help": "new model only (default 1024)"})
    dropout: float | None = field(
        default=None, metadata={"help": "new model only: dropout on embeddings, sublayers and attention (default "
                                        "BERT's 0.1)"}
    )
    pre_ln: bool = field(default=False, metadata={"help": "new model only: pre-LN layers (default BERT's post-LN)"})
    initializer_range: float | None = field(
        default=None, metadata={"help": "new model only: standard deviation of the normal initialisation of weight "
                                        "matrices and embeddings (default BERT's 0.02, chosen for 768-wide layers)"}
    )
    block_size: int = field(default=128, metadata={"help": "tokens per training sequence, [CLS] included"})
    batch_size: int = field(default=32, metadata={"help": "blocks per micro-batch and process"})
    eval_batch_size: int = field(default=64, metadata={"help": "blocks per validation batch"})
    mlm_probability: float = field(default=0.15, metadata={"help": "fraction of the tokens (or words) to predict"})
    whole_word_mask: bool = field(
        default=False, metadata={"help": "mask every piece of a chosen word, always with [MASK]"}
    )
    sparse_prediction: bool = field(
        default=True, metadata={"help": "run the MLM head on the masked positions only (--no_sparse_prediction: "
                                        "everywhere; the same loss)"}
    )

    def __post_init__(self):
        if self.dataset_name is None and not (self.train_file and self.validation_file):
            raise ArgumentError("give --train_file and --validation_file, or --dataset_name")
        if self.dataset_name is not None and (self.train_file or self.validation_file):
            raise ArgumentError("give either --dataset_name or --train_file/--validation_file, not both")
        if self.preset is not None and self.preset not in PRESETS:
            raise ArgumentError(f"--preset {self.preset}: choose from {', '.join(PRESETS)}")
        given = [name for name in DEFAULT_SIZE if getattr(self, name) is not None]
        given += ["dropout"] * (self.dropout is not None) + ["pre_ln"] * self.pre_ln
        given += ["initializer_range"] * (self.initializer_range is not None)
        if self.model_name_or_path and given:
            raise ArgumentError(f"--{', --'.join(given)}: the size of {self.model_name_or_path} is fixed by its config")
        if self.block_size < 2:
            raise ArgumentError(f"--block_size {self.block_size}: a block holds [CLS] and at least one token")
        for name in ("batch_size", "eval_batch_size", *(name for name in DEFAULT_SIZE if getattr(self, name))):
            if getattr(self, name) < 1:
                raise ArgumentError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise ArgumentError(f"--dropout {self.dropout}: a probability, at least 0 and below 1")
        if self.initializer_range is not None and not self.initializer_range > 0:
            raise ArgumentError(f"--initializer_range {self.initializer_range}: a standard deviation, above 0")
        if self.vocab_size <= 5:
            raise ArgumentError(f"--vocab_size {self.vocab_size}: the WordPiece has 5 special tokens; give more")
        if not 0 < self.mlm_probability <= 1:
            raise ArgumentError(f"--mlm_probability {self.mlm_probability}: the fraction of tokens to predict must be "
                                "above 0 (0 trains and scores nothing) and at most 1")

    def model_size(self) -> dict:
        """A new model's config arguments: its size, dropout, layer norm placement and initialisation."""
        size = {name: default if getattr(self, name) is None else getattr(self, name)
                for name, default in DEFAULT_SIZE.items()}
        dropout = {} if self.dropout is None else {"hidden_dropout_prob": self.dropout,
                                                   "attention_probs_dropout_prob": self.dropout}
        init = {} if self.initializer_range is None else {"initializer_range": self.initializer_range}
        return {**size, **dropout, **init, "normalize_before": self.pre_ln}


# ------------------------------------------------------------------------------------------------------ data


# ---------------------------------------------------------------------------------------------- model, tokenizer
