"""The checks both families' configs run on their fields, each raising a ValueError (`ConfigError`) that says what
is wrong (`d_model=100 is not divisible by num_heads=8`), so that a bad config fails when it is made, not deep in a
forward. A config.json is untrusted input (a folder from the Hub, a hand-edited file), so before any model is built:

- every field has its declared type (`"d_model": "128"` or `null` names the key and the type: `check_types`);
- a key that no config knows (a typo, `d_modle`) is warned about by name (`warn_unknown_keys`);
- the weights a model of the config would hold fit the machine: at most half of its memory, or the config is refused
  with the size it would take (`check_model_size`). `allow_large_model=True` (to the config, to `from_pretrained`, or
  to `AutoConfig` / `AutoModel*.from_pretrained`) or the environment variable
  VANILLA_TRANSFORMER_ALLOW_LARGE_MODELS=1 lifts that limit;
- a folder of another model type is refused, naming the class that loads it (`CheckedConfig.get_config_dict`).

A module of its own, not part of either configuration file: a saved folder carries its family's configuration file and
what that imports, and a BERT folder has no use for the encoder-decoder's configuration.
"""

import contextlib
import contextvars
import dataclasses
import difflib
import functools
import inspect
import os
import types
import warnings

POSITION_EMBEDDING_TYPES = ("sinusoidal", "learned")
ALLOW_LARGE_MODELS_ENV = "VANILLA_TRANSFORMER_ALLOW_LARGE_MODELS"
BYTES_PER_VALUE = 4  # float32: what a model is built in unless told otherwise
# Keys of config.json files that transformers itself writes or reads (releases 4 and 5) besides a config's fields
TRANSFORMERS_KEYS = frozenset(
    "add_cross_attention architectures attn_implementation auto_map bad_words_ids begin_suppress_tokens bos_token_id "
    "chunk_size_feed_forward cross_attention_hidden_size custom_pipelines decoder_start_token_id diversity_penalty "
    "do_sample dtype early_stopping encoder_no_repeat_ngram_size eos_token_id experts_implementation "
    "exponential_decay_length_penalty finetuning_task forced_bos_token_id forced_eos_token_id gradient_checkpointing "
    "id2label is_decoder is_encoder_decoder label2id length_penalty max_length min_length model_type name_or_path "
    "no_repeat_ngram_size num_beam_groups num_beams num_labels num_return_sequences output_attentions "
    "output_hidden_states output_scores pad_token_id per_layer_config prefix problem_type pruned_heads "
    "remove_invalid_values repetition_penalty return_dict return_dict_in_generate sep_token_id suppress_tokens "
    "task_specific_params temperature tf_legacy_loss tie_encoder_decoder tie_word_embeddings tokenizer_class top_k "
    "top_p torch_dtype torchscript transformers_version typical_p use_bfloat16 use_cache".split()
)
# How a folder of another model type becomes one of ours, with the same outputs: {(its model type, ours): how}
CONVERTERS = {
    ("bert", "vanilla_bert"): (
        "convert it (the same outputs): from vanilla_transformer.modeling.convert_bert import convert_bert_to_vanilla; "
        "model = convert_bert_to_vanilla(transformers.{architecture}.from_pretrained(folder)), then "
        "model.save_pretrained(new_folder) to load it with from_pretrained from then on"
    ),
    ("marian", "vanilla_transformer"): (
        "convert it (the same outputs): from vanilla_transformer.modeling.convert_marian import "
        "convert_marian_to_vanilla; model = convert_marian_to_vanilla(transformers.MarianMTModel.from_pretrained("
        "folder)), then model.save_pretrained(new_folder)"
    ),
}

_large_models_allowed = contextvars.ContextVar("large_models_allowed", default=False)


class ConfigError(ValueError):
    """A config that cannot make a model; the message names the field (or the folder) and the fix."""


class ConfigTypeError(ConfigError, TypeError):
    """A config field of the wrong type (`"d_model": "128"`)."""


class ConfigSizeError(ConfigError):
    """A config whose model would not fit in this machine's memory."""


class WrongModelTypeError(ConfigError):
    """A folder of another model type than the class loading it."""

    def __init__(self, message: str, model_type: str):
        super().__init__(message)
        self.model_type = model_type


class UnknownConfigKeyWarning(UserWarning):
    """A config key that neither the config nor transformers knows: a typo, or a folder of another version."""


