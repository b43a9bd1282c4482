"""Multi-head attention, "Attention Is All You Need" (Vaswani et al. 2017), section 3.2.

Shapes: B batch, T query length, S key/value length, D model width (d_model), H query heads, K key/value heads
(H for multi-head, 1 for multi-query, in between for grouped-query), Dh head dim = D / H.

The one mask convention: masks are built once per forward, at model level, by `transformers.masking_utils`, in the
format the kernel wants: additive float (B, 1, T, S), 0 = visible and dtype-min = hidden, for eager; boolean
(True = visible) or `None` for sdpa, `None` meaning no padding, the kernel's `is_causal` flag then deciding; a
BlockMask for flex. `output_attentions=True` runs the eager kernel, so the models build eager masks then
(`mask_config`). The fast kernels (sdpa, flash, flex) come from transformers' `ALL_ATTENTION_FUNCTIONS`.
"""

import copy

import torch
from torch import nn
from transformers.cache_utils import EncoderDecoderCache
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .fast_dropout import apply_dropout, eager_kernel_trains_faster
from .token_layout import PADDED, TokenLayout


def repeat_kv(states: torch.Tensor, groups: int) -> torch.Tensor:
    """(B, K, S, Dh) -> (B, K * groups, S, Dh): each key/value head serves `groups` query heads."""
    if groups == 1:
        return states
    return states.repeat_interleave(groups, dim=1)


def eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, is_causal=False):
    """softmax(Q Kᵀ / sqrt(d_k)) V, equation (1). Takes the eager masks (additive float) and sdpa's (boolean, or None
    with `is_causal`), which an sdpa model's CPU training hands it (`fast_dropout.eager_kernel_trains_faster`)."""
    key = repeat_kv(key, module.num_key_value_groups)  # (B, H, S, Dh)
    value = repeat_kv(value, module.num_key_value_groups)  # (B, H, S, Dh)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling  # (B, H, T, S)
    if attention_mask is None and is_causal:
        # The decoder does not look at the future: query t (of the T newest positions) sees keys 0 .. S - T + t.
        T, S = query.shape[2], key.shape[2]
        attention_mask = torch.ones(T, S, dtype=torch.bool, device=scores.device).tril(S - T)  # (T, S), True = visible
    if attention_mask is not None and attention_mask.dtype == torch.bool:  # True = visible
        scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
    elif attention_mask is not None:
        scores = scores + attention_mask  # 0 where visible, dtype-min where hidden
    weights = scores.softmax(dim=-1)
    weights = apply_dropout(weights, dropout, module.training)
    output = torch.matmul(weights, value).transpose(1, 2).contiguous()  # (B, T, H, Dh)
    return output, weights


def mask_config(config, output_attentions: bool):
    """The config to build masks with: returning attention weights runs the eager kernel, which needs eager masks."""
    if output_attentions and config._attn_implementation != "eager":
        config = copy.copy(config)
        config._attn_implementation = "eager"
    return config


