"""The encoder-decoder Transformer of "Attention Is All You Need" (Vaswani et al. 2017) as a Hugging Face model.

Shapes: B batch, S source length, T target length, D d_model, V vocabulary.

Where the decoder stops looking at the future: `TransformerDecoder.forward` builds the causal mask
(`create_causal_mask`, in the format the attention kernel takes) and runs its layers with `is_causal=True`; the
triangle itself, what that mask holds, is written out in `attention.eager_attention_forward`.
"""

import math
from collections.abc import Callable

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import DynamicCache, EncoderDecoderCache
from transformers.masking_utils import create_bidirectional_mask, create_causal_mask
from transformers.modeling_outputs import (
    BaseModelOutput,
    BaseModelOutputWithPastAndCrossAttentions,
    Seq2SeqLMOutput,
    Seq2SeqModelOutput,
)

from .attention import mask_config
from .beam_cache import SharedRowsCrossAttention
from .compat import cache_argument, cache_field, output_cache
from .configuration_vanilla_transformer import VanillaTransformerConfig
from .embeddings import PositionEmbedding, ScaledEmbedding
from .fast_dropout import Dropout
from .hub import HubFolders
from .inputs import check_batch, check_token_ids, output_options
from .layers import LayerStack
from .losses import token_cross_entropy
from .pipeline_translation import Text2TextGenerationPipeline, TranslationPipeline
from .token_layout import TokenLayout


def shift_tokens_right(labels: torch.Tensor, pad_token_id: int, decoder_start_token_id: int) -> torch.Tensor:
    """Teacher forcing: the decoder reads <start> y1 .. y_{T-1} and predicts y1 .. yT. -100 (ignored) -> pad."""
    decoder_input_ids = labels.new_full(labels.shape, decoder_start_token_id)
    decoder_input_ids[:, 1:] = labels[:, :-1]
    return decoder_input_ids.masked_fill(decoder_input_ids == -100, pad_token_id)


def target_prefix_mask(labels: torch.Tensor) -> torch.Tensor:
    """(B, T) mask of the target positions up to each row's last label (the padding after it carries no loss).

    Used as the decoder attention mask in teacher forcing, it changes no output that the loss reads: under the
    causal mask a position never sees the ones after it. It lets the decoder skip the padding (`token_layout.py`).
    """
    positions = torch.arange(1, labels.shape[1] + 1, device=labels.device)  # (T,)
    last = ((labels != -100) * positions).amax(dim=1, keepdim=True)  # (B, 1): 1-based position of the last label
    return (positions <= last).long()


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


class VanillaTransformerPreTrainedModel(HubFolders, PreTrainedModel):
    config_class = VanillaTransformerConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["TransformerLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _can_compile_fullgraph = False  # the input checks read tensor values

    @staticmethod
    def hub_auto_classes() -> dict[str, type]:
        """What a saved folder's auto_map names, whichever class is saved (`hub.py`)."""
        return {
            "AutoConfig": VanillaTransformerConfig,
            "AutoModel": VanillaTransformerModel,
            "AutoModelForSeq2SeqLM": VanillaTransformerForConditionalGeneration,
        }

    @staticmethod
    def hub_pipelines() -> dict[str, type]:
        """The pipelines transformers 5 removed, which a saved folder declares in config.json's custom_pipelines and
        carries beside the model files: imported by this module, their module is copied with it (`hub.py`)."""
        return {"translation": TranslationPipeline, "text2text-generation": Text2TextGenerationPipeline}

    @torch.no_grad()
    def _init_weights(self, module):
        """Xavier-uniform linear layers (as torch.nn.Transformer), N(0, d_model**-0.5) embeddings, which the
        sqrt(d_model) input scaling brings to unit variance (the paper does not specify its initialisation)."""
        std = self.config.init_std or self.config.d_model**-0.5
        if isinstance(module, nn.Linear):
            init.xavier_uniform_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.padding_idx is not None and not getattr(module.weight, "_is_hf_initialized", False):
                init.zeros_(module.weight[module.padding_idx])
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, PositionEmbedding):
            module.reset_parameters(std)


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


