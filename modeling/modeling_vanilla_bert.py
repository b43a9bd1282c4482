"""BERT (Devlin et al. 2019) built from the Transformer's parts: the encoder stack of "Attention Is All You Need"
(post-LN `LayerStack` of `TransformerLayer`s from `layers.py`) under BERT's embeddings, with BERT's heads.

Shapes: B batch, T sequence length, D hidden size, V vocabulary, C classes (num_labels), N masked positions.

What BERT adds to the Transformer encoder: learned positions (section 3.5 of the Transformer paper mentions them
as an alternative), segment (token type) embeddings for sentence pairs, a LayerNorm on the embedding sum, GELU,
a pooler (tanh of a projection of the [CLS] vector) and the masked-language-model head, those layers in
`bert_layers.py`. Attention is bidirectional: the one mask is the padding mask, built once per forward in
`VanillaBertModel.forward`.
"""

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_outputs import (
    BaseModelOutputWithPooling,
    MaskedLMOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)

from .attention import mask_config
from .bert_layers import MaskedLMHead, VanillaBertEmbeddings, VanillaBertPooler, VocabularyProjection
from .configuration_vanilla_bert import VanillaBertConfig
from .embeddings import PositionEmbedding
from .fast_dropout import Dropout
from .hub import HubFolders
from .inputs import check_batch, check_length, check_tensor, check_token_ids, output_options
from .layers import LayerStack, LayerStackSupport
from .losses import token_cross_entropy
from .token_layout import TokenLayout


def check_label_ids(labels: torch.Tensor, num_ids: int, what: str, hint: str) -> None:
    """Label ids must lie in 0 .. num_ids-1 (-100 = ignored): otherwise say so, instead of an index error or a
    device-side assert. One device sync."""
    if torch.compiler.is_compiling() or labels.numel() == 0:
        return
    low, high = (int(bound) for bound in torch.aminmax(labels.where(labels != -100, 0)))
    if low < 0 or high >= num_ids:
        raise ValueError(f"labels contain {what} {high if high >= num_ids else low}, but {hint}")


def class_id_hint(num_labels: int) -> str:
    return (
        f"the model has num_labels={num_labels} (classes 0..{num_labels - 1}, -100 = ignored); build it with the "
        "dataset's number of classes: from_pretrained(path, num_labels=..., id2label=..., label2id=...)"
    )