class MultiHeadAttention(nn.Module):
    """Multi-head attention (section 3.2.2), one module for the three roles; the call site picks the role:

        encoder self-attention:          attn(x, attention_mask=padding_mask)
        masked decoder self-attention:   attn(y, attention_mask=causal_mask, is_causal=True, cache=cache)
        encoder-decoder cross-attention: attn(y, key_value_states=memory, attention_mask=memory_mask, cache=cache)

    `config` is read for one thing only, `config._attn_implementation` (eager / sdpa / flex / flash), which
    `model.set_attn_implementation` may change after construction.

    The encoder-decoder's cross-attention is this module with a beam-search fast path added,
    `beam_cache.SharedRowsCrossAttention`; it lives there so that an encoder-only model (BERT) neither runs nor
    ships it.
    """

    def __init__(self, hidden_size, num_heads, num_key_value_heads, dropout, config, layer_idx=None):
        super().__init__()
        self.head_dim = hidden_size // num_heads
        self.num_key_value_groups = num_heads // num_key_value_heads  # read by the eager and sdpa kernels
        self.scaling = self.head_dim**-0.5  # 1 / sqrt(d_k)
        self.dropout = dropout
        self.config = config
        self.layer_idx = layer_idx  # which cache layer this attention reads and writes
        # Kernels fall back to `module.is_causal` when they get no mask; only the call site knows the role.
        self.is_causal = False
        self.q_proj = nn.Linear(hidden_size, num_heads * self.head_dim)
        self.k_proj = nn.Linear(hidden_size, num_key_value_heads * self.head_dim)
        self.v_proj = nn.Linear(hidden_size, num_key_value_heads * self.head_dim)
        self.o_proj = nn.Linear(num_heads * self.head_dim, hidden_size)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, heads * Dh) -> (B, heads, L, Dh)"""
        return x.view(*x.shape[:2], -1, self.head_dim).transpose(1, 2)

    def forward(
        self,
        hidden_states: torch.Tensor,  # (B, T, D), or the layout's rows of it
        key_value_states: torch.Tensor | None = None,  # (B, S, D): cross-attention over the encoder output
        attention_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        cache: EncoderDecoderCache | None = None,
        output_attentions: bool = False,
        layout: TokenLayout = PADDED,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The output at the layout's output rows ((B, T, D) padded), and the weights (B, H, T, S) if asked for."""
        if key_value_states is None:  # self-attention: queries, keys and values of the same states
            query, key, value = self.q_proj(hidden_states), self.k_proj(hidden_states), self.v_proj(hidden_states)
            key, value = self.split_heads(layout.to_grid(key)), self.split_heads(layout.to_grid(value))  # (B, K, T, Dh)
            if cache is not None:  # decoding: this step's keys and values join the earlier steps'
                key, value = cache.self_attention_cache.update(key, value, self.layer_idx)  # (B, K, past + T, Dh)
        else:  # cross-attention: queries of the decoder states, keys and values of the encoder output
            query = self.q_proj(hidden_states)
            key, value = self.memory_keys_values(key_value_states, attention_mask, cache)  # (B, K, S, Dh)
        query = self.split_heads(layout.to_grid(query))  # (B, H, T, Dh)

        kernel = self.kernel(query, key, output_attentions)
        dropout = self.dropout if self.training else 0.0
        output, weights = kernel(  # (B, T, H, Dh), (B, H, T, S) or None
            self, query, key, value, attention_mask, dropout=dropout, scaling=self.scaling, is_causal=is_causal
        )
        del query, key, value  # free them before the output projection (peak memory)
        output = output.flatten(2)  # (B, T, H * Dh): the heads concatenated
        output = layout.select(layout.to_rows(output))  # the rows whose output is wanted: (B, T, .), or (N or M, .)
        return self.o_proj(output), weights

    def kernel(self, query: torch.Tensor, key: torch.Tensor, output_attentions: bool):
        """The attention function for these queries and keys: the config's (eager / sdpa / flex / flash), or the eager
        one, which alone returns the weights (and which an sdpa model's CPU training runs, `fast_dropout.py`)."""
        kernel = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        if output_attentions or eager_kernel_trains_faster(self, query):
            kernel = eager_attention_forward
        return kernel

    def memory_keys_values(self, memory, attention_mask, cache) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-attention keys and values of the encoder output `memory` (B, S, D). While decoding they are the same
        at every step: projected and cached at the first, read back at the others."""
        if cache is not None and cache.is_updated.get(self.layer_idx):
            cached = cache.cross_attention_cache.layers[self.layer_idx]
            return cached.keys, cached.values
        key, value = self.split_heads(self.k_proj(memory)), self.split_heads(self.v_proj(memory))  # (B, K, S, Dh)
        if cache is not None:
            key, value = cache.cross_attention_cache.update(key, value, self.layer_idx)
            cache.is_updated[self.layer_idx] = True
        return key, value
