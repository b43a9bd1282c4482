"""The layers both model families are built from, "Attention Is All You Need" (Vaswani et al. 2017), section 3:
the position-wise feed-forward network, the encoder/decoder layer with its residuals and norms, the stack of N layers,
and what transformers may do with a model built on them (`LayerStackSupport`).

Shapes: B batch, T target (or sequence) length, S source length, D model width (d_model). Between layers the
hidden states are (B, T, D), or with `skip_padding` the (N, D) rows of the N real tokens (`token_layout.py`).
"""

from typing import NamedTuple

import torch
from torch import nn
from transformers.activations import ACT2FN
from transformers.cache_utils import EncoderDecoderCache
from transformers.modeling_layers import GradientCheckpointingLayer

from .attention import MultiHeadAttention
from .fast_dropout import Dropout
from .fast_inference import feed_forward_in_row_blocks, runs_in_row_blocks
from .token_layout import PADDED, TokenLayout


class FeedForward(nn.Module):
    """Position-wise feed-forward network (section 3.3): FFN(x) = max(0, x W1 + b1) W2 + b2 with ReLU."""

    def __init__(self, hidden_size: int, ffn_dim: int, activation: str, activation_dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, ffn_dim)
        self.activation = ACT2FN[activation]
        self.dropout = Dropout(activation_dropout)  # not in the paper (0 by default); Marian/BART have it
        self.fc2 = nn.Linear(ffn_dim, hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if runs_in_row_blocks(self, hidden_states):  # inference on CPU: the same, in cache-sized blocks of rows
            return feed_forward_in_row_blocks(self, hidden_states)
        return self.fc2(self.dropout(self.activation(self.fc1(hidden_states))))


class TransformerLayer(GradientCheckpointingLayer):
    """An encoder layer (section 3.1): self-attention then feed-forward, each wrapped in Add & Norm.

    Given a `cross_attention` class it is a decoder layer: the same two sublayers with attention over the encoder
    output in between, a `MultiHeadAttention` of that class (the encoder-decoder passes its beam-search one,
    `beam_cache.SharedRowsCrossAttention`); the caller makes its self-attention causal. Add & Norm is the paper's
    post-LN, LayerNorm(x + Dropout(Sublayer(x))), or with `normalize_before` pre-LN,
    x + Dropout(Sublayer(LayerNorm(x))).
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        num_key_value_heads: int,
        ffn_dim: int,
        activation: str,
        dropout: float,
        attention_dropout: float,
        activation_dropout: float,
        layer_norm_eps: float,
        normalize_before: bool,
        cross_attention: type[MultiHeadAttention] | None,  # None: an encoder layer
        config,
        layer_idx: int | None = None,
    ):
        super().__init__()
        self.normalize_before = normalize_before
        attention = (hidden_size, num_heads, num_key_value_heads, attention_dropout, config, layer_idx)
        self.self_attn = MultiHeadAttention(*attention)
        self.self_attn_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.cross_attn = cross_attention(*attention) if cross_attention is not None else None
        self.cross_attn_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps) if cross_attention is not None else None
        self.ffn = FeedForward(hidden_size, ffn_dim, activation, activation_dropout)
        self.ffn_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.dropout = Dropout(dropout)  # residual dropout (section 5.4)

    def forward(
        self,
        x: torch.Tensor,  # (B, T, D), or the layout's rows of it
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,  # (B, S, D), decoder layers only
        encoder_attention_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        cache: EncoderDecoderCache | None = None,
        output_attentions: bool = False,
        layout: TokenLayout = PADDED,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Returns the output at the layout's output rows, the self-attention and cross-attention weights."""
        common = dict(cache=cache, output_attentions=output_attentions, layout=layout)
        self_attention = dict(attention_mask=attention_mask, is_causal=is_causal, **common)
        cross_attention = dict(key_value_states=encoder_hidden_states, attention_mask=encoder_attention_mask, **common)
        cross_weights = None
        # layout.select(x): the residual at the rows whose output is wanted (all of them, but in BERT's MLM last layer)
        if not self.normalize_before:  # post-LN, the paper: LayerNorm(x + Dropout(Sublayer(x)))
            h, self_weights = self.self_attn(x, **self_attention)
            x = self.self_attn_norm(layout.select(x) + self.dropout(h))
            if self.cross_attn is not None:
                h, cross_weights = self.cross_attn(x, **cross_attention)
                x = self.cross_attn_norm(x + self.dropout(h))
            x = self.ffn_norm(x + self.dropout(self.ffn(x)))
        else:  # pre-LN: x + Dropout(Sublayer(LayerNorm(x))); the stack ends with a LayerNorm
            h, self_weights = self.self_attn(self.self_attn_norm(x), **self_attention)
            x = layout.select(x) + self.dropout(h)
            if self.cross_attn is not None:
                h, cross_weights = self.cross_attn(self.cross_attn_norm(x), **cross_attention)
                x = x + self.dropout(h)
            x = x + self.dropout(self.ffn(self.ffn_norm(x)))
        return x, self_weights, cross_weights


class StackOutput(NamedTuple):
    last_hidden_state: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None
    attentions: tuple[torch.Tensor, ...] | None
    cross_attentions: tuple[torch.Tensor, ...] | None


class LayerStack(nn.Module):
    """N identical layers; with pre-LN a final LayerNorm, since pre-LN layers leave their output unnormalised."""

    def __init__(self, num_layers: int, normalize_before: bool, **layer_args):
        super().__init__()
        self.layers = nn.ModuleList(
            TransformerLayer(normalize_before=normalize_before, layer_idx=i, **layer_args) for i in range(num_layers)
        )
        hidden_size, eps = layer_args["hidden_size"], layer_args["layer_norm_eps"]
        self.final_norm = nn.LayerNorm(hidden_size, eps=eps) if normalize_before else None
        self.gradient_checkpointing = False  # switched by PreTrainedModel.gradient_checkpointing_enable

    def forward(
        self,
        hidden_states: torch.Tensor,  # (B, T, D)
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        cache: EncoderDecoderCache | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        layout: TokenLayout = PADDED,
    ) -> StackOutput:
        """`last_hidden_state` is (B, T, D), or, when the layout selects output rows, the (M, D) states at those
        rows: every layer but the last runs on all rows, since the last layer's attention reads them all."""
        all_hidden_states, self_attentions, cross_attentions = [], [], []
        hidden_states = layout.to_rows(hidden_states)  # (B, T, D), or the (N, D) real tokens
        for i, layer in enumerate(self.layers):
            if output_hidden_states:
                all_hidden_states.append(layout.to_grid(hidden_states))
            hidden_states, self_attn_weights, cross_attn_weights = layer(
                hidden_states,
                attention_mask,
                encoder_hidden_states,
                encoder_attention_mask,
                is_causal=is_causal,
                cache=cache,
                output_attentions=output_attentions,
                layout=layout if i == len(self.layers) - 1 else layout.every_row(),
            )
            self_attentions.append(self_attn_weights)
            cross_attentions.append(cross_attn_weights)
        if self.final_norm is not None:
            hidden_states = self.final_norm(hidden_states)
        hidden_states = layout.output(hidden_states)  # (B, T, D), or (M, D) at the selected rows
        if output_hidden_states:
            all_hidden_states.append(hidden_states)
        return StackOutput(
            last_hidden_state=hidden_states,
            hidden_states=tuple(all_hidden_states) if output_hidden_states else None,
            attentions=tuple(self_attentions) if output_attentions else None,
            cross_attentions=tuple(cross_attentions) if output_attentions and encoder_hidden_states is not None else None,
        )


class LayerStackSupport:
    """What transformers may do with a model built on `LayerStack`s, declared once for both families: their
    PreTrainedModel mixes this in before PreTrainedModel, whose defaults it overrides."""

    supports_gradient_checkpointing = True  # each TransformerLayer is a GradientCheckpointingLayer
    # The layer: FSDP's auto-wrap gives each a unit of its own, and device_map places whole layers. Not the embeddings:
    # a unit of theirs would part the word embeddings from the output projection tied to them
    _no_split_modules = ["TransformerLayer"]
    _supports_sdpa = True  # the kernels behind the standard attention interface (`attention.py`)
    _supports_flash_attn = True
    _supports_flex_attn = True
    _can_compile_fullgraph = False  # the input checks read tensor values
