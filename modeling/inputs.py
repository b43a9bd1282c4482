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


def check_tensor(value, name: str) -> None:
    """A model input must be a torch tensor: a list or a numpy array would fail on its first tensor method (an
    AttributeError that names no argument). None (not given) passes."""
    if value is not None and not isinstance(value, torch.Tensor):
        kind = type(value).__name__
        kind = kind if type(value).__module__ == "builtins" else f"{type(value).__module__}.{kind}"
        raise TypeError(
            f"{name} must be a torch.Tensor, got a {kind}: pass "
            f"torch.tensor({name}) (torch.from_numpy for a numpy array), or tokenize with return_tensors='pt'"
        )


def check_token_ids(input_ids: torch.Tensor | None, vocab_size: int, name: str = "input_ids") -> None:
    """Ids of another type, rank or range than the embedding table takes give an opaque error deep in torch (or a
    device assert): say what is wrong."""
    if input_ids is None:
        return
    check_tensor(input_ids, name)
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
    if isinstance(attention_mask, (list, tuple)) or type(attention_mask).__module__.startswith("numpy"):
        check_tensor(attention_mask, "attention_mask")
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


def check_length(length: int, max_positions: int, name: str = "input_ids") -> None:
    """A sequence longer than the model's position table: say how to shorten it, and that a [MASK] (fill-mask) past
    the cut cannot be predicted."""
    if length > max_positions and not torch.compiler.is_compiling():
        raise ValueError(
            f"{name}: a sequence of {length} positions is longer than max_position_embeddings={max_positions}; "
            f"tokenize with truncation=True, max_length={max_positions} (in a pipeline: tokenizer_kwargs="
            "{'truncation': True}) or split the text; a [MASK] to fill must lie within the first "
            f"{max_positions} tokens"
        )


def check_generation(config, generation_config, options: dict, inputs=None) -> None:
    """What an encoder-decoder's `generate(inputs, **options)` asks for, checked before it starts (a failure after
    minutes of decoding, or a message pointing at the wrong cause, helps nobody):

    - ids and masks that are not tensors (a list fails inside transformers on `.shape`);
    - a beam wider than the vocabulary: after the first step a sentence has at most vocab_size distinct hypotheses,
      and every extra beam costs time for nothing (`--num_beams 1000` with 300 tokens ran 100 times as long);
    - more target positions than the model has: `max_new_tokens` (with the decoder's start) past
      `max_position_embeddings` fails at that step. The source is not the limit here, the output's length is."""
    check_tensor(inputs, "input_ids")
    for name in ("input_ids", "attention_mask", "decoder_input_ids"):
        check_tensor(options.get(name), name)
    num_beams = options.get("num_beams", generation_config.num_beams) or 1
    vocab_size = config.get_text_config(decoder=True).vocab_size
    if num_beams > vocab_size:
        raise ValueError(
            f"num_beams={num_beams} is more than the {vocab_size} tokens of the vocabulary: a beam search keeps at "
            "most vocab_size distinct hypotheses after its first step, the other beams only cost time; use num_beams "
            f"of at most {vocab_size} (4 to 8 is usual)"
        )
    decoder_input_ids = options.get("decoder_input_ids")
    start = decoder_input_ids.shape[-1] if isinstance(decoder_input_ids, torch.Tensor) else 1
    positions = config.max_position_embeddings
    max_new_tokens = options.get("max_new_tokens", generation_config.max_new_tokens)
    past_the_table = (f"the decoder's sequence of {positions + 1} positions is longer than "
                      f"max_position_embeddings={positions}")
    if max_new_tokens is not None:  # transformers' rule: it wins over max_length
        if start + max_new_tokens - 1 > positions:
            raise ValueError(
                f"max_new_tokens={max_new_tokens} runs past the position table: at new token {positions - start + 2} "
                f"{past_the_table}; lower max_new_tokens to at most {positions - start + 1} (the input's length is "
                "not the limit here, the output's is)"
            )
    elif options.get("max_length") is not None and options["max_length"] - 1 > positions:
        raise ValueError(
            f"max_length={options['max_length']} runs past the position table: {past_the_table}; lower max_length "
            f"to at most {positions + 1}, or pass max_new_tokens of at most {positions - start + 1}"
        )
