"""What every model forward does with its arguments before the model runs: input checks that say what is wrong
(instead of an opaque error deep in torch), and the output switches."""

import torch


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