class VanillaBertPreTrainedModel(HubFolders, LayerStackSupport, PreTrainedModel):
    config_class = VanillaBertConfig
    base_model_prefix = "bert"
    main_input_name = "input_ids"

    @staticmethod
    def hub_auto_classes() -> dict[str, type]:
        """What a saved folder's auto_map names, whichever head is saved (`hub.py`)."""
        return {
            "AutoConfig": VanillaBertConfig,
            "AutoModel": VanillaBertModel,
            "AutoModelForMaskedLM": VanillaBertForMaskedLM,
            "AutoModelForSequenceClassification": VanillaBertForSequenceClassification,
            "AutoModelForTokenClassification": VanillaBertForTokenClassification,
        }

    @torch.no_grad()
    def _init_weights(self, module):
        """BERT's initialisation: N(0, initializer_range) matrices and embeddings, zero biases, unit LayerNorms."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
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
            module.reset_parameters(std)  # also refills the sinusoidal table after a meta-device load


class VanillaBertModel(VanillaBertPreTrainedModel):
    """Embeddings, the Transformer encoder stack, and (unless `add_pooling_layer=False`) the [CLS] pooler."""

    def __init__(self, config: VanillaBertConfig, add_pooling_layer: bool = True):
        super().__init__(config)
        self.embeddings = VanillaBertEmbeddings(config)
        self.encoder = LayerStack(
            num_layers=config.num_hidden_layers,
            normalize_before=config.normalize_before,
            hidden_size=config.hidden_size,
            num_heads=config.num_attention_heads,
            num_key_value_heads=config.num_key_value_heads or config.num_attention_heads,
            ffn_dim=config.intermediate_size,
            activation=config.hidden_act,
            dropout=config.hidden_dropout_prob,
            attention_dropout=config.attention_probs_dropout_prob,
            activation_dropout=0.0,  # BERT has no dropout inside the feed-forward network
            layer_norm_eps=config.layer_norm_eps,
            cross_attention=None,  # an encoder: no attention over another sequence
            config=config,
        )
        self.pooler = VanillaBertPooler(config.hidden_size) if add_pooling_layer else None
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings.embed_tokens = value

    def forward(
        self,
        input_ids: torch.Tensor | None = None,  # (B, T)
        attention_mask: torch.Tensor | None = None,  # (B, T), 1 = token, 0 = padding
        token_type_ids: torch.Tensor | None = None,  # (B, T)
        inputs_embeds: torch.Tensor | None = None,  # (B, T, D)
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        output_positions: torch.Tensor | None = None,  # (M,) flat indices into the (B * T) grid
    ) -> BaseModelOutputWithPooling | tuple:
        """With `output_positions`, only those positions' final hidden states are computed (the last layer's
        output projection and feed-forward run on them alone; the values are the same): `last_hidden_state` is then
        (M, D) and there is no `pooler_output`. The MLM head asks for its masked positions this way."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        output_attentions, output_hidden_states, return_dict = output_options(
            self.config, output_attentions, output_hidden_states, return_dict
        )
        if output_positions is not None and output_hidden_states:
            raise ValueError("output_positions returns the final hidden states at some positions only; it cannot "
                             "be combined with output_hidden_states")
        check_token_ids(input_ids, self.embeddings.embed_tokens.num_embeddings)
        check_tensor(inputs_embeds, "inputs_embeds")
        check_tensor(token_type_ids, "token_type_ids")
        shape = (input_ids if input_ids is not None else inputs_embeds).shape
        what = "input_ids" if input_ids is not None else "inputs_embeds"
        check_batch(shape, attention_mask, what)
        check_length(shape[1], self.config.max_position_embeddings, what)
        if token_type_ids is not None and token_type_ids.shape != shape[:2]:
            raise ValueError(
                f"token_type_ids has shape {tuple(token_type_ids.shape)}, expected {tuple(shape[:2])}: one segment id "
                "per token (make both in the same tokenizer call)"
            )
        hidden_states = self.embeddings(input_ids, token_type_ids, inputs_embeds)  # (B, T, D)
        # Bidirectional: every token sees every non-padding token. None (sdpa, no padding) = attend everywhere.
        padding_mask = create_bidirectional_mask(mask_config(self.config, output_attentions), hidden_states, attention_mask)
        stack = self.encoder(
            hidden_states,
            attention_mask=padding_mask,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            layout=TokenLayout.for_batch(attention_mask, self.config.skip_padding, output_positions),
        )
        pool = self.pooler is not None and output_positions is None
        output = BaseModelOutputWithPooling(
            last_hidden_state=stack.last_hidden_state,
            pooler_output=self.pooler(stack.last_hidden_state) if pool else None,
            hidden_states=stack.hidden_states,
            attentions=stack.attentions,
        )
        return output if return_dict else output.to_tuple()


