"""Fast path: beam search caches the cross-attention keys and values once per sentence, not once per beam.

`generate` lays a sentence's beams out as consecutive batch rows of one encoder output, repeated. The keys and values
of cross-attention are a function of the encoder output alone: equal on a sentence's rows. They are projected and
cached for one row per sentence, and each beam's queries read that row: 1 / num_beams of the cache and of the keys
and values the attention reads at every step.

Plain computation it equals: cross-attention with one row of keys and values per batch row (`k_proj(memory)`,
`v_proj(memory)` for the whole (B, S, D) encoder output, cached as they are). Proven by
`tests/test_fast_paths.py::test_beam_search_caches_cross_attention_once_per_sentence` (same sequences, scores and
attention weights as without a cache), `test_shared_cross_attention_cache_stays_exact_under_any_reorder` and
`test_repeated_rows_finds_the_runs_of_equal_rows`.

Entered from one place: `SharedRowsCrossAttention`, the cross-attention the encoder-decoder builds its decoder layers
with (`transformer_stacks.layer_args`). Its `memory_keys_values` calls `one_row_per_sentence` at the first
decoding step; its kernel is wrapped by `shared_rows_kernel` where the keys have fewer rows than the queries. Only the
encoder-decoder imports this module: BERT's folders do not carry it.

What the outside sees is the plain computation's cache: through the Cache API (`layer.keys`, `layer.values`,
iterating the cache, the cache `generate(return_dict_in_generate=True)` returns) a `SharedRowsLayer` has one row per
batch row, (B, K, S, Dh) as transformers documents, the stored rows expanded on that first read; only our attention
reads the shared rows (`stored_rows`), so the search itself keeps the saving (`generate` reads no layer's keys).
"""

import torch
from transformers.cache_utils import Cache, DynamicLayer

