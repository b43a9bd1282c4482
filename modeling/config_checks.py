"""The checks both families' configs run on their fields, each raising a ValueError that says what is wrong
(`d_model=100 is not divisible by num_heads=8`), so that a bad config fails when it is made, not deep in a forward.

A module of its own, not part of either configuration file: a saved folder carries its family's configuration file and
what that imports, and a BERT folder has no use for the encoder-decoder's configuration.
"""

POSITION_EMBEDDING_TYPES = ("sinusoidal", "learned")


def check_attention_shape(hidden_size: int, num_heads: int, num_key_value_heads: int, what: str) -> None:
    """Raise a ValueError that says what is wrong with a (hidden, heads, key/value heads) triple."""
    if hidden_size <= 0 or num_heads <= 0 or num_key_value_heads <= 0:
        raise ValueError(
            f"{what}: hidden size ({hidden_size}), attention heads ({num_heads}) and key/value heads "
            f"({num_key_value_heads}) must all be positive"
        )
    if hidden_size % num_heads:
        raise ValueError(
            f"{what}: hidden size {hidden_size} is not divisible by the number of attention heads {num_heads}; "
            f"choose heads that divide it (e.g. {[h for h in (1, 2, 4, 8, 12, 16) if hidden_size % h == 0]})"
        )
    if num_heads % num_key_value_heads:
        raise ValueError(
            f"{what}: {num_heads} attention heads are not divisible by num_key_value_heads={num_key_value_heads}; "
            "use a divisor of the head count (= heads: multi-head, 1: multi-query, in between: grouped-query)"
        )


def check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not supported; choose one of {list(choices)}")


def check_probability(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name}={value} must be a probability in [0, 1)")


def check_positive(config, *names: str) -> None:
    """Sizes and counts that a model cannot be built with when they are 0 or negative (a 0-layer stack or a 0-wide
    feed-forward network builds, and computes nonsense or divides by zero later)."""
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive integer")


def check_positive_float(name: str, value, optional: bool = False) -> None:
    if optional and value is None:
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
        raise ValueError(f"{name}={value!r} must be a positive number")