class VanillaTransformerModel(VanillaTransformerPreTrainedModel):
    """Encoder and decoder, without the output projection: returns the decoder's last hidden states."""

    def __init__(self, config: VanillaTransformerConfig):
        super().__init__(config)
        self.encoder = TransformerEncoder(config)
        self.decoder = TransformerDecoder(config, embed=self.encoder.embed)  # the one table, the encoder's
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.encoder.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.encoder.embed_tokens = value

    def get_encoder(self, modality: str | None = None) -> TransformerEncoder:
        return self.encoder

    def get_decoder(self) -> TransformerDecoder:
        return self.decoder

    def forward(
        self,
        input_ids: torch.Tensor | None = None,  # (B, S)
        attention_mask: torch.Tensor | None = None,  # (B, S)
        decoder_input_ids: torch.Tensor | None = None,  # (B, T)
        decoder_attention_mask: torch.Tensor | None = None,  # (B, T)
        encoder_outputs: BaseModelOutput | tuple | None = None,
        cache: EncoderDecoderCache | None = None,  # `generate` passes it as `cache` (transformers >= 5.24) ...
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        past_key_values: EncoderDecoderCache | None = None,  # ... or as `past_key_values` (earlier releases)
    ) -> Seq2SeqModelOutput | tuple:
        cache = cache_argument(cache, past_key_values)
        use_cache = self.config.use_cache if use_cache is None else use_cache
        output_attentions, output_hidden_states, return_dict = output_options(
            self.config, output_attentions, output_hidden_states, return_dict
        )
        if encoder_outputs is None:
            encoder_outputs = self.encoder(
                input_ids=input_ids,
                attention_mask=attention_mask,
                inputs_embeds=inputs_embeds,
                output_attentions=output_attentions,
                output_hidden_states=output_hidden_states,
                return_dict=True,
            )
        elif not isinstance(encoder_outputs, BaseModelOutput):
            encoder_outputs = BaseModelOutput(*encoder_outputs)

        decoder = self.decoder(
            input_ids=decoder_input_ids,
            attention_mask=decoder_attention_mask,
            encoder_hidden_states=encoder_outputs.last_hidden_state,
            encoder_attention_mask=attention_mask,
            cache=cache,
            inputs_embeds=decoder_inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        output = Seq2SeqModelOutput(
            last_hidden_state=decoder.last_hidden_state,
            **cache_field(output_cache(decoder)),
            decoder_hidden_states=decoder.hidden_states,
            decoder_attentions=decoder.attentions,
            cross_attentions=decoder.cross_attentions,
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            encoder_hidden_states=encoder_outputs.hidden_states,
            encoder_attentions=encoder_outputs.attentions,
        )
        return output if return_dict else output.to_tuple()


class VanillaTransformerForConditionalGeneration(VanillaTransformerPreTrainedModel, GenerationMixin):
    """The Transformer with its pre-softmax projection, tied to the embeddings (section 3.4): for translation."""

    _tied_weights_keys = {"lm_head.weight": "model.encoder.embed_tokens.weight"}
    # forward reduces the loss over `num_items_in_batch` when Trainer passes it (gradient accumulation)
    accepts_loss_kwargs = True

    def __init__(self, config: VanillaTransformerConfig):
        super().__init__(config)
        self.model = VanillaTransformerModel(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=config.lm_head_bias)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.encoder.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.encoder.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def get_encoder(self, modality: str | None = None) -> TransformerEncoder:
        return self.model.encoder

    def get_decoder(self) -> TransformerDecoder:
        return self.model.decoder

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """Used by DataCollatorForSeq2Seq(tokenizer, model=model) to build decoder inputs."""
        return shift_tokens_right(labels, self.config.pad_token_id, self.config.decoder_start_token_id)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,  # (B, S)
        attention_mask: torch.Tensor | None = None,  # (B, S)
        decoder_input_ids: torch.Tensor | None = None,  # (B, T)
        decoder_attention_mask: torch.Tensor | None = None,  # (B, T)
        encoder_outputs: BaseModelOutput | tuple | None = None,
        cache: EncoderDecoderCache | None = None,  # `generate` passes it as `cache` (transformers >= 5.24) ...
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,  # (B, T), -100 = ignored
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        # Label smoothing epsilon_ls (section 5.4). Not named `label_smoothing`: Trainer takes every forward argument
        # whose name contains "label" for a label column, and would then evaluate without labels (no loss).
        smoothing: float = 0.0,
        num_items_in_batch: int | torch.Tensor | None = None,
        past_key_values: EncoderDecoderCache | None = None,  # ... or as `past_key_values` (earlier releases)
    ) -> Seq2SeqLMOutput | tuple:
        cache = cache_argument(cache, past_key_values)
        output_attentions, output_hidden_states, return_dict = output_options(
            self.config, output_attentions, output_hidden_states, return_dict
        )
        if labels is not None:
            self._check_labels(labels, input_ids, decoder_input_ids)
            use_cache = False  # teacher forcing: the whole target in one parallel pass, nothing to cache
            if decoder_input_ids is None and decoder_inputs_embeds is None:
                decoder_input_ids = self.prepare_decoder_input_ids_from_labels(labels)
            if decoder_attention_mask is None and self.config.skip_padding:
                decoder_attention_mask = target_prefix_mask(labels)
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask,
            encoder_outputs=encoder_outputs,
            cache=cache,
            inputs_embeds=inputs_embeds,
            decoder_inputs_embeds=decoder_inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        logits = self.lm_head(outputs.last_hidden_state)  # (B, T, V)
        loss = None
        if labels is not None:
            loss = seq2seq_loss(logits, labels, smoothing, num_items_in_batch)
        output = Seq2SeqLMOutput(
            loss=loss,
            logits=logits,
            **cache_field(output_cache(outputs)),
            decoder_hidden_states=outputs.decoder_hidden_states,
            decoder_attentions=outputs.decoder_attentions,
            cross_attentions=outputs.cross_attentions,
            encoder_last_hidden_state=outputs.encoder_last_hidden_state,
            encoder_hidden_states=outputs.encoder_hidden_states,
            encoder_attentions=outputs.encoder_attentions,
        )
        return output if return_dict else output.to_tuple()

    def _reorder_cache(self, cache: EncoderDecoderCache | None, beam_idx: torch.Tensor):
        """Beam search, after each step: the surviving beams' self-attention keys/values, in their new order.

        `generate` lays a sentence's beams out as consecutive rows of one encoder output (repeated), and a beam is
        only ever replaced by a beam of the same sentence. The cross-attention keys/values are a function of the
        encoder output alone, equal on every row of a sentence (cached once per sentence, `beam_cache.py`,
        with the sdpa and eager kernels): reordering them, what the default does, would copy equal rows onto each
        other. They are left as they are.
        """
        if cache is not None:  # None: generating without a cache
            cache.self_attention_cache.reorder_cache(beam_idx)
        return cache

    def _check_labels(self, labels, input_ids, decoder_input_ids) -> None:
        if labels.dim() != 2:
            raise ValueError(
                f"labels must be (batch, target_length) token ids, got shape {tuple(labels.shape)}; "
                "tokenize targets with tokenizer(text_target=...) and pad them with -100"
            )
        if input_ids is not None and labels.shape[0] != input_ids.shape[0]:
            raise ValueError(
                f"labels hold {labels.shape[0]} sequences but input_ids hold {input_ids.shape[0]}: one target per source"
            )
        if decoder_input_ids is not None and decoder_input_ids.shape != labels.shape:
            raise ValueError(
                f"decoder_input_ids {tuple(decoder_input_ids.shape)} and labels {tuple(labels.shape)} must have the "
                "same shape (labels[t] is the token predicted after reading decoder_input_ids[:t+1]); "
                "pass labels alone and the model shifts them right"
            )
        if not torch.compiler.is_compiling():
            valid = labels[labels != -100]
            if valid.numel() and (int(valid.min()) < 0 or int(valid.max()) >= self.config.vocab_size):
                raise ValueError(
                    f"labels contain ids outside the vocabulary of {self.config.vocab_size}; "
                    "use -100 for positions to ignore"
                )


def seq2seq_loss(
    logits: torch.Tensor,  # (B, T, V)
    labels: torch.Tensor,  # (B, T)
    label_smoothing: float = 0.0,
    num_items_in_batch: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy of each target token (no shift: the decoder input is already shifted), -100 ignored, averaged
    over the target tokens; with `num_items_in_batch` (Trainer under gradient accumulation) summed and divided by the
    token count of the whole accumulated batch, so that accumulated steps equal one big step. 0 for a batch without
    a target token (`losses.token_cross_entropy`)."""
    return token_cross_entropy(logits, labels, num_items_in_batch, label_smoothing)


__all__ = [
    "VanillaTransformerPreTrainedModel",
    "VanillaTransformerModel",
    "VanillaTransformerForConditionalGeneration",
    "shift_tokens_right",
]