class VanillaBertForMaskedLM(VanillaBertPreTrainedModel):
    """BERT with the masked-language-model head (pre-training objective 1; no next-sentence prediction)."""

    _tied_weights_keys = {"lm_head.decoder.weight": "bert.embeddings.embed_tokens.weight"}
    # forward reduces the loss over `num_items_in_batch` when Trainer passes it (gradient accumulation)
    accepts_loss_kwargs = True

    def __init__(self, config: VanillaBertConfig):
        super().__init__(config)
        self.bert = VanillaBertModel(config, add_pooling_layer=False)
        self.lm_head = MaskedLMHead(config.hidden_size, config.vocab_size, config.hidden_act, config.layer_norm_eps)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head.decoder

    def set_output_embeddings(self, value: nn.Linear) -> None:
        if type(value) is nn.Linear:
            # resize_token_embeddings builds a plain Linear for an untied head. VocabularyProjection adds no state to
            # nn.Linear, only the fused loss in its forward, so the module becomes one in place: its parameters and
            # what transformers marked on it (_is_hf_initialized: post_init must not re-initialise it) stay.
            value.__class__ = VocabularyProjection
        self.lm_head.decoder = value

    def forward(
        self,
        input_ids: torch.Tensor | None = None,  # (B, T)
        attention_mask: torch.Tensor | None = None,  # (B, T)
        token_type_ids: torch.Tensor | None = None,  # (B, T)
        inputs_embeds: torch.Tensor | None = None,  # (B, T, D)
        labels: torch.Tensor | None = None,  # (B, T): original ids at masked positions, -100 elsewhere
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        num_items_in_batch: int | torch.Tensor | None = None,
    ) -> MaskedLMOutput | tuple:
        output_attentions, output_hidden_states, return_dict = output_options(
            self.config, output_attentions, output_hidden_states, return_dict
        )
        masked = None
        if labels is not None:
            for name, value in (("labels", labels), ("input_ids", input_ids), ("inputs_embeds", inputs_embeds)):
                check_tensor(value, name)
            shape = (input_ids if input_ids is not None else inputs_embeds).shape[:2]
            if labels.shape != shape:
                raise ValueError(f"labels {tuple(labels.shape)} must have the shape of the input {tuple(shape)}")
            vocab_size = self.config.vocab_size
            check_label_ids(labels, vocab_size, "token id", f"the vocabulary has {vocab_size} ids (-100 = ignored)")
            if self.config.sparse_prediction:
                # Only masked positions carry a loss: project only those onto the vocabulary (~15% of the tokens).
                masked = (labels != -100).flatten().nonzero().squeeze(1)  # (N,) flat indices of masked positions
                labels = labels.flatten()[masked]  # (N,)
        # The encoder's last layer computes its output at the masked positions only (same values there), unless
        # every layer's hidden states are asked for.
        outputs = self.bert(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            inputs_embeds=inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            output_positions=None if output_hidden_states else masked,
            return_dict=True,
        )
        hidden_states = outputs.last_hidden_state  # (B, T, D), or (N, D) at the masked positions
        if masked is not None and output_hidden_states:
            hidden_states = hidden_states.flatten(0, 1)[masked]  # (N, D)
        loss = None
        chunked = masked is not None and masked.numel() > 0 and not torch.compiler.is_compiling()
        chunked = chunked and isinstance(self.lm_head.decoder, VocabularyProjection)  # (a user's own head: not)
        if chunked and not torch.is_autocast_enabled(hidden_states.device.type):
            # Sparse prediction: the projection onto the vocabulary and the loss together, chunk by chunk (the
            # same values, faster on CPU, no log-softmax tensor); under autocast the usual path keeps its casts.
            loss, logits = self.lm_head.loss_and_logits(hidden_states, labels)  # sum over the N masked positions
            if torch.is_tensor(num_items_in_batch):  # Trainer's count of target tokens over accumulated batches
                num_items_in_batch = num_items_in_batch.to(loss.device)
            loss = loss / (labels.numel() if num_items_in_batch is None else num_items_in_batch)
        else:
            logits = self.lm_head(hidden_states)  # (B, T, V), or (N, V) with sparse prediction
            if labels is not None:
                loss = token_cross_entropy(logits, labels, num_items_in_batch)  # 0 when nothing is masked
        output = MaskedLMOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
        return output if return_dict else output.to_tuple()