def check_attention_shape(hidden_size: int, num_heads: int, num_key_value_heads: int, what: str) -> None:
    """Raise a ValueError that says what is wrong with a (hidden, heads, key/value heads) triple."""
    if hidden_size <= 0 or num_heads <= 0 or num_key_value_heads <= 0:
        raise ConfigError(
            f"{what}: hidden size ({hidden_size}), attention heads ({num_heads}) and key/value heads "
            f"({num_key_value_heads}) must all be positive"
        )
    if hidden_size % num_heads:
        raise ConfigError(
            f"{what}: hidden size {hidden_size} is not divisible by the number of attention heads {num_heads}; "
            f"choose heads that divide it (e.g. {[h for h in (1, 2, 4, 8, 12, 16) if hidden_size % h == 0]})"
        )
    if num_heads % num_key_value_heads:
        raise ConfigError(
            f"{what}: {num_heads} attention heads are not divisible by num_key_value_heads={num_key_value_heads}; "
            "use a divisor of the head count (= heads: multi-head, 1: multi-query, in between: grouped-query)"
        )


def check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not supported; choose one of {list(choices)}")


def check_probability(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"{name}={value} must be a probability in [0, 1)")


def check_positive(config, *names: str) -> None:
    """Sizes and counts that a model cannot be built with when they are 0 or negative (a 0-layer stack or a 0-wide
    feed-forward network builds, and computes nonsense or divides by zero later)."""
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{name}={value!r} must be a positive integer")


def check_positive_float(name: str, value, optional: bool = False) -> None:
    if optional and value is None:
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
        raise ConfigError(f"{name}={value!r} must be a positive number")


# --- untrusted config.json: types, unknown keys, sizes, model type ---------------------------------------------------


def _declared_fields(config) -> dict[str, tuple]:
    """{field: the types it may hold} of the fields our config classes declare (`vocab_size: int`, `init_std: float |
    None`), read from their annotations; transformers' own fields are left to transformers."""
    declared = {}
    for klass in reversed(type(config).__mro__):
        if issubclass(klass, CheckedConfig) and klass is not CheckedConfig:
            for name, annotation in inspect.get_annotations(klass).items():
                declared[name] = annotation.__args__ if isinstance(annotation, types.UnionType) else (annotation,)
    return declared


def _has_type(value, kind) -> bool:
    if kind is type(None):
        return value is None
    if kind is bool:
        return isinstance(value, bool)
    if kind in (int, float):  # True is not a size, 0.5 is not a count; an int is a float
        return isinstance(value, (int, float) if kind is float else int) and not isinstance(value, bool)
    return isinstance(value, kind)


_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "null"}


def check_types(config) -> None:
    """Every field our config declares holds a value of its declared type: a config.json with `"d_model": "128"` or
    `null` is named here, not met as a TypeError on `<=` in a check or a layer."""
    for name, kinds in _declared_fields(config).items():
        value = getattr(config, name)
        if not any(_has_type(value, kind) for kind in kinds):
            expected = " or ".join(_TYPE_NAMES.get(kind, kind.__name__) for kind in kinds)
            raise ConfigTypeError(
                f"{name}={value!r} ({'null' if value is None else type(value).__name__}) must be {expected}: fix "
                f"the \"{name}\" key of config.json (or the argument)"
            )


@functools.lru_cache(maxsize=1)
def _generation_keys() -> frozenset:
    from transformers import GenerationConfig

    return frozenset(GenerationConfig().to_dict())


def warn_unknown_keys(config, extra: dict) -> None:
    """Warn, by name, about the keys among `extra` (what a config was given beyond its fields) that neither the config
    nor transformers knows: a typo (`d_modle`) would otherwise be kept as an attribute that nothing reads, and the
    model built with the default value."""
    known = {field.name for field in dataclasses.fields(config)} | set(config.attribute_map) | TRANSFORMERS_KEYS
    unknown = [key for key in extra if not key.startswith("_") and key not in known and key not in _generation_keys()]
    for key in unknown:
        close = difflib.get_close_matches(key, sorted(_declared_fields(config)), n=1)
        warnings.warn(
            f"{type(config).__name__}: unknown key {key!r} (={extra[key]!r}), which no part of the model reads"
            + (f"; did you mean {close[0]!r}?" if close else "; remove it, or check the field names in the docstring"),
            UnknownConfigKeyWarning,
            stacklevel=4,
        )


def layer_values(hidden_size: int, key_value_width: int, ffn_dim: int, attentions: int = 1) -> int:
    """The weights of one layer (`layers.TransformerLayer`): per attention the q/o projections (hidden x hidden), the
    k/v projections (hidden x key/value width), their biases and its LayerNorm; the feed-forward network and its
    LayerNorm."""
    attention = 2 * hidden_size * (hidden_size + key_value_width) + 4 * hidden_size + 2 * key_value_width
    return attentions * attention + 2 * hidden_size * ffn_dim + ffn_dim + 3 * hidden_size


