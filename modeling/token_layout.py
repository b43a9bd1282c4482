"""Fast path: which rows of a (B, T) batch the position-wise work of a layer runs on, carried by one object.

    padded (`PADDED`, the plain computation): every position; hidden states are (B, T, D); every method is the
        identity.
    unpadded (`skip_padding`): the N real tokens of a padded batch, as (N, D) rows. Projections, feed-forward,
        norms and residuals run on them; only the attention kernel sees the (B, T) grid (`to_grid`), rebuilt from
        them. Outputs at padding positions come back as zeros (a padded model gives arbitrary values there).
    selected output rows (`output_positions`, BERT's sparse MLM prediction): the last layer computes its output
        (output projection, residual, norms, feed-forward) at M positions only; its attention still reads them all.

Plain computation it equals: the padded model, at the real tokens and at the selected positions. Proven by
`tests/test_fast_paths.py::test_bert_skip_padding_equals_padded_model`,
`test_transformer_skip_padding_equals_padded_model`, `test_bert_output_positions_equal_full_stack_rows`,
`test_mlm_masked_positions_path_same_loss_and_gradients_as_dense` and `test_token_layout_round_trip`.

Entered from one place: the models build it (`TokenLayout.for_batch`) and hand it to `LayerStack.forward`; layers
and attention call its methods without asking which layout it is.
"""

import torch


class TokenLayout:
    """The layout hidden states are in between layers: padded, unpadded, with or without selected output rows."""

    def __init__(self, grid: tuple[int, int] | None = None, indices: torch.Tensor | None = None,
                 output_rows: torch.Tensor | None = None):
        self.grid = grid  # (B, T) of the padded batch; None: padded layout
        self.indices = indices  # (N,) flat (B * T) positions of the real tokens; None: padded layout
        self.output_rows = output_rows  # (M,) rows of this layout whose output the last layer computes; None: all

    @classmethod
    def for_batch(
        cls, attention_mask: torch.Tensor | None, skip_padding: bool, output_positions: torch.Tensor | None = None
    ) -> "TokenLayout":
        """Unpadded when `skip_padding` is on and the 2-D mask (1 = token, 0 = padding) has padding, padded otherwise
        (and under torch.compile, where the number of real tokens would be data-dependent). `output_positions` (M,):
        flat indices into the (B * T) grid of the only positions whose final hidden state is wanted."""
        layout = PADDED
        two_d = attention_mask is not None and attention_mask.dim() == 2
        if skip_padding and two_d and not torch.compiler.is_compiling():
            token_mask = attention_mask.bool()
            if not bool(token_mask.all()):  # there is padding to skip
                layout = cls(token_mask.shape, token_mask.flatten().nonzero().squeeze(1))
        if output_positions is not None:
            layout = cls(layout.grid, layout.indices, layout._rows_of(output_positions))
        return layout

    def every_row(self) -> "TokenLayout":
        """The same layout, computing the output at every row (the layers before the last one)."""
        return self if self.output_rows is None else TokenLayout(self.grid, self.indices)

    def to_rows(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, ...) -> the layout's rows: (N, ...) real tokens unpadded, unchanged padded."""
        if self.indices is None:
            return x
        return x.flatten(0, 1).index_select(0, self.indices)

    def to_grid(self, x: torch.Tensor) -> torch.Tensor:
        """The layout's rows -> (B, T, ...), zeros at padding positions; unchanged padded."""
        if self.indices is None:
            return x
        grid = x.new_zeros(self.grid[0] * self.grid[1], *x.shape[1:])
        grid[self.indices] = x  # in place into a fresh tensor: no second copy of the grid
        return grid.view(*self.grid, *x.shape[1:])

    def select(self, x: torch.Tensor) -> torch.Tensor:
        """The layout's rows -> the (M, ...) rows whose output is wanted; unchanged without output positions."""
        if self.output_rows is None:
            return x
        return x.flatten(0, -2).index_select(0, self.output_rows)

    def output(self, x: torch.Tensor) -> torch.Tensor:
        """A stack's output: (B, T, D) again, or the (M, D) selected rows as they are."""
        return x if self.output_rows is not None else self.to_grid(x)

    def _rows_of(self, positions: torch.Tensor) -> torch.Tensor:
        """Flat (B * T) grid positions -> their rows in this layout."""
        if self.indices is None:
            return positions
        rows = torch.full((self.grid[0] * self.grid[1],), -1, dtype=torch.long, device=self.indices.device)
        rows[self.indices] = torch.arange(self.indices.numel(), device=self.indices.device)
        rows = rows[positions]
        if not torch.compiler.is_compiling() and bool((rows < 0).any()):
            raise ValueError("output_positions include padding positions")
        return rows


PADDED = TokenLayout()  # every position, no row selected: the plain computation