def mean_over_tokens(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """(B, T, D) -> (B, D): each row's average over its real tokens (attention_mask 1; all of them without a mask),
    as sentence-transformers' mean pooling. A row without real tokens gives 0."""
    if attention_mask is None:
        return hidden.mean(dim=1)
    if attention_mask.dim() != 2:
        raise ValueError(
            f"classifier_pooling='mean' averages over the real tokens of a (batch, length) attention mask; got a mask "
            f"of shape {tuple(attention_mask.shape)}: pass the tokenizer's attention_mask"
        )
    weights = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


class VanillaBertForSequenceClassification(VanillaBertPreTrainedModel):
    """BERT with a linear classifier (or regressor) on the pooled [CLS] vector, or on the mean of the last hidden
    states over the real tokens (`config.classifier_pooling`)."""

    def __init__(self, config: VanillaBertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = VanillaBertModel(config)
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,  # (B, T)
        attention_mask: torch.Tensor | None = None,  # (B, T)
        token_type_ids: torch.Tensor | None = None,  # (B, T)
        inputs_embeds: torch.Tensor | None = None,  # (B, T, D)
        labels: torch.Tensor | None = None,  # (B,) class ids, (B,) / (B, C) floats for regression, (B, C) multi-label
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> SequenceClassifierOutput | tuple:
        output_attentions, output_hidden_states, return_dict = output_options(
            self.config, output_attentions, output_hidden_states, return_dict
        )
        outputs = self.bert(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            inputs_embeds=inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        if self.config.classifier_pooling == "mean":
            pooled = mean_over_tokens(outputs.last_hidden_state, attention_mask)
        else:
            pooled = outputs.pooler_output
        logits = self.classifier(self.dropout(pooled))  # (B, C)
        loss = None
        if labels is not None:
            # transformers' rule: regression if num_labels == 1, else single-label for integer labels, else
            # multi-label; the choice is stored in config.problem_type on first use.
            if self._check_labels(labels, logits.shape[0]) == "single_label_classification":
                self.config.problem_type = "single_label_classification"
                loss = token_cross_entropy(logits, labels.view(-1))  # -100 = ignored; 0 for a batch of only those
            else:
                loss = self.loss_function(labels=labels, pooled_logits=logits, config=self.config)
        output = SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
        return output if return_dict else output.to_tuple()

    def _check_labels(self, labels: torch.Tensor, batch_size: int) -> str:
        """Raise a clear error for labels the problem type cannot take; return the problem type."""
        check_tensor(labels, "labels")
        num_labels, problem_type = self.num_labels, self.config.problem_type
        if problem_type is None:  # the same inference as transformers' ForSequenceClassificationLoss
            if num_labels == 1:
                problem_type = "regression"
            elif labels.dtype in (torch.long, torch.int):
                problem_type = "single_label_classification"
            else:
                problem_type = "multi_label_classification"
        if problem_type == "single_label_classification":
            if labels.numel() != batch_size:
                raise ValueError(
                    f"single-label classification takes one class id per sequence ({batch_size}), got labels of shape "
                    f"{tuple(labels.shape)}; for multi-label targets pass float (batch, num_labels) labels"
                )
            check_label_ids(labels, num_labels, "class id", class_id_hint(num_labels))
        elif problem_type == "multi_label_classification":
            if labels.shape != (batch_size, num_labels):
                raise ValueError(
                    f"multi-label classification takes (batch, num_labels) = ({batch_size}, {num_labels}) 0/1 float "
                    f"targets, got labels of shape {tuple(labels.shape)}; for one class per sequence pass integer "
                    "class ids (torch.long), or build the model with num_labels matching the target width"
                )
        elif labels.numel() != batch_size * num_labels:
            raise ValueError(
                f"regression with num_labels={num_labels} takes {num_labels} value(s) per sequence, got labels of "
                f"shape {tuple(labels.shape)} for a batch of {batch_size}"
            )
        return problem_type


class VanillaBertForTokenClassification(VanillaBertPreTrainedModel):
    """BERT with a linear classifier on every token's final hidden state (NER, POS tagging)."""

    accepts_loss_kwargs = True  # forward reduces the loss over `num_items_in_batch` (gradient accumulation)

    def __init__(self, config: VanillaBertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = VanillaBertModel(config, add_pooling_layer=False)
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,  # (B, T)
        attention_mask: torch.Tensor | None = None,  # (B, T)
        token_type_ids: torch.Tensor | None = None,  # (B, T)
        inputs_embeds: torch.Tensor | None = None,  # (B, T, D)
        labels: torch.Tensor | None = None,  # (B, T) class ids, -100 = ignored (padding, continuation pieces)
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        num_items_in_batch: int | torch.Tensor | None = None,
    ) -> TokenClassifierOutput | tuple:
        output_attentions, output_hidden_states, return_dict = output_options(
            self.config, output_attentions, output_hidden_states, return_dict
        )
        outputs = self.bert(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            inputs_embeds=inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        logits = self.classifier(self.dropout(outputs.last_hidden_state))  # (B, T, C)
        loss = None
        if labels is not None:
            check_tensor(labels, "labels")
            if labels.shape != logits.shape[:2]:
                raise ValueError(
                    f"labels {tuple(labels.shape)} must hold one class id per token {tuple(logits.shape[:2])}, -100 "
                    "where no label applies"
                )
            check_label_ids(labels, self.num_labels, "class id", class_id_hint(self.num_labels))
            loss = token_cross_entropy(logits, labels, num_items_in_batch)  # 0 when no token is labelled
        output = TokenClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
        return output if return_dict else output.to_tuple()


__all__ = [
    "VanillaBertPreTrainedModel",
    "VanillaBertModel",
    "VanillaBertForMaskedLM",
    "VanillaBertForSequenceClassification",
    "VanillaBertForTokenClassification",
]
