"""The encoder and decoder stacks of "Attention Is All You Need" (Vaswani et al. 2017), section 3.1 and figure 1:
embeddings plus positions, then N layers (`layers.py`). `modeling_vanilla_transformer.py` puts them together.

Shapes: B batch, S source length, T target length, D d_model.

Where the decoder stops looking at the future: `TransformerDecoder.forward` builds the causal mask
(`create_causal_mask`, in the format the attention kernel takes) and runs its layers with `is_causal=True`; the
triangle itself, what that mask holds, is written out in `attention.eager_attention_forward`.
"""

import math
from collections.abc import Callable

import torch
from transformers.cache_utils import DynamicCache, EncoderDecoderCache
from transformers.masking_utils import create_bidirectional_mask, create_causal_mask
from transformers.modeling_outputs import BaseModelOutput, BaseModelOutputWithPastAndCrossAttentions

from .attention import mask_config
from .beam_cache import SharedRowsCrossAttention
from .compat import cache_argument, cache_field
from .configuration_vanilla_transformer import VanillaTransformerConfig
from .embeddings import PositionEmbedding, ScaledEmbedding
from .fast_dropout import Dropout
from .inputs import check_batch, check_token_ids, output_options
from .layers import LayerStack
from .token_layout import TokenLayout


def layer_args(config: VanillaTransformerConfig, side: str) -> dict:
    """The per-layer numbers of one stack ("encoder" or "decoder"), read from the config in one place."""
    heads = getattr(config, f"{side}_attention_heads")
    return dict(
        num_layers=getattr(config, f"{side}_layers"),
        hidden_size=config.d_model,
        num_heads=heads,
        num_key_value_heads=config.num_key_value_heads or heads,
        ffn_dim=getattr(config, f"{side}_ffn_dim"),
        activation=config.activation_function,
        dropout=config.dropout,
        attention_dropout=config.attention_dropout,
        activation_dropout=config.activation_dropout,
        layer_norm_eps=config.layer_norm_eps,
        normalize_before=config.normalize_before,
        # the decoder attends to the encoder output, caching it once per sentence in beam search (beam_cache.py)
        cross_attention=SharedRowsCrossAttention if side == "decoder" else None,
        config=config,
    )


class TransformerEncoder(LayerStack):
    """Token embeddings (the one shared source/target table) + positions, then N encoder layers."""

    def __init__(self, config: VanillaTransformerConfig):
        super().__init__(**layer_args(config, "encoder"))
        self.config = config
        self.embed_tokens = ScaledEmbedding(  # token embeddings times sqrt(d_model) (section 3.4)
            config.vocab_size,
            config.d_model,
            padding_idx=config.pad_token_id,
            scale=math.sqrt(config.d_model) if config.scale_embedding else 1.0,
        )
        self.embed_positions = PositionEmbedding(
            config.max_position_embeddings, config.d_model, config.position_embedding_type
        )
        self.dropout = Dropout(config.dropout)  # on the sums of embeddings and positions (section 5.4)

    def embed(self, input_ids: torch.Tensor, name: str = "input_ids") -> torch.Tensor:
        """Token embeddings times sqrt(d_model); the decoder reads the same table."""
        check_token_ids(input_ids, self.embed_tokens.num_embeddings, name)  # the table's size survives a resize
        return self.embed_tokens(input_ids)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,  # (B, S)
        attention_mask: torch.Tensor | None = None,  # (B, S), 1 = token, 0 = padding
        inputs_embeds: torch.Tensor | None = None,  # (B, S, D), already scaled: get_input_embeddings()(ids)
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> BaseModelOutput | tuple:
        output_attentions, output_hidden_states, return_dict = output_options(
            self.config, output_attentions, output_hidden_states, return_dict
        )
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds to the encoder")
        if inputs_embeds is None:
            inputs_embeds = self.embed(input_ids)
        check_batch(inputs_embeds.shape, attention_mask, "input_ids" if input_ids is not None else "inputs_embeds")
        padding_mask = create_bidirectional_mask(mask_config(self.config, output_attentions), inputs_embeds, attention_mask)
        stack = super().forward(
            # (B, S, D). Not bound to a name here: the stack lets go of it after the first layer (memory).
            self.dropout(inputs_embeds + self.embed_positions(inputs_embeds.shape[1], dtype=inputs_embeds.dtype)),
            attention_mask=padding_mask,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            layout=TokenLayout.for_batch(attention_mask, self.config.skip_padding),
        )
        output = BaseModelOutput(
            last_hidden_state=stack.last_hidden_state,
            hidden_states=stack.hidden_states,
            attentions=stack.attentions,
        )
        return output if return_dict else output.to_tuple()


