"""The parts both model families are built from: "Attention Is All You Need" (Vaswani et al. 2017), section 3.

Shapes: B batch, T query length, S key/value length, D model width (d_model), H query heads,
K key/value heads (H for multi-head, 1 for multi-query, in between for grouped-query), Dh head dim = D / H.

The one mask convention: masks are built once per forward, at model level, by `transformers.masking_utils`,
in the format the attention kernel wants: additive float (B, 1, T, S) with 0 = visible and dtype-min = hidden
for eager, boolean (True = visible) or `None` (no padding: the kernel's `is_causal` flag decides) for sdpa,
a BlockMask for flex. `output_attentions=True` runs the eager kernel, so models build eager masks then
(`mask_config`).
"""

import copy
from typing import NamedTuple

import torch
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicLayer, EncoderDecoderCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS


def repeat_kv(states: torch.Tensor, groups: int) -> torch.Tensor:
    """(B, K, S, Dh) -> (B, K * groups, S, Dh): each key/value head serves `groups` query heads."""
    if groups == 1:
        return states
    return states.repeat_interleave(groups, dim=1)


def repeated_rows(states: torch.Tensor, mask: torch.Tensor | None = None) -> int:
    """The largest g such that `states` (B, ...), and `mask` (B, ...) with it, are B / g runs of g equal
    consecutive rows; 1 if there is none. Beam search repeats each sentence's encoder output once per beam."""
    batch = states.shape[0]
    run = 1  # rows equal to the first one, in a row: the size of the groups is a divisor of it
    while run < batch and torch.equal(states[run], states[0]):
        run += 1
    for size in range(run, 1, -1):
        if run % size or batch % size:
            continue
        if all(
            torch.equal(grouped, grouped[:, :1].expand_as(grouped))
            for grouped in (x.unflatten(0, (-1, size)) for x in (states, mask) if x is not None)
        ):
            return size
    return 1


