"""The encoder-decoder Transformer of "Attention Is All You Need" (Vaswani et al. 2017) as a Hugging Face model.

Shapes: B batch, S source length, T target length, D d_model, V vocabulary.

The encoder and decoder stacks are in `transformer_stacks.py`, with the place where the decoder stops looking at the
future (`TransformerDecoder.forward`, the causal mask); the triangle itself is written out in
`attention.eager_attention_forward`.
"""

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import EncoderDecoderCache
from transformers.modeling_outputs import BaseModelOutput, Seq2SeqLMOutput, Seq2SeqModelOutput

from .compat import cache_argument, cache_field, output_cache
from .configuration_vanilla_transformer import VanillaTransformerConfig
from .embeddings import PositionEmbedding
from .hub import HubFolders
from .inputs import check_generation, check_tensor, output_options
from .layers import LayerStackSupport
from .losses import token_cross_entropy
from .pipeline_translation import Text2TextGenerationPipeline, TranslationPipeline
from .transformer_stacks import TransformerDecoder, TransformerEncoder


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


class VanillaTransformerPreTrainedModel(HubFolders, LayerStackSupport, PreTrainedModel):
    config_class = VanillaTransformerConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"

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

    def generate(self, inputs=None, generation_config=None, *args, **kwargs):
        """`GenerationMixin.generate`, after `inputs.check_generation`: a beam wider than the vocabulary, or more
        new tokens than the target positions, is refused before decoding starts."""
        generation = generation_config if generation_config is not None else self.generation_config
        check_generation(self.config, generation, kwargs, inputs)
        return super().generate(inputs, generation_config, *args, **kwargs)

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
        check_tensor(labels, "labels")
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
