"""The one place where our models meet names that transformers changes between releases.

transformers 5.24 renamed the cache argument and output field `past_key_values` to `cache`: its `generate()` passes
`cache=` to `forward` and reads `outputs["cache"]`, while earlier releases pass and read `past_key_values`. Our
models accept both names (the caller's release decides which one arrives) and return the cache under the field
that the installed release's output classes declare, so no release warns about our own code.
"""

import dataclasses
import warnings

from transformers.modeling_outputs import Seq2SeqLMOutput

# "cache" from transformers 5.24 on, "past_key_values" before: the field the installed output classes declare
CACHE_FIELD = "cache" if "cache" in {f.name for f in dataclasses.fields(Seq2SeqLMOutput)} else "past_key_values"


def cache_argument(cache=None, past_key_values=None):
    """The cache a caller passed, under either name (`cache`, 5.24 on; `past_key_values`, before). Where the
    installed release has renamed it, the old name works and warns, as transformers' own models do."""
    if cache is not None and past_key_values is not None and cache is not past_key_values:
        raise ValueError("pass the cache once: `cache` (transformers >= 5.24) or `past_key_values` (earlier), not both")
    if past_key_values is not None and CACHE_FIELD == "cache":  # as transformers' own models say it
        warnings.warn(
            "`past_key_values` is deprecated since transformers 5.24 (removed in 5.40): pass the cache as `cache=`",
            FutureWarning,
            stacklevel=3,
        )
    return cache if cache is not None else past_key_values


def cache_field(cache) -> dict:
    """`{field: cache}` for a ModelOutput of the installed release: `Seq2SeqLMOutput(..., **cache_field(c))`."""
    return {CACHE_FIELD: cache}


def output_cache(output):
    """The cache held by a model output, whatever the release (reads the field without the rename warning)."""
    return output.get(CACHE_FIELD)


__all__ = ["CACHE_FIELD", "cache_argument", "cache_field", "output_cache"]
