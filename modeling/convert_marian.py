"""Convert a Hugging Face `MarianMTModel` into a `VanillaTransformerForConditionalGeneration` with identical outputs.

Marian (the architecture of the Helsinki-NLP opus-mt checkpoints) is the paper's Transformer with post-LN, one
vocabulary shared by encoder, decoder and output projection, and a bias on the output logits. Its only layout
difference is the sinusoidal position table:

    ours (section 3.5):  dimension 2i = sin(pos / 10000^(2i/D)),   dimension 2i+1 = cos(pos / 10000^(2i/D))
    Marian:              dimension i  = sin(pos / 10000^(2i/D)),   dimension D/2+i = cos(pos / 10000^(2i/D))

We keep our table as the paper writes it and renumber the residual stream instead: our dimension c holds what
Marian keeps in dimension `perm[c]` (`perm = [0, D/2, 1, D/2+1, ...]`). A model is unchanged by a consistent
renumbering of its residual dimensions, so every d_model axis of every weight is permuted the same way:
the input columns of the weights that read the residual stream (q/k/v projections, fc1, lm_head = the tied
(V, D) embedding table, whose rows are what the stream starts from), the output rows and biases of those that
write to it (attention o_proj, fc2), and the weight and bias of each LayerNorm, which is permutation-equivariant
(its mean and variance over all dimensions do not depend on their order; it then scales each one). Nothing else
moves: the heads' dimensions (q/k/v output rows, o_proj input columns) and the feed-forward's inner dimension are
not the residual stream. Logits come out in vocabulary order, so they are identical.
"""

import copy

import torch
from transformers import MarianConfig, MarianMTModel
from transformers.utils import logging

from .configuration_vanilla_transformer import VanillaTransformerConfig
from .modeling_vanilla_transformer import VanillaTransformerForConditionalGeneration

logger = logging.get_logger(__name__)


def marian_to_paper_permutation(d_model: int) -> torch.Tensor:
    """perm[c] = the Marian dimension that our dimension c holds: sin half interleaved with cos half."""
    half = d_model // 2
    return torch.stack([torch.arange(half), torch.arange(half) + half], dim=1).flatten()  # (D,)


def _single_token_id(name: str, value):
    if isinstance(value, (list, tuple)):
        if len(value) != 1:
            raise ValueError(f"MarianConfig.{name}={value}: the vanilla Transformer config takes a single token id")
        value = value[0]
    return value


def vanilla_config_from_marian(marian_config: MarianConfig) -> VanillaTransformerConfig:
    """The `VanillaTransformerConfig` of the same architecture; raises ValueError for what it cannot express."""
    if not isinstance(marian_config, MarianConfig):
        raise ValueError(f"expected a MarianConfig, got {type(marian_config).__name__}")
    shared = marian_config.share_encoder_decoder_embeddings
    if not shared or marian_config.decoder_vocab_size != marian_config.vocab_size:
        raise ValueError(
            f"this Marian model has a separate decoder vocabulary (share_encoder_decoder_embeddings={shared}, "
            f"vocab_size={marian_config.vocab_size}, decoder_vocab_size={marian_config.decoder_vocab_size}); the "
            "vanilla Transformer has one vocabulary shared by source, target and output projection, as in the paper"
        )
    if not marian_config.tie_word_embeddings:
        raise ValueError(
            "this Marian model has an output projection separate from its embeddings (tie_word_embeddings=False); "
            "the vanilla Transformer ties them (section 3.4)"
        )
    if marian_config.d_model % 2:
        raise ValueError(f"Marian d_model={marian_config.d_model} is odd; sinusoidal positions need sin/cos pairs")
    if marian_config.encoder_layerdrop or marian_config.decoder_layerdrop:
        # LayerDrop only skips layers in training; inference, and so the conversion, are exact without it.
        logger.warning(
            "Marian LayerDrop (encoder %s, decoder %s) is not carried over: the converted model runs every layer "
            "in training too",
            marian_config.encoder_layerdrop,
            marian_config.decoder_layerdrop,
        )
    return VanillaTransformerConfig(
        vocab_size=marian_config.vocab_size,
        d_model=marian_config.d_model,
        encoder_layers=marian_config.encoder_layers,
        decoder_layers=marian_config.decoder_layers,
        encoder_attention_heads=marian_config.encoder_attention_heads,
        decoder_attention_heads=marian_config.decoder_attention_heads,
        num_key_value_heads=None,
        encoder_ffn_dim=marian_config.encoder_ffn_dim,
        decoder_ffn_dim=marian_config.decoder_ffn_dim,
        activation_function=marian_config.activation_function,
        dropout=marian_config.dropout,
        attention_dropout=marian_config.attention_dropout,
        activation_dropout=marian_config.activation_dropout,
        max_position_embeddings=marian_config.max_position_embeddings,
        position_embedding_type="sinusoidal",
        normalize_before=False,  # Marian is post-LN, with no final LayerNorm
        scale_embedding=marian_config.scale_embedding,
        layer_norm_eps=1e-5,  # Marian's nn.LayerNorm default
        lm_head_bias=True,  # carries Marian's final_logits_bias
        init_std=marian_config.init_std,
        tie_word_embeddings=True,
        pad_token_id=marian_config.pad_token_id,
        bos_token_id=marian_config.bos_token_id,
        eos_token_id=_single_token_id("eos_token_id", marian_config.eos_token_id),
        decoder_start_token_id=marian_config.decoder_start_token_id,  # Marian starts decoding with <pad>
        attn_implementation=marian_config._attn_implementation,
    )