class SharedRowsLayer(DynamicLayer):
    """A cross-attention cache layer that holds one row of keys/values for each run of `shared` consecutive batch
    rows that have the same ones (beam search: a sentence's beams), batch row i reading stored row i // shared.
    Selecting or reordering batch rows keeps it exact: a reorder within the runs changes nothing (beam search
    only moves beams within a sentence); any other selection gets one stored row per batch row."""

    def __init__(self, shared: int):
        super().__init__()
        self.shared = shared

    def reorder_cache(self, beam_idx: torch.Tensor) -> None:
        if self.get_seq_length() == 0:
            return
        runs = beam_idx.to(self.keys.device) // self.shared
        if not torch.equal(runs, torch.arange(len(runs), device=runs.device) // self.shared):
            self.batch_select_indices(beam_idx)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.get_seq_length() == 0:
            return
        rows = torch.arange(self.keys.shape[0] * self.shared, device=self.keys.device)[indices] // self.shared
        self.keys, self.values, self.shared = self.keys[rows], self.values[rows], 1


class _KeepAndScale(torch.autograd.Function):
    """x * keep / (1 - p), saving the boolean mask for the backward pass, as torch's own dropout does."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return x.mul(keep).mul_(scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (keep,) = ctx.saved_tensors
        return grad.mul(keep).mul_(ctx.scale), None, None


def apply_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Dropout (section 5.4): each element is zeroed with probability p, the rest are scaled by 1 / (1 - p).

    On CPU the mask is drawn as 32-bit uniform integers (the generator's raw output, two per 64-bit draw) compared
    with a threshold: P(keep) = 1 - p to within 2^-33, the same distribution as `torch.nn.functional.dropout`
    (another random stream), about three times faster than its per-element Bernoulli draws there, a tenth of
    a small model's training step. Elsewhere (GPU kernels draw in bulk already) and under torch.compile it is
    torch's dropout.
    """
    if not training or p == 0.0:
        return x
    keep_count = round((1.0 - p) * 2**32)  # of the 2^32 values a 32-bit draw can take, how many keep
    if x.device.type != "cpu" or torch.compiler.is_compiling() or not 0 < keep_count < 2**32:
        return nn.functional.dropout(x, p, training=True)
    n = x.numel()
    draws = torch.empty((n + 1) // 2, dtype=torch.int64).random_(-(2**63), None)  # 64 uniform bits each
    keep = draws.view(torch.int32)[:n].view(x.shape) < keep_count - 2**31  # int32 draws are uniform on [-2^31, 2^31)
    return _KeepAndScale.apply(x, keep, 1.0 / (1.0 - p))


class Dropout(nn.Dropout):
    """`nn.Dropout` (same module, same repr, no weights) drawing its mask with `apply_dropout`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return apply_dropout(x, self.p, self.training)


def eager_attention_forward(
    module, query, key, value, attention_mask, scaling, dropout=0.0, is_causal=False, **kernel_kwargs
):
    """softmax(Q Kᵀ / sqrt(d_k)) V, equation (1). Takes the eager mask (additive float) and, for CPU training
    (`MultiHeadAttention`), the sdpa ones: boolean (True = visible), or None with `is_causal`."""
    key = repeat_kv(key, module.num_key_value_groups)  # (B, H, S, Dh)
    value = repeat_kv(value, module.num_key_value_groups)  # (B, H, S, Dh)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling  # (B, H, T, S)
    hidden = None  # boolean, True = not visible
    if attention_mask is not None and attention_mask.dtype == torch.bool:
        hidden = ~attention_mask
    elif attention_mask is not None:
        scores = scores + attention_mask  # 0 where visible, dtype-min where hidden
    elif is_causal and query.shape[2] > 1:
        length, key_length = query.shape[2], key.shape[2]
        hidden = torch.ones(length, key_length, dtype=torch.bool, device=scores.device).triu(key_length - length + 1)
    if hidden is not None:
        scores = scores.masked_fill(hidden, torch.finfo(scores.dtype).min)
    weights = scores.softmax(dim=-1)
    weights = apply_dropout(weights, dropout, module.training)
    output = torch.matmul(weights, value).transpose(1, 2).contiguous()  # (B, T, H, Dh)
    return output, weights


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """sum_i CE(softmax(h_i Wᵀ + b), y_i) and the logits h Wᵀ + b, the vocabulary taken `chunk` rows of W at a time.

    The same loss and gradients as `cross_entropy(linear(h, W, b), y, reduction="sum")`, computed in pieces that
    stay in the CPU's cache: each piece of logits is made, reduced into the log-sum-exp, and in the backward pass
    turned into its softmax gradient and multiplied out, while it is hot. No log-softmax tensor is kept; on CPU
    the (N, V) forward matrix product alone is about twice as fast in pieces.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, chunk):  # (N, D), (V, D), (V,), (N,) in [0, V), int
        ctx.set_materialize_grads(False)  # unused logits get no gradient, rather than a tensor of zeros
        pieces = [torch.addmm(bias[start : start + chunk], hidden, weight[start : start + chunk].t())
                  for start in range(0, weight.shape[0], chunk)]  # (N, chunk) each
        lse = torch.logsumexp(torch.stack([piece.float().logsumexp(dim=1) for piece in pieces], dim=1), dim=1)
        logits = torch.cat(pieces, dim=1)  # (N, V)
        target = logits.gather(1, labels[:, None]).squeeze(1).float()  # (N,)
        ctx.save_for_backward(hidden, weight, lse, labels)
        ctx.pieces, ctx.chunk = pieces, chunk
        return (lse - target).sum(), logits

    @staticmethod
    def backward(ctx, grad_loss, grad_logits):
        hidden, weight, lse, labels = ctx.saved_tensors
        grad_hidden = torch.zeros_like(hidden)
        grad_weight = torch.empty_like(weight)
        grad_bias = torch.empty(weight.shape[0], dtype=weight.dtype, device=weight.device)
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        for piece, start in zip(ctx.pieces, range(0, weight.shape[0], ctx.chunk)):
            stop = start + piece.shape[1]
            if grad_loss is not None:  # d loss / d logits = softmax - onehot(label)
                grad = torch.sub(piece, lse[:, None]).exp_().mul_(grad_loss)
                here = (labels >= start) & (labels < stop)
                grad[rows[here], labels[here] - start] -= grad_loss
            else:
                grad = torch.zeros_like(piece)
            if grad_logits is not None:
                grad += grad_logits[:, start:stop]
            grad = grad.to(piece.dtype)
            grad_hidden.addmm_(grad, weight[start:stop])
            torch.mm(grad.t(), hidden, out=grad_weight[start:stop])
            torch.sum(grad, dim=0, out=grad_bias[start:stop])
        return grad_hidden, grad_weight, grad_bias, None, None


def token_cross_entropy(
    logits: torch.Tensor,  # (..., V)
    labels: torch.Tensor,  # (...), -100 = ignored
    num_items_in_batch: int | torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Cross-entropy averaged over the labelled positions (labels != -100), or summed and divided by Trainer's
    `num_items_in_batch` (gradient accumulation: accumulated steps equal one big step). A batch with no labelled
    position has loss 0 and zero gradients: a plain mean divides by zero there, and its NaN gradients would turn every
    weight into NaN at the next optimizer step."""
    loss = nn.functional.cross_entropy(
        logits.float().flatten(0, -2),
        labels.flatten().to(logits.device),
        ignore_index=-100,
        reduction="sum",
        label_smoothing=label_smoothing,
    )
    count = (labels != -100).sum() if num_items_in_batch is None else num_items_in_batch
    if torch.is_tensor(count):
        return loss / count.to(loss.device).clamp(min=1)
    return loss / max(count, 1)


def linear_cross_entropy(hidden, weight, bias, labels, chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed cross-entropy of `labels` under linear(hidden, weight, bias), the logits), in vocabulary chunks
    (`ChunkedLinearCrossEntropy`): 512 rows on CPU (a (N, 512) piece fits in cache), 8192 elsewhere."""
    chunk = chunk or (512 if hidden.is_cpu else 8192)
    return ChunkedLinearCrossEntropy.apply(hidden, weight, bias, labels, chunk)


def output_options(
    config, output_attentions=None, output_hidden_states=None, return_dict=None
) -> tuple[bool, bool, bool]:
    """A forward's output switches: what the call says, else what the config says (`config.output_attentions`,
    `config.output_hidden_states`, `config.return_dict`), as every transformers model reads them."""
    return (
        bool(config.output_attentions if output_attentions is None else output_attentions),
        bool(config.output_hidden_states if output_hidden_states is None else output_hidden_states),
        bool(config.return_dict if return_dict is None else return_dict),
    )


def mask_config(config, output_attentions: bool):
    """The config to build masks with: returning attention weights runs the eager kernel, which needs eager masks."""
    if output_attentions and config._attn_implementation != "eager":
        config = copy.copy(config)
        config._attn_implementation = "eager"
    return config


class Unpadder:
    """No work on padding: the position-wise parts of a layer (projections, feed-forward, norms, residuals) run on
    the N real tokens of a padded (B, T) batch; only the attention kernel sees the (B, T) layout, rebuilt from
    them. Outputs at padding positions come back as zeros (a padded model gives arbitrary values there)."""

    def __init__(self, token_mask: torch.Tensor):  # (B, T), True = real token
        self.batch, self.length = token_mask.shape
        self.indices = token_mask.flatten().nonzero().squeeze(1)  # (N,) positions in the flattened (B * T) grid

    @classmethod
    def for_mask(cls, attention_mask: torch.Tensor | None) -> "Unpadder | None":
        """An Unpadder when the 2D mask (1 = token, 0 = padding) has padding; None otherwise."""
        if attention_mask is None or attention_mask.dim() != 2 or torch.compiler.is_compiling():
            return None
        token_mask = attention_mask.bool()
        return None if bool(token_mask.all()) else cls(token_mask)

    def rows_of(self, positions: torch.Tensor) -> torch.Tensor:
        """Flat (B * T) grid positions of real tokens -> their rows in the (N, ...) unpadded layout."""
        rows = torch.full((self.batch * self.length,), -1, dtype=torch.long, device=self.indices.device)
        rows[self.indices] = torch.arange(self.indices.numel(), device=self.indices.device)
        rows = rows[positions]
        if not torch.compiler.is_compiling() and bool((rows < 0).any()):
            raise ValueError("output_positions include padding positions")
        return rows

    def unpad(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(0, 1).index_select(0, self.indices)  # (B, T, ...) -> (N, ...)

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        grid = x.new_zeros(self.batch * self.length, *x.shape[1:])
        grid[self.indices] = x  # in place into a fresh tensor: no second copy of the grid
        return grid.view(self.batch, self.length, *x.shape[1:])  # (N, ...) -> (B, T, ...)


class MultiHeadAttention(nn.Module):
    """Multi-head attention (section 3.2.2), one module for the three roles; the call site picks the role:

        encoder self-attention:          attn(x, attention_mask=padding_mask)
        masked decoder self-attention:   attn(y, attention_mask=causal_mask, is_causal=True, cache=cache)
        encoder-decoder cross-attention: attn(y, key_value_states=memory, attention_mask=memory_mask, cache=cache)

    `config` is read for one thing only, `config._attn_implementation` (eager / sdpa / flex / flash), which
    `model.set_attn_implementation` may change after construction.
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
        self._stacked_qkv = None  # inference: (weights' identity, stacked weight, stacked bias); not saved

    def project_qkv(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Q, K, V of the same states. Without autograd (inference, decoding) one matrix product with the three
        weights stacked, kept until a weight changes (in place or moved); in training, the three projections."""
        projections = (self.q_proj, self.k_proj, self.v_proj)
        if torch.is_grad_enabled() or torch.compiler.is_compiling():
            return tuple(projection(hidden_states) for projection in projections)
        identity = tuple((t.data_ptr(), t._version) for p in projections for t in (p.weight, p.bias))
        if self._stacked_qkv is None or self._stacked_qkv[0] != identity:
            weight = torch.cat([p.weight for p in projections])  # (H * Dh + 2 * K * Dh, D)
            self._stacked_qkv = (identity, weight, torch.cat([p.bias for p in projections]))
        stacked = nn.functional.linear(hidden_states, self._stacked_qkv[1], self._stacked_qkv[2])
        return stacked.split([p.out_features for p in projections], dim=-1)

    def forward(
        self,
        hidden_states: torch.Tensor,
        key_value_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        cache: EncoderDecoderCache | None = None,
        output_attentions: bool = False,
        unpadder: Unpadder | None = None,
        output_index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`output_index` (M,): rows of the flattened output to keep (of the (B * T) grid, or of the N real tokens
        with an unpadder); the output projection then runs on those M rows only, (M, D)."""
        # With an unpadder, hidden_states are the (N, D) real tokens: project them, then lay them out as (B, T).
        to_grid = unpadder.pad if unpadder is not None else (lambda x: x)
        is_cross_attention = key_value_states is not None
        if is_cross_attention:
            query = to_grid(self.q_proj(hidden_states))  # (B, T, H * Dh)
        else:
            query, key, value = (to_grid(x) for x in self.project_qkv(hidden_states))  # (B, T, H * Dh), (B, T, K * Dh) x 2
        batch, length, _ = query.shape
        query = query.view(batch, length, -1, self.head_dim).transpose(1, 2)  # (B, H, T, Dh)

        shared = 1  # cross-attention while decoding: how many consecutive rows of the batch read one cached row
        if is_cross_attention and cache is not None and cache.is_updated.get(self.layer_idx):
            # The encoder output does not change while decoding: its keys and values were projected at step one.
            cached = cache.cross_attention_cache.layers[self.layer_idx]
            key, value = cached.keys, cached.values  # (B / shared, K, S, Dh)
            shared = batch // key.shape[0]
        else:
            if is_cross_attention:  # the encoder output, (B, S, D)
                if cache is not None and self._can_share_rows(cache.cross_attention_cache, attention_mask):
                    # Beam search: each sentence's encoder output comes once per beam. Its keys and values are
                    # projected and cached once, and read by all its beams: 1 / num_beams of the cache and of the
                    # keys/values the attention reads at every step, the same results.
                    shared = repeated_rows(key_value_states, attention_mask)
                    key_value_states = key_value_states[::shared]  # (B / shared, S, D)
                key, value = self.k_proj(key_value_states), self.v_proj(key_value_states)
            kv_shape = (key.shape[0], key.shape[1], -1, self.head_dim)
            key = key.view(kv_shape).transpose(1, 2)  # (B, K, S, Dh)
            value = value.view(kv_shape).transpose(1, 2)  # (B, K, S, Dh)
            if cache is not None and is_cross_attention:
                if shared > 1:  # a layer that knows which batch rows read which stored row
                    layers = cache.cross_attention_cache.layers
                    while len(layers) <= self.layer_idx:
                        layers.append(DynamicLayer())
                    layers[self.layer_idx] = SharedRowsLayer(shared)
                key, value = cache.cross_attention_cache.update(key, value, self.layer_idx)
                cache.is_updated[self.layer_idx] = True
            elif cache is not None:
                # Self-attention while decoding: append this step's keys/values, attend over all of them.
                key, value = cache.self_attention_cache.update(key, value, self.layer_idx)

        if output_attentions:
            attend = eager_attention_forward  # the one kernel that returns the weights
        elif self.training and self.dropout > 0 and query.is_cpu and self.config._attn_implementation == "sdpa":
            # With dropout on the weights, torch's sdpa runs its math kernel on CPU: the same operations as the
            # eager kernel, whose dropout draws its mask faster (`apply_dropout`).
            attend = eager_attention_forward
        else:
            attend = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        if shared > 1:  # the queries of the rows that share a cached row, as one longer query (no causal mask here)
            query = query.unflatten(0, (-1, shared)).transpose(1, 2).flatten(2, 3)  # (B / shared, H, shared * T, Dh)
            if attention_mask is not None:  # equal on the rows that share; (B / shared, 1, T or shared * T, S)
                attention_mask = attention_mask[::shared]
                if attention_mask.shape[2] > 1:
                    attention_mask = attention_mask.repeat(1, 1, shared, 1)
        output, weights = attend(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.dropout if self.training else 0.0,
            scaling=self.scaling,
            is_causal=is_causal,
        )
        del query, key, value  # not needed past the kernel: free them before the output projection runs
        # (B, T, H * Dh): the heads concatenated. With shared rows the kernel's (B / shared, shared * T, H, Dh) holds
        # the rows in batch order already.
        output = output.reshape(batch, length, -1)
        if weights is not None and shared > 1:
            weights = weights.unflatten(2, (shared, length)).transpose(1, 2).flatten(0, 1)  # (B, H, T, S)
        if unpadder is not None:
            output = unpadder.unpad(output)  # (N, H * Dh)
        if output_index is not None:
            output = output.flatten(0, -2).index_select(0, output_index)  # (M, H * Dh)
        return self.o_proj(output), weights


    def _can_share_rows(self, cross_cache: Cache, attention_mask) -> bool:
        """Cross-attention keys/values may be cached once for rows that share them when the cache is the default
        growing one (a static cache has its batch size fixed) and the kernel takes a (B, 1, T, S) mask or none."""
        layers = cross_cache.layers
        layer_class = (type(layers[self.layer_idx]) if self.layer_idx < len(layers)
                       else getattr(cross_cache, "layer_class_to_replicate", None))
        return (
            layer_class is DynamicLayer
            and not torch.compiler.is_compiling()  # finding the shared rows reads tensor values
            and self.config._attn_implementation in ("eager", "sdpa")
            and (attention_mask is None or (isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 4))
        )


class FeedForward(nn.Module):
    """Position-wise feed-forward network (section 3.3): FFN(x) = max(0, x W1 + b1) W2 + b2 with ReLU."""

    def __init__(self, hidden_size: int, ffn_dim: int, activation: str, activation_dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, ffn_dim)
        self.activation = ACT2FN[activation]
        self.dropout = Dropout(activation_dropout)  # not in the paper (0 by default); Marian/BART have it
        self.fc2 = nn.Linear(ffn_dim, hidden_size)

    # Inference on CPU runs the network over blocks of rows of about this many intermediate elements (2 MB in fp32).
    block_elements = 2**19

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        rows = max(1, self.block_elements // self.fc1.out_features)
        if torch.is_grad_enabled() or not hidden_states.is_cpu or torch.compiler.is_compiling() or (
            hidden_states.numel() <= rows * hidden_states.shape[-1]
        ):
            return self.fc2(self.dropout(self.activation(self.fc1(hidden_states))))
        # Without autograd on CPU, block by block: each block's (rows, ffn_dim) intermediate stays in cache, and the
        # whole (N, ffn_dim) one, 4x the hidden states and the largest tensor of an encoder's forward pass, never
        # exists. Each row goes through the same operations as in one piece: the same output (measured here:
        # identical, and 10-25% faster).
        flat = hidden_states.reshape(-1, hidden_states.shape[-1])  # (N, D)
        out = flat.new_empty(flat.shape[0], self.fc2.out_features)
        for start in range(0, flat.shape[0], rows):
            out[start : start + rows] = self.fc2(self.dropout(self.activation(self.fc1(flat[start : start + rows]))))
        return out.view(*hidden_states.shape[:-1], out.shape[-1])


class ScaledEmbedding(nn.Embedding):
    """Token embeddings multiplied by `scale` (sqrt(d_model) in the Transformer, section 3.4), in the module itself,
    so that `model.get_input_embeddings()(ids)` is exactly what the model adds positions to: `inputs_embeds` built
    that way (prompt tuning, adapters) give the same outputs as `input_ids`. The weight is a plain embedding table
    (same checkpoint key and values as `nn.Embedding`)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None, scale: float = 1.0):
        super().__init__(num_embeddings, embedding_dim, padding_idx=padding_idx)
        self.scale = scale

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return super().forward(input_ids) * self.scale

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, scale={self.scale:g}"


def sinusoidal_table(num_positions: int, dim: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Section 3.5: PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d)).
    Computed in float64, returned in `dtype` (default: torch's default dtype, which `from_pretrained(dtype=...)`
    sets while it builds the model)."""
    position = torch.arange(num_positions, dtype=torch.float64).unsqueeze(1)  # (P, 1)
    inv_timescale = 10000.0 ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)  # (D/2,)
    table = torch.zeros(num_positions, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(position * inv_timescale)  # even dimensions
    table[:, 1::2] = torch.cos(position * inv_timescale)  # odd dimensions
    return table.to(dtype or torch.get_default_dtype())


class PositionEmbedding(nn.Module):
    """Vectors for positions 0 .. num_positions-1: the paper's fixed sinusoids, or a learned table.

    Both keep their table in `weight`; the sinusoidal one is a non-persistent buffer (recomputed, never saved).
    """

    def __init__(self, num_positions: int, dim: int, kind: str):
        super().__init__()
        self.kind = kind
        self.num_positions = num_positions
        if kind == "learned":
            self.weight = nn.Parameter(torch.empty(num_positions, dim))
        else:
            self.register_buffer("weight", sinusoidal_table(num_positions, dim), persistent=False)

    def forward(self, length: int, past_length: int | torch.Tensor = 0, dtype: torch.dtype | None = None) -> torch.Tensor:
        """(T, D) vectors of positions past_length .. past_length + T - 1, in `dtype` (that of the embeddings they
        are added to: a float32 table must not promote half-precision embeddings)."""
        if isinstance(past_length, int) and past_length + length > self.num_positions:
            raise ValueError(
                f"sequence of {past_length + length} positions is longer than max_position_embeddings="
                f"{self.num_positions}; truncate the input (tokenizer(..., truncation=True, max_length="
                f"{self.num_positions})) or use a model built with a larger max_position_embeddings"
            )
        positions = torch.arange(length, device=self.weight.device) + past_length
        return self.weight[positions].to(dtype or self.weight.dtype)  # (T, D)

    @torch.no_grad()
    def reset_parameters(self, std: float) -> None:
        if self.kind == "learned":
            init.normal_(self.weight, mean=0.0, std=std)
        else:
            init.copy_(self.weight, sinusoidal_table(*self.weight.shape, dtype=torch.float64))


def check_token_ids(input_ids: torch.Tensor | None, vocab_size: int, name: str = "input_ids") -> None:
    """Ids of another type, rank or range than the embedding table takes give an opaque error deep in torch (or a
    device assert): say what is wrong."""
    if input_ids is None:
        return
    if input_ids.is_floating_point() or input_ids.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer token ids (torch.long), got {input_ids.dtype}")
    if input_ids.dim() != 2:
        raise ValueError(
            f"{name} must be (batch, length), got shape {tuple(input_ids.shape)}; for one sequence pass ids[None], "
            "or tokenize with return_tensors='pt'"
        )
    if input_ids.numel() == 0 or torch.compiler.is_compiling():
        return
    low, high = int(input_ids.min()), int(input_ids.max())
    if low < 0 or high >= vocab_size:
        raise ValueError(
            f"{name} contains token id {high if high >= vocab_size else low}, outside the vocabulary of "
            f"{vocab_size} ids; the tokenizer does not match this model (check len(tokenizer) against "
            "config.vocab_size), or -100 label padding was passed as input"
        )


def check_batch(shape: torch.Size, attention_mask: torch.Tensor | None, name: str, past_length: int = 0) -> None:
    """A (B, T) batch must hold at least one sequence of at least one token, and its 2-D attention mask one 1/0 per
    position (past ones included while decoding with a cache): otherwise torch fails deep inside, or a mask of the
    wrong length is silently broadcast or cut."""
    if torch.compiler.is_compiling():  # shapes are symbols there; checked in eager runs
        return
    batch, length = shape[0], shape[1]
    if batch == 0 or length == 0:
        raise ValueError(f"{name} is empty (shape {tuple(shape[:2])}): pass at least one sequence of at least one token")
    if attention_mask is None or not isinstance(attention_mask, torch.Tensor):
        return
    expected = (batch, int(past_length) + length)
    if attention_mask.dim() == 2 and tuple(attention_mask.shape) != expected:
        raise ValueError(
            f"the attention mask for {name} has shape {tuple(attention_mask.shape)}, expected {expected} (one 1 or 0 per "
            "token of each sequence" + (f", the {past_length} cached positions included" if past_length else "")
            + "): make the ids and the mask in the same tokenizer call, with padding=True"
        )
    if attention_mask.dim() not in (2, 4):
        raise ValueError(
            f"the attention mask for {name} must be (batch, length) with 1 = token, 0 = padding (or a prepared 4-D "
            f"mask), got shape {tuple(attention_mask.shape)}"
        )


class TransformerLayer(GradientCheckpointingLayer):
    """An encoder layer (section 3.1): self-attention then feed-forward, each wrapped in Add & Norm.

    With `cross_attention=True` it is a decoder layer: the same two sublayers with attention over the encoder
    output in between; the caller makes its self-attention causal. Add & Norm is the paper's post-LN,
    LayerNorm(x + Dropout(Sublayer(x))), or with `normalize_before` pre-LN, x + Dropout(Sublayer(LayerNorm(x))).
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
        cross_attention: bool,
        config,
        layer_idx: int | None = None,
    ):
        super().__init__()
        self.normalize_before = normalize_before
        attention = (hidden_size, num_heads, num_key_value_heads, attention_dropout, config, layer_idx)
        self.self_attn = MultiHeadAttention(*attention)
        self.self_attn_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.cross_attn = MultiHeadAttention(*attention) if cross_attention else None
        self.cross_attn_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps) if cross_attention else None
        self.ffn = FeedForward(hidden_size, ffn_dim, activation, activation_dropout)
        self.ffn_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.dropout = Dropout(dropout)  # residual dropout (section 5.4)

    def _sublayer_input(self, x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
        return norm(x) if self.normalize_before else x

    def _add_and_norm(self, x: torch.Tensor, sublayer_output: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
        sublayer_output = self.dropout(sublayer_output)
        if torch.is_grad_enabled():
            x = x + sublayer_output
        else:  # inference: the sum goes into the sublayer's output, a temporary of ours (one tensor fewer)
            x = sublayer_output.add_(x)
        return x if self.normalize_before else norm(x)

    def forward(
        self,
        hidden_states: torch.Tensor,  # (B, T, D)
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,  # (B, S, D), decoder layers only
        encoder_attention_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        cache: EncoderDecoderCache | None = None,
        output_attentions: bool = False,
        unpadder: Unpadder | None = None,  # hidden_states are then the (N, D) real tokens
        output_index: torch.Tensor | None = None,  # (M,): only these rows of the output are wanted
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Returns (B, T, D), or (N, D) with an unpadder, or with `output_index` the (M, D) rows it selects of the
        flattened output: attention still reads every position (all keys and values), but the output projection,
        the residual, the norms and the feed-forward run on those M rows alone. Encoder layers only."""
        x = hidden_states
        if output_index is not None and self.cross_attn is not None:
            raise ValueError("output_index is for encoder layers (no cross-attention)")
        h, self_attn_weights = self.self_attn(
            self._sublayer_input(x, self.self_attn_norm),
            attention_mask=attention_mask,
            is_causal=is_causal,
            cache=cache,
            output_attentions=output_attentions,
            unpadder=unpadder,
            output_index=output_index,
        )
        if output_index is not None:
            x = x.flatten(0, -2).index_select(0, output_index)  # the residual stream at the kept rows, (M, D)
        x = self._add_and_norm(x, h, self.self_attn_norm)
        del h  # added into x: free it before the next sublayer runs (peak memory)

        cross_attn_weights = None
        if self.cross_attn is not None:
            h, cross_attn_weights = self.cross_attn(
                self._sublayer_input(x, self.cross_attn_norm),
                key_value_states=encoder_hidden_states,
                attention_mask=encoder_attention_mask,
                cache=cache,
                output_attentions=output_attentions,
                unpadder=unpadder,
            )
            x = self._add_and_norm(x, h, self.cross_attn_norm)
            del h

        h = self.ffn(self._sublayer_input(x, self.ffn_norm))
        x = self._add_and_norm(x, h, self.ffn_norm)
        return x, self_attn_weights, cross_attn_weights


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
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        cache: EncoderDecoderCache | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        unpadder: Unpadder | None = None,
        output_positions: torch.Tensor | None = None,
    ) -> StackOutput:
        """With an `unpadder` the layers work on real tokens only; what comes out is padded again, (B, T, D).

        `output_positions` (M,): flat indices into the (B * T) grid of the only positions whose final hidden state
        is wanted (an MLM loss needs the masked ones alone). Every layer but the last runs on all positions, since
        the last layer's attention reads them all; the last layer computes its output rows at those M positions
        only, and `last_hidden_state` is (M, D), the same values the full stack gives there.
        """
        if output_positions is not None and output_hidden_states:
            raise ValueError("output_positions returns the final hidden states at some positions only; it cannot "
                             "be combined with output_hidden_states")
        all_hidden_states, self_attentions, cross_attentions = [], [], []
        output_index = output_positions
        if output_positions is not None and unpadder is not None:
            output_index = unpadder.rows_of(output_positions)  # grid positions -> rows of the (N, D) real tokens
        repad = unpadder.pad if unpadder is not None else (lambda x: x)
        if unpadder is not None:
            hidden_states = unpadder.unpad(hidden_states)  # (N, D)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            if output_hidden_states:
                all_hidden_states.append(repad(hidden_states))
            hidden_states, self_attn_weights, cross_attn_weights = layer(
                hidden_states,
                attention_mask,
                encoder_hidden_states,
                encoder_attention_mask,
                is_causal=is_causal,
                cache=cache,
                output_attentions=output_attentions,
                unpadder=unpadder,
                **({"output_index": output_index} if i == last and output_index is not None else {}),
            )
            self_attentions.append(self_attn_weights)
            cross_attentions.append(cross_attn_weights)
        if self.final_norm is not None:
            hidden_states = self.final_norm(hidden_states)
        if output_index is None:
            hidden_states = repad(hidden_states)  # (B, T, D)
        elif not self.layers:  # no layer to select the rows: select them here
            hidden_states = hidden_states.flatten(0, -2).index_select(0, output_index)
        if output_hidden_states:
            all_hidden_states.append(hidden_states)
        return StackOutput(
            last_hidden_state=hidden_states,
            hidden_states=tuple(all_hidden_states) if output_hidden_states else None,
            attentions=tuple(self_attentions) if output_attentions else None,
            cross_attentions=tuple(cross_attentions) if output_attentions and encoder_hidden_states is not None else None,
        )