from .attention import MultiHeadAttention


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
    """A cross-attention cache layer that stores one row of keys/values for each run of `shared` consecutive batch
    rows that have the same ones (beam search: a sentence's beams), batch row i reading stored row i // shared.

    Two views of one content:
    - `stored_rows()`: the stored rows (B / shared, K, S, Dh), which `SharedRowsCrossAttention` reads at every step;
    - `keys` / `values`, the Cache API's: one row per batch row (B, K, S, Dh), the shape transformers documents and
      every other reader gets (the cache `generate(return_dict_in_generate=True)` returns, assisted decoding, a
      user's loop). The first read or write through them expands the stored rows for good (`shared` becomes 1, the
      layer a plain per-row one): the sharing lasts while only our attention reads the layer, during the search.
    Selecting or reordering batch rows keeps it exact: a reorder within the runs changes nothing (beam search
    only moves beams within a sentence); any other selection gets one stored row per batch row."""

    def __init__(self, shared: int):
        self.shared, self._keys, self._values = 1, None, None
        super().__init__()  # keys = values = None, through the setters below
        self.shared = shared

    def stored_rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys and values as stored: (B / shared, K, S, Dh), no copy."""
        return self._keys, self._values

    def expand_rows(self) -> None:
        """One stored row per batch row from now on (B, K, S, Dh): what any other model's cache holds."""
        if self.shared > 1 and self._keys is not None:
            self._keys = self._keys.repeat_interleave(self.shared, dim=0)
            self._values = self._values.repeat_interleave(self.shared, dim=0)
        self.shared = 1

    @property
    def keys(self) -> torch.Tensor | None:
        self.expand_rows()
        return self._keys

    @keys.setter
    def keys(self, value: torch.Tensor | None) -> None:
        self.expand_rows()
        self._keys = value

    @property
    def values(self) -> torch.Tensor | None:
        self.expand_rows()
        return self._values

    @values.setter
    def values(self, value: torch.Tensor | None) -> None:
        self.expand_rows()
        self._values = value

    def update(self, key_states, value_states, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """The first update, `SharedRowsCrossAttention`'s, stores the rows as they come (one per run of `shared`
        batch rows, `one_row_per_sentence`) and returns them; any later one appends to one row per batch row."""
        if self.is_initialized:
            return super().update(key_states, value_states, *args, **kwargs)
        self.device, self.is_initialized = key_states.device, True
        self._keys, self._values = key_states, value_states
        return self.stored_rows()

    def get_seq_length(self) -> int:
        return 0 if not self.is_initialized or self._keys.numel() == 0 else self._keys.shape[-2]

    def reset(self) -> None:
        self._keys = self._values = None
        self.shared = 1  # the next update stores rows as they come (`one_row_per_sentence` may share them again)
        # nothing stored, so nothing to zero: transformers before 5.2x zeroes an initialised layer's tensors in place
        self.is_initialized = False
        super().reset()

    def offload(self) -> None:
        if self.is_initialized:
            self._keys, self._values = (x.to("cpu", non_blocking=True) for x in self.stored_rows())

    def prefetch(self) -> None:
        if self.is_initialized and self._keys.device != self.device:
            self._keys, self._values = (x.to(self.device, non_blocking=True) for x in self.stored_rows())

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove < 0 and self.is_initialized:  # positive or 0: the checks and no-op of DynamicLayer
            self._keys, self._values = (x[..., :tokens_to_remove, :] for x in self.stored_rows())
        else:
            super().crop(tokens_to_remove)

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.get_seq_length() > 0:  # each batch row `repeats` times: each stored row serves `repeats` times more
            self.shared *= repeats

    def reorder_cache(self, beam_idx: torch.Tensor) -> None:
        if self.get_seq_length() == 0:
            return
        runs = beam_idx.to(self._keys.device) // self.shared
        if not torch.equal(runs, torch.arange(len(runs), device=runs.device) // self.shared):
            self.batch_select_indices(beam_idx)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.get_seq_length() == 0:
            return
        rows = torch.arange(self._keys.shape[0] * self.shared, device=self._keys.device)[indices] // self.shared
        keys, values = self.stored_rows()
        self._keys, self._values, self.shared = keys[rows], values[rows], 1


def one_row_per_sentence(attention, cross_cache: Cache, memory: torch.Tensor, attention_mask) -> torch.Tensor:
    """The encoder output `memory` (B, S, D) with one row per run of equal rows (B / g, S, D), the cache layer of
    `attention` made a `SharedRowsLayer(g)` that knows which batch rows read which stored row. Unchanged when no rows
    repeat, or when the cache or the kernel cannot take shared rows: a static cache has its batch size fixed; the
    eager and sdpa kernels take a (B, 1, T, S) mask or none, which can be cut to one row per sentence."""
    layer_idx, layers = attention.layer_idx, cross_cache.layers
    layer_class = (type(layers[layer_idx]) if layer_idx < len(layers)
                   else getattr(cross_cache, "layer_class_to_replicate", None))
    if not (
        layer_class in (DynamicLayer, SharedRowsLayer)  # SharedRowsLayer: one that `reset` emptied
        and not torch.compiler.is_compiling()  # finding the shared rows reads tensor values
        and attention.config._attn_implementation in ("eager", "sdpa")
        and (attention_mask is None or (isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 4))
    ):
        return memory
    shared = repeated_rows(memory, attention_mask)
    if shared == 1:
        return memory
    while len(layers) <= layer_idx:
        layers.append(DynamicLayer())
    layers[layer_idx] = SharedRowsLayer(shared)
    return memory[::shared]  # (B / shared, S, D)


def shared_rows_kernel(kernel):
    """`kernel` for queries (B, H, T, Dh) over keys/values (B / g, K, S, Dh) that g consecutive query rows share:
    the queries of the rows that share a row of keys, as one longer query (B / g, H, g * T, Dh), one kernel call.
    Cross-attention only (no causal mask). Returns (B, T, H, Dh) and the weights (B, H, T, S), as the kernel would."""

    def attend(module, query, key, value, attention_mask, **kwargs):
        batch, _, length, _ = query.shape
        shared = batch // key.shape[0]
        query = query.unflatten(0, (-1, shared)).transpose(1, 2).flatten(2, 3)  # (B / g, H, g * T, Dh)
        if attention_mask is not None:  # equal on the rows that share; (B / g, 1, T or g * T, S)
            attention_mask = attention_mask[::shared]
            if attention_mask.shape[2] > 1:
                attention_mask = attention_mask.repeat(1, 1, shared, 1)
        output, weights = kernel(module, query, key, value, attention_mask, **kwargs)
        output = output.reshape(batch, length, *output.shape[2:])  # (B, T, H, Dh): the rows in batch order already
        if weights is not None:
            weights = weights.unflatten(2, (shared, length)).transpose(1, 2).flatten(0, 1)  # (B, H, T, S)
        return output, weights

    return attend


class SharedRowsCrossAttention(MultiHeadAttention):
    """Encoder-decoder attention (`MultiHeadAttention` in its cross-attention role) whose cache holds a sentence's
    keys and values once for all its beams. The same parameters and checkpoint keys, the same outputs."""

    def memory_keys_values(self, memory, attention_mask, cache) -> tuple[torch.Tensor, torch.Tensor]:
        if cache is not None and cache.is_updated.get(self.layer_idx):  # later steps: the rows as stored
            layer = cache.cross_attention_cache.layers[self.layer_idx]
            if isinstance(layer, SharedRowsLayer):  # read without expanding them (`keys` would)
                return layer.stored_rows()
        elif cache is not None:  # first step: once per sentence
            memory = one_row_per_sentence(self, cache.cross_attention_cache, memory, attention_mask)  # (B / g, S, D)
        return super().memory_keys_values(memory, attention_mask, cache)

    def kernel(self, query: torch.Tensor, key: torch.Tensor, output_attentions: bool):
        kernel = super().kernel(query, key, output_attentions)
        if key.shape[0] < query.shape[0]:  # a sentence's beams read its one cached row
            kernel = shared_rows_kernel(kernel)
        return kernel
