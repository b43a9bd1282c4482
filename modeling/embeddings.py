"""Embeddings and positions, "Attention Is All You Need" (Vaswani et al. 2017), sections 3.4 and 3.5.

Shapes: T sequence length, D model width (d_model), P number of positions.
"""

import torch
from torch import nn
from transformers import initialization as init


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
