"""Configuration of the BERT-style encoder (Devlin et al. 2019, "BERT"): the Transformer's encoder stack
(Vaswani et al. 2017) with learned positions, segment (token type) embeddings and an embedding LayerNorm.

Defaults are BERT-base: hidden 768, 12 layers, 12 heads, feed-forward 3072, GELU, dropout 0.1, post-LN,
learned positions up to 512, two segments. Field names follow `BertConfig`, so checkpoints and habits carry over.
"""

from transformers import PreTrainedConfig
from transformers.activations import ACT2FN

from .config_checks import (
    POSITION_EMBEDDING_TYPES,
    CheckedConfig,
    check_attention_shape,
    check_choice,
    check_model_size,
    check_positive,
    check_positive_float,
    check_probability,
    check_types,
    layer_values,
    sinusoidal_build_bytes,
    warn_unknown_keys,
)


CLASSIFIER_POOLINGS = ("cls", "mean")


class VanillaBertConfig(CheckedConfig, PreTrainedConfig):
    r"""
    Args:
        vocab_size: size of the WordPiece vocabulary.
        hidden_size: width of the residual stream (d_model).
        num_hidden_layers: number of encoder layers.
        num_attention_heads: attention heads per layer.
        num_key_value_heads: key/value heads shared by groups of query heads; `None` (default) means one per query
            head (multi-head attention, as BERT; the config then holds num_attention_heads), 1 gives multi-query
            attention, in between grouped-query.
        intermediate_size: inner size of the feed-forward network (d_ff).
        hidden_act: non-linearity of the feed-forward network and of the MLM head transform (`"gelu"` as BERT, or
            any name in `transformers.activations.ACT2FN`).
        hidden_dropout_prob: dropout on the embeddings and on each sublayer output before the residual add.
        attention_probs_dropout_prob: dropout on the attention probabilities.
        max_position_embeddings: longest sequence the model accepts.
        type_vocab_size: number of segments (token_type_ids 0 .. type_vocab_size-1; 2 for sentence pairs).
        initializer_range: standard deviation of the normal initialisation of every weight matrix.
        layer_norm_eps: epsilon of every LayerNorm.
        position_embedding_type: `"learned"` (BERT) or `"sinusoidal"` (the Transformer paper's fixed table).
        normalize_before: `False` is BERT's post-LN; `True` gives pre-LN with a final LayerNorm after the stack.
        sparse_prediction: when `labels` are passed to `VanillaBertForMaskedLM`, run the MLM head (transform and
            the vocabulary projection) only at the positions whose label is not -100, as Cramming and ModernBERT
            do: about 85% less head compute at 15% masking, the same loss. The returned `logits` are then
            (number of masked positions, vocab_size), in row-major order of the masked positions
            (`labels != -100`); without labels the head runs everywhere as usual. The encoder's last layer then
            computes its output at those positions only, and the vocabulary projection and the loss run together
            in vocabulary chunks (`fast_loss.py`): same values, less time and memory.
        skip_padding: run the position-wise work (projections, feed-forward, norms, residuals) on the real tokens
            of a padded batch only, the attention kernel alone seeing the padded layout (`token_layout.py`). The
            outputs at real tokens are unchanged; at padding positions they are 0 instead of the arbitrary values
            a padded model computes there. Faster in proportion to the padding; off by default so that every
            output position matches a reference implementation.
        classifier_dropout: dropout before the classification heads; `None` uses `hidden_dropout_prob`.
        classifier_pooling: what `VanillaBertForSequenceClassification` classifies: `"cls"` (BERT's) is the pooler
            (dense and tanh) over the [CLS] vector; `"mean"` is the average of the last hidden states over the real
            (unpadded) tokens, the sentence vector that sentence-embedding checkpoints such as all-MiniLM-L6-v2 were
            trained to give (the pooler's weights are then kept but unused).
        tie_word_embeddings: share the word embedding matrix with the MLM output projection (BERT does).
        pad_token_id: id of [PAD]; its embedding gets no gradient.
    `num_labels`, `id2label`, `label2id` and `problem_type` (regression, single_label_classification,
    multi_label_classification) come from `PreTrainedConfig`.

    A config.json is untrusted input (`config_checks.py`): each field must have its type, a key no config knows is
    warned about by name, and a config whose model would take more than half of this machine's memory is refused
    unless `allow_large_model=True` is passed (here, to `from_pretrained` or to `AutoModel*.from_pretrained`) or
    VANILLA_TRANSFORMER_ALLOW_LARGE_MODELS=1 is set. `from_pretrained` of a folder of another model type is refused.
    """

    model_type = "vanilla_bert"

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_key_value_heads: int | None = None
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    position_embedding_type: str = "learned"
    normalize_before: bool = False
    sparse_prediction: bool = False
    skip_padding: bool = False
    classifier_dropout: float | None = None
    classifier_pooling: str = "cls"
    tie_word_embeddings: bool = True
    pad_token_id: int | None = 0

    def __post_init__(self, **kwargs):
        check_types(self)
        allow_large_model = kwargs.pop("allow_large_model", False)
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads  # multi-head: one key/value head per query head
        check_attention_shape(self.hidden_size, self.num_attention_heads, self.num_key_value_heads, "attention")
        check_choice("position_embedding_type", self.position_embedding_type, POSITION_EMBEDDING_TYPES)
        check_choice("hidden_act", self.hidden_act, sorted(ACT2FN))
        check_choice("classifier_pooling", self.classifier_pooling, CLASSIFIER_POOLINGS)
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            check_probability(name, getattr(self, name))
        if self.classifier_dropout is not None:
            check_probability("classifier_dropout", self.classifier_dropout)
        if self.position_embedding_type == "sinusoidal" and self.hidden_size % 2:
            raise ValueError(
                f"sinusoidal positions need an even hidden_size (sin/cos pairs), got hidden_size={self.hidden_size}"
            )
        check_positive(
            self, "vocab_size", "num_hidden_layers", "intermediate_size", "max_position_embeddings", "type_vocab_size"
        )
        check_positive_float("layer_norm_eps", self.layer_norm_eps)
        check_positive_float("initializer_range", self.initializer_range)
        if self.pad_token_id is not None and not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(
                f"pad_token_id={self.pad_token_id} is outside the vocabulary (vocab_size={self.vocab_size})"
            )
        build = sinusoidal_build_bytes(self.position_embedding_type, self.max_position_embeddings, self.hidden_size)
        check_model_size(self.weight_counts(), allow_large_model, build)
        warn_unknown_keys(self, kwargs)
        super().__post_init__(**kwargs)

    def weight_counts(self) -> dict[str, int]:
        """{part: number of values} of the weights of a model of this config (the MLM head's, the largest)."""
        hidden, vocab, layers = self.hidden_size, self.vocab_size, self.num_hidden_layers
        key_value_width = self.num_key_value_heads * (hidden // self.num_attention_heads)
        tables = 1 if self.tie_word_embeddings else 2  # the MLM head's projection, unless it is the embedding table
        return {
            f"the token embeddings (vocab_size={vocab:,} x hidden_size={hidden:,})": tables * vocab * hidden + vocab,
            f"the position table (max_position_embeddings={self.max_position_embeddings:,} x hidden_size={hidden:,})":
                self.max_position_embeddings * hidden,
            f"the segment table (type_vocab_size={self.type_vocab_size:,} x hidden_size={hidden:,})":
                self.type_vocab_size * hidden,
            f"the {layers:,} layers (num_hidden_layers, hidden_size={hidden:,}, intermediate_size="
            f"{self.intermediate_size:,})": layers * layer_values(hidden, key_value_width, self.intermediate_size),
            "the pooler and the MLM head's transform": 2 * hidden * hidden + 5 * hidden,
        }


__all__ = ["VanillaBertConfig"]