def machine_memory() -> int | None:
    """Bytes of physical memory of this machine; None where it cannot be read."""
    try:
        import psutil  # a dependency of the package; a Hub folder's code may run without it

        return int(psutil.virtual_memory().total)
    except ImportError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


@contextlib.contextmanager
def large_models_allowed(allowed: bool = True):
    """Within it, configs larger than the machine's memory limit are accepted (`from_pretrained(...,
    allow_large_model=True)` loads through it)."""
    token = _large_models_allowed.set(bool(allowed) or _large_models_allowed.get())
    try:
        yield
    finally:
        _large_models_allowed.reset(token)


def _gigabytes(size: int) -> str:
    return f"{size / 1e9:,.1f} GB"


def sinusoidal_build_bytes(position_embedding_type: str, positions: int, width: int) -> int:
    """The memory that computing a sinusoidal position table takes for a moment (`embeddings.sinusoidal_table`, in
    float64: the table and the sin/cos of one half), beyond the float32 table kept."""
    return 16 * positions * width if position_embedding_type == "sinusoidal" else 0


def check_model_size(parts: dict[str, int], allow_large_model: bool = False, build_bytes: int = 0) -> None:
    """Refuse a config whose model would take more than half of this machine's memory, before anything is allocated:
    `parts` is {what (with the fields it comes from): number of values} of its weights and position tables, kept in
    float32; `build_bytes` what building them takes for a moment besides. A config.json with
    `max_position_embeddings` 10^10 would otherwise make `from_pretrained` try to allocate terabytes (or swap the
    machine to a halt first)."""
    lifted = os.environ.get(ALLOW_LARGE_MODELS_ENV, "").strip().lower() not in ("", "0", "false", "no")
    if allow_large_model or lifted or _large_models_allowed.get():
        return
    values = sum(parts.values())
    size = values * BYTES_PER_VALUE + build_bytes
    memory = machine_memory()
    if memory is None or size <= memory // 2:
        return
    largest = max(parts, key=parts.get)
    building = f", and {_gigabytes(build_bytes)} more to compute its sinusoidal positions" if build_bytes > 10**8 else ""
    raise ConfigSizeError(
        f"a model of this config holds about {values:,} values ({_gigabytes(values * BYTES_PER_VALUE)} in float32"
        f"{building}), more than this machine allows: half of its {_gigabytes(memory)} of memory, "
        f"{_gigabytes(memory // 2)}. Most of it is {largest}, "
        f"{parts[largest]:,} values. A config.json is untrusted input: check those fields. To build it anyway, pass "
        f"allow_large_model=True (to the config or to from_pretrained) or set {ALLOW_LARGE_MODELS_ENV}=1"
    )


def check_model_type(config_class, config_dict: dict, source) -> None:
    """A folder's config.json must be of `config_class`'s model type: another family's folder would otherwise build a
    randomly initialised model of the default size, with transformers' load report as the only sign."""
    model_type = config_dict.get("model_type")
    if not model_type or model_type == config_class.model_type:
        return
    architectures = config_dict.get("architectures")
    architectures = [a for a in architectures if isinstance(a, str)] if isinstance(architectures, list) else []
    auto_map = config_dict.get("auto_map") if isinstance(config_dict.get("auto_map"), dict) else {}
    auto = [name for name, reference in auto_map.items()
            if name != "AutoConfig" and str(reference).endswith(tuple(f".{a}" for a in architectures))]
    if (model_type, config_class.model_type) in CONVERTERS:
        how = CONVERTERS[model_type, config_class.model_type].format(architecture=(architectures or ["BertModel"])[0])
    elif architectures:
        how = f"load it with {architectures[0]}.from_pretrained" + (
            f" or {auto[0]}.from_pretrained(..., trust_remote_code=True)" if auto else "")
    else:
        how = "load it with the class of its model type (AutoModel.from_pretrained picks it)"
    raise WrongModelTypeError(
        f"{source} holds a {model_type!r} model ({', '.join(architectures) or 'no architectures recorded'}), not a "
        f"{config_class.model_type!r} one: {how}",
        model_type,
    )


class CheckedConfig:
    """Mixed into both families' configs (before `PreTrainedConfig`): loading from a folder refuses another model type,
    takes `allow_large_model=True`, and names the folder in the refusals of `ConfigError`. The per-field checks run
    in each config's `__post_init__`."""

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path, **kwargs):
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        check_model_type(cls, config_dict, pretrained_model_name_or_path)
        return config_dict, kwargs

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        with large_models_allowed(kwargs.pop("allow_large_model", False)):
            return super().from_dict(config_dict, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        try:
            return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        except ConfigError as error:
            source = str(pretrained_model_name_or_path)
            if error.args and not str(error.args[0]).startswith(source):
                error.args = (f"{source}/config.json: {error.args[0]}", *error.args[1:])
            raise