class TransformerDecoder(LayerStack):
    """Positions, then N decoder layers: masked self-attention, cross-attention over the encoder output, FFN.

    There is one vocabulary table, the encoder's (section 3.4): the decoder embeds `input_ids` with the function it
    is given (`TransformerEncoder.embed`), a reference rather than a module of its own, so the table has one
    checkpoint key. Its forward is a standard Hugging Face decoder's, what `get_decoder()` users (export wrappers,
    adapters) call.
    """

    def __init__(self, config: VanillaTransformerConfig, embed: Callable[[torch.Tensor, str], torch.Tensor]):
        super().__init__(**layer_args(config, "decoder"))
        self.config = config
        self.embed = embed
        self.embed_positions = PositionEmbedding(
            config.max_position_embeddings, config.d_model, config.position_embedding_type
        )
        self.dropout = Dropout(config.dropout)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,  # (B, T)
        attention_mask: torch.Tensor | None = None,  # (B, past + T), 1 = token, 0 = padding
        encoder_hidden_states: torch.Tensor | None = None,  # (B, S, D)
        encoder_attention_mask: torch.Tensor | None = None,  # (B, S)
        cache: EncoderDecoderCache | None = None,  # named `past_key_values` before transformers 5.24
        inputs_embeds: torch.Tensor | None = None,  # (B, T, D), already scaled: get_input_embeddings()(ids)
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        past_key_values: EncoderDecoderCache | None = None,
    ) -> BaseModelOutputWithPastAndCrossAttentions | tuple:
        cache = cache_argument(cache, past_key_values)
        use_cache = self.config.use_cache if use_cache is None else use_cache
        output_attentions, output_hidden_states, return_dict = output_options(
            self.config, output_attentions, output_hidden_states, return_dict
        )
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError(
                "pass exactly one of decoder_input_ids and decoder_inputs_embeds (or pass labels to "
                "VanillaTransformerForConditionalGeneration, which shifts them right into decoder_input_ids)"
            )
        if inputs_embeds is None:
            inputs_embeds = self.embed(input_ids, "decoder_input_ids")
        if use_cache and cache is None:
            cache = EncoderDecoderCache(DynamicCache(config=self.config), DynamicCache(config=self.config))
        if cache is not None and not isinstance(cache, EncoderDecoderCache):
            raise TypeError(
                f"the cache must be an EncoderDecoderCache (self- and cross-attention), got "
                f"{type(cache).__name__}; let generate() build it, or pass "
                "EncoderDecoderCache(DynamicCache(), DynamicCache())"
            )
        past_length = cache.get_seq_length() if cache is not None else 0
        what = "decoder_input_ids" if input_ids is not None else "decoder_inputs_embeds"
        check_batch(inputs_embeds.shape, attention_mask, what, past_length)
        if encoder_hidden_states is not None:
            check_batch(encoder_hidden_states.shape, encoder_attention_mask, "the encoder output (input_ids)")

        masks_for = mask_config(self.config, output_attentions)
        # Position t may attend to positions <= t only: the decoder never sees the future (section 3.2.3).
        causal_mask = create_causal_mask(  # the cache positionally: named `past_key_values` before 5.24, `cache` since
            masks_for,
            inputs_embeds,
            attention_mask,
            cache.self_attention_cache if cache is not None else None,
        )
        memory_mask = create_bidirectional_mask(
            masks_for, inputs_embeds, encoder_attention_mask, encoder_hidden_states=encoder_hidden_states
        )
        stack = super().forward(
            # (B, T, D). Not bound to a name here: the stack lets go of it after the first layer (memory).
            self.dropout(inputs_embeds + self.embed_positions(inputs_embeds.shape[1], past_length, inputs_embeds.dtype)),
            attention_mask=causal_mask,
            encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=memory_mask,
            is_causal=True,
            cache=cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            # Teacher forcing: no work on padding. Decoding with a cache: one position per step, nothing to drop.
            layout=TokenLayout.for_batch(attention_mask, self.config.skip_padding and cache is None),
        )
        output = BaseModelOutputWithPastAndCrossAttentions(
            last_hidden_state=stack.last_hidden_state,
            **cache_field(cache if use_cache else None),
            hidden_states=stack.hidden_states,
            attentions=stack.attentions,
            cross_attentions=stack.cross_attentions,
        )
        return output if return_dict else output.to_tuple()