def _converted_state_dict(marian: MarianMTModel, config: VanillaTransformerConfig) -> dict[str, torch.Tensor]:
    perm = marian_to_paper_permutation(config.d_model).to(marian.device)
    source = marian.state_dict()

    def columns(name):  # (out, D): a weight reading the residual stream, or the (V, D) embedding table
        return source[name][:, perm]

    def rows(name):  # (D, in) or (D,): a weight or bias writing to the residual stream, a LayerNorm parameter
        return source[name][perm]

    def copied(name):  # no residual axis (head or feed-forward inner dimensions): unchanged
        return source[name]

    def attention(ours: str, theirs: str) -> dict:
        return {
            **{f"{ours}.{p}_proj.weight": columns(f"{theirs}.{p}_proj.weight") for p in "qkv"},
            **{f"{ours}.{p}_proj.bias": copied(f"{theirs}.{p}_proj.bias") for p in "qkv"},
            f"{ours}.o_proj.weight": rows(f"{theirs}.out_proj.weight"),
            f"{ours}.o_proj.bias": rows(f"{theirs}.out_proj.bias"),
        }

    def norm(ours: str, theirs: str) -> dict:
        return {f"{ours}.weight": rows(f"{theirs}.weight"), f"{ours}.bias": rows(f"{theirs}.bias")}

    def ffn(ours: str, theirs: str) -> dict:
        return {
            f"{ours}.fc1.weight": columns(f"{theirs}.fc1.weight"),
            f"{ours}.fc1.bias": copied(f"{theirs}.fc1.bias"),
            f"{ours}.fc2.weight": rows(f"{theirs}.fc2.weight"),
            f"{ours}.fc2.bias": rows(f"{theirs}.fc2.bias"),
        }

    embeddings = columns("model.shared.weight")  # (V, D): row v is token v's vector in the residual stream
    target = {
        "model.encoder.embed_tokens.weight": embeddings,
        "lm_head.weight": embeddings,  # tied
        "lm_head.bias": source["final_logits_bias"][0],
    }
    for side in ("encoder", "decoder"):
        for i in range(getattr(config, f"{side}_layers")):
            layer = f"model.{side}.layers.{i}"  # the same path in both models
            target |= attention(f"{layer}.self_attn", f"{layer}.self_attn")
            target |= norm(f"{layer}.self_attn_norm", f"{layer}.self_attn_layer_norm")
            if side == "decoder":
                target |= attention(f"{layer}.cross_attn", f"{layer}.encoder_attn")
                target |= norm(f"{layer}.cross_attn_norm", f"{layer}.encoder_attn_layer_norm")
            target |= ffn(f"{layer}.ffn", layer)
            target |= norm(f"{layer}.ffn_norm", f"{layer}.final_layer_norm")
    return target


def _check_position_tables(marian: MarianMTModel, model: VanillaTransformerForConditionalGeneration) -> None:
    """Marian stores its sinusoids as weights: make sure they are the standard table we replace with ours."""
    perm = marian_to_paper_permutation(model.config.d_model).to(marian.device)
    ours = model.model.encoder.embed_positions.weight
    for side in ("encoder", "decoder"):
        theirs = getattr(marian.model, side).embed_positions.weight[:, perm]
        if not torch.allclose(theirs.float(), ours.float(), atol=1e-5):
            raise ValueError(
                f"the Marian {side} position table is not the standard sinusoidal table; it cannot be converted "
                "to the paper's fixed positions"
            )


@torch.no_grad()
def convert_marian_to_vanilla(marian: MarianMTModel) -> VanillaTransformerForConditionalGeneration:
    """A `VanillaTransformerForConditionalGeneration` computing the same logits and generations as `marian`.

    The generation settings (`marian.generation_config`: forced end-of-sequence, bad words, beams...) are
    copied too. Raises ValueError for a model or config the vanilla Transformer cannot express.
    """
    if not isinstance(marian, MarianMTModel):
        raise ValueError(f"expected a transformers.MarianMTModel, got {type(marian).__name__}")
    config = vanilla_config_from_marian(marian.config)
    model = VanillaTransformerForConditionalGeneration(config).to(device=marian.device, dtype=marian.dtype)
    _check_position_tables(marian, model)
    model.load_state_dict(_converted_state_dict(marian, config), strict=True)
    model.generation_config = copy.deepcopy(marian.generation_config)
    model.train(marian.training)
    return model


__all__ = ["convert_marian_to_vanilla", "vanilla_config_from_marian", "marian_to_paper_permutation"]
