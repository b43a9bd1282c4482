"""Configuration of the encoder-decoder Transformer (Vaswani et al. 2017, "Attention Is All You Need").

Defaults are the paper's base model: d_model 512, 6 + 6 layers, 8 heads, feed-forward 2048, dropout 0.1,
post-LN, sinusoidal positions, one shared source/target vocabulary tied to the output projection.
Field names follow `MarianConfig`, so Hugging Face users find what they expect.
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


class VanillaTransformerConfig(CheckedConfig, PreTrainedConfig):
    r"""
    Args:
        vocab_size: size of the joint source/target vocabulary.
        d_model: width of the residual stream (the paper's d_model).
        encoder_layers / decoder_layers: number of layers in each stack (the paper's N).
        encoder_attention_heads / decoder_attention_heads: attention heads (the paper's h).
        num_key_value_heads: key/value heads shared by groups of query heads; `None` (default) means one per
            query head (multi-head attention, as in the paper) and is set to the head count when both stacks have
            the same (caches are sized from it), 1 gives multi-query attention, anything in between grouped-query
            attention. Applies to every attention of both stacks.
        encoder_ffn_dim / decoder_ffn_dim: inner size of the position-wise feed-forward network (the paper's d_ff).
        activation_function: feed-forward non-linearity (`"relu"` as in the paper, or any name in
            `transformers.activations.ACT2FN`).
        dropout: dropout on each sublayer output and on the embedding sums (the paper's P_drop).
        attention_dropout: dropout on the attention probabilities (0 in the paper).
        activation_dropout: dropout after the feed-forward non-linearity (0 in the paper).
        max_position_embeddings: longest sequence the model accepts.
        position_embedding_type: `"sinusoidal"` (the paper's fixed table) or `"learned"`.
        normalize_before: `False` is the paper's post-LN (`LayerNorm(x + Sublayer(x))`); `True` gives pre-LN
            (`x + Sublayer(LayerNorm(x))`) with a final LayerNorm after each stack.
        scale_embedding: multiply token embeddings by sqrt(d_model), as the paper does.
        layer_norm_eps: epsilon of every LayerNorm.
        lm_head_bias: give the output projection a bias (needed to carry Marian's `final_logits_bias`).
        skip_padding: run the position-wise work (projections, feed-forward, norms, residuals) on the real tokens
            of a padded batch only, the attention kernel alone seeing the padded layout (`token_layout.py`); in the
            decoder under teacher forcing, the padding after each target's last label. The
            outputs at real tokens are unchanged; at padding positions they are 0 instead of the arbitrary values
            a padded model computes there. Faster in proportion to the padding; off by default so that every
            output position matches a reference implementation.
        init_std: standard deviation of the embedding initialisation; `None` gives d_model**-0.5, which after
            the sqrt(d_model) scaling gives unit-variance inputs.
        tie_word_embeddings: share the embedding matrix with the pre-softmax projection (the paper does).

    A config.json is untrusted input (`config_checks.py`): each field must have its type, a key no config knows is
    warned about by name, and a config whose model would take more than half of this machine's memory is refused
    unless `allow_large_model=True` is passed (here, to `from_pretrained` or to `AutoModel*.from_pretrained`) or
    VANILLA_TRANSFORMER_ALLOW_LARGE_MODELS=1 is set. `from_pretrained` of a folder of another model type is refused.
    """

    model_type = "vanilla_transformer"
    keys_to_ignore_at_inference = ["past_key_values"]
    attribute_map = {
        "hidden_size": "d_model",
        "num_attention_heads": "encoder_attention_heads",
        "num_hidden_layers": "encoder_layers",
    }

    vocab_size: int = 37000
    d_model: int = 512
    encoder_layers: int = 6
    decoder_layers: int = 6
    encoder_attention_heads: int = 8
    decoder_attention_heads: int = 8
    num_key_value_heads: int | None = None
    encoder_ffn_dim: int = 2048
    decoder_ffn_dim: int = 2048
    activation_function: str = "relu"
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    max_position_embeddings: int = 1024
    position_embedding_type: str = "sinusoidal"
    normalize_before: bool = False
    scale_embedding: bool = True
    layer_norm_eps: float = 1e-5
    lm_head_bias: bool = False
    skip_padding: bool = False
    init_std: float | None = None
    use_cache: bool = True
    is_encoder_decoder: bool = True
    tie_word_embeddings: bool = True
    pad_token_id: int | None = 0
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    decoder_start_token_id: int | None = 1

    def __post_init__(self, **kwargs):
        check_types(self)
        allow_large_model = kwargs.pop("allow_large_model", False)
        if self.num_key_value_heads is None and self.encoder_attention_heads == self.decoder_attention_heads:
            self.num_key_value_heads = self.decoder_attention_heads  # multi-head: one key/value head per query head
        check_positive(
            self,
            "vocab_size",
            "encoder_layers",
            "decoder_layers",
            "encoder_ffn_dim",
            "decoder_ffn_dim",
            "max_position_embeddings",
        )
        check_positive_float("layer_norm_eps", self.layer_norm_eps)
        check_positive_float("init_std", self.init_std, optional=True)
        for side in ("encoder", "decoder"):
            heads = getattr(self, f"{side}_attention_heads")
            kv_heads = heads if self.num_key_value_heads is None else self.num_key_value_heads
            check_attention_shape(self.d_model, heads, kv_heads, f"{side} attention")
        check_choice("position_embedding_type", self.position_embedding_type, POSITION_EMBEDDING_TYPES)
        check_choice("activation_function", self.activation_function, sorted(ACT2FN))
        for name in ("dropout", "attention_dropout", "activation_dropout"):
            check_probability(name, getattr(self, name))
        if self.position_embedding_type == "sinusoidal" and self.d_model % 2:
            raise ValueError(f"sinusoidal positions need an even d_model (sin/cos pairs), got d_model={self.d_model}")
        for name in ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id"):
            token_id = getattr(self, name)
            if token_id is not None and not 0 <= token_id < self.vocab_size:
                raise ValueError(f"{name}={token_id} is outside the vocabulary (vocab_size={self.vocab_size})")
        build = sinusoidal_build_bytes(self.position_embedding_type, self.max_position_embeddings, self.d_model)
        check_model_size(self.weight_counts(), allow_large_model, build)
        warn_unknown_keys(self, kwargs)
        super().__post_init__(**kwargs)

    def weight_counts(self) -> dict[str, int]:
        """{part: number of values} of the weights (and the two position tables) of a model of this config."""
        d_model, vocab, positions = self.d_model, self.vocab_size, self.max_position_embeddings
        parts = {
            f"the token embeddings (vocab_size={vocab:,} x d_model={d_model:,})":
                (1 if self.tie_word_embeddings else 2) * vocab * d_model + vocab,
            f"the position tables (2 x max_position_embeddings={positions:,} x d_model={d_model:,})":
                2 * positions * d_model,
        }
        for side, attentions in (("encoder", 1), ("decoder", 2)):  # a decoder layer adds cross-attention
            layers, heads = getattr(self, f"{side}_layers"), getattr(self, f"{side}_attention_heads")
            ffn_dim = getattr(self, f"{side}_ffn_dim")
            key_value_width = (self.num_key_value_heads or heads) * (d_model // heads)
            what = f"the {side}'s {layers:,} layers ({side}_layers, d_model={d_model:,}, {side}_ffn_dim={ffn_dim:,})"
            parts[what] = layers * layer_values(d_model, key_value_width, ffn_dim, attentions)
        return parts


__all__ = ["VanillaTransformerConfig"]
