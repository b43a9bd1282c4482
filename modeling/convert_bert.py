"""Weights both ways between Hugging Face BERT (`BertModel`, `BertForMaskedLM`, `BertForSequenceClassification`,
`BertForTokenClassification`) and ours. The architectures are the same computation; only names differ
(`attention.self.query` -> `self_attn.q_proj`, `attention.output.LayerNorm` -> `self_attn_norm`, ...: NAME_PAIRS).

    hf = BertForMaskedLM.from_pretrained("path/to/bert")
    ours = convert_bert_to_vanilla(hf)          # VanillaBertForMaskedLM, same logits
    back = convert_vanilla_to_bert(ours)        # BertForMaskedLM again

Not part of the Hub code (nothing in modeling_vanilla_bert.py imports it).
"""

import re

from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
    PreTrainedModel,
)

from .configuration_vanilla_bert import VanillaBertConfig
from .modeling_vanilla_bert import (
    VanillaBertForMaskedLM,
    VanillaBertForSequenceClassification,
    VanillaBertForTokenClassification,
    VanillaBertModel,
)

HF_TO_VANILLA_CLASS = {
    BertModel: VanillaBertModel,
    BertForMaskedLM: VanillaBertForMaskedLM,
    BertForSequenceClassification: VanillaBertForSequenceClassification,
    BertForTokenClassification: VanillaBertForTokenClassification,
}
VANILLA_TO_HF_CLASS = {ours: theirs for theirs, ours in HF_TO_VANILLA_CLASS.items()}

# Config fields with the same name and meaning in both configs.
SHARED_CONFIG_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "max_position_embeddings",
    "type_vocab_size",
    "initializer_range",
    "layer_norm_eps",
    "pad_token_id",
    "classifier_dropout",
    "tie_word_embeddings",
    "id2label",
    "label2id",
    "problem_type",
)

# (Hugging Face BERT name, our name) of each weight, as key fragments; {i} is the layer index.
NAME_PAIRS = (
    ("embeddings.word_embeddings.", "embeddings.embed_tokens."),
    ("embeddings.position_embeddings.", "embeddings.embed_positions."),
    ("embeddings.token_type_embeddings.", "embeddings.embed_token_types."),
    ("embeddings.LayerNorm.", "embeddings.norm."),
    ("encoder.layer.{i}.attention.self.query.", "encoder.layers.{i}.self_attn.q_proj."),
    ("encoder.layer.{i}.attention.self.key.", "encoder.layers.{i}.self_attn.k_proj."),
    ("encoder.layer.{i}.attention.self.value.", "encoder.layers.{i}.self_attn.v_proj."),
    ("encoder.layer.{i}.attention.output.dense.", "encoder.layers.{i}.self_attn.o_proj."),
    ("encoder.layer.{i}.attention.output.LayerNorm.", "encoder.layers.{i}.self_attn_norm."),
    ("encoder.layer.{i}.intermediate.dense.", "encoder.layers.{i}.ffn.fc1."),
    ("encoder.layer.{i}.output.dense.", "encoder.layers.{i}.ffn.fc2."),
    ("encoder.layer.{i}.output.LayerNorm.", "encoder.layers.{i}.ffn_norm."),
    ("cls.predictions.transform.dense.", "lm_head.dense."),
    ("cls.predictions.transform.LayerNorm.", "lm_head.norm."),
    ("cls.predictions.decoder.", "lm_head.decoder."),
)
# HF BERT keeps the MLM output bias under two tied names; ours has one, the projection's own bias.
HF_OUTPUT_BIAS, HF_DECODER_BIAS = "cls.predictions.bias", "cls.predictions.decoder.bias"
OUR_OUTPUT_BIAS = "lm_head.decoder.bias"


def _rename(key: str, to_vanilla: bool) -> str:
    """Rename one state-dict key from HF BERT to ours (`to_vanilla`) or back; other keys pass unchanged."""
    for hf_name, our_name in NAME_PAIRS:
        source, target = (hf_name, our_name) if to_vanilla else (our_name, hf_name)
        pattern = re.escape(source).replace(re.escape("{i}"), r"(?P<i>\d+)")
        match = re.search(pattern, key)
        if match:
            renamed = target.format(i=match.group("i")) if "{i}" in target else target
            return key[: match.start()] + renamed + key[match.end() :]
    return key


def vanilla_config_from_bert(config: BertConfig) -> VanillaBertConfig:
    position_type = getattr(config, "position_embedding_type", "absolute")
    if position_type != "absolute":
        raise ValueError(f"position_embedding_type={position_type!r}: only absolute (learned) positions convert")
    if config.is_decoder or config.add_cross_attention:
        raise ValueError("only encoder BERT converts (is_decoder=False, add_cross_attention=False)")
    fields = {name: getattr(config, name) for name in SHARED_CONFIG_FIELDS}
    return VanillaBertConfig(**fields, position_embedding_type="learned")


def bert_config_from_vanilla(config: VanillaBertConfig) -> BertConfig:
    unsupported = {
        "position_embedding_type": (config.position_embedding_type, "learned"),
        "normalize_before": (config.normalize_before, False),
        "num_key_value_heads": (config.num_key_value_heads or config.num_attention_heads, config.num_attention_heads),
    }
    for name, (value, bert_value) in unsupported.items():
        if value != bert_value:
            raise ValueError(f"{name}={value!r} has no equivalent in Hugging Face BERT (which has {bert_value!r})")
    fields = {name: getattr(config, name) for name in SHARED_CONFIG_FIELDS}
    return BertConfig(**fields)


def _check_type(model, mapping: dict, what: str) -> type:
    target = mapping.get(type(model))
    if target is None:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        raise ValueError(
            f"{what} converts {', '.join(cls.__name__ for cls in mapping)}; got {type(model).__name__} "
            f"(model_type={model_type!r}), a different architecture or head"
        )
    return target


def _build_like(target: type, config, source: PreTrainedModel) -> PreTrainedModel:
    if target in (BertModel, VanillaBertModel):
        return target(config, add_pooling_layer=source.pooler is not None)
    return target(config)


def convert_bert_to_vanilla(hf_model: PreTrainedModel) -> PreTrainedModel:
    """A Hugging Face BERT model -> the same model as ours (same head, dtype, train/eval mode, outputs)."""
    target = _check_type(hf_model, HF_TO_VANILLA_CLASS, "convert_bert_to_vanilla")
    model = _build_like(target, vanilla_config_from_bert(hf_model.config), hf_model)
    state = {_rename(key, to_vanilla=True): value for key, value in hf_model.state_dict().items()}
    if HF_OUTPUT_BIAS in state:
        state[OUR_OUTPUT_BIAS] = state.pop(HF_OUTPUT_BIAS)
    model.load_state_dict(state, strict=True)
    return model.to(hf_model.dtype).train(hf_model.training)


def convert_vanilla_to_bert(model: PreTrainedModel) -> PreTrainedModel:
    """One of our BERT models -> the Hugging Face BERT model with the same head and outputs."""
    target = _check_type(model, VANILLA_TO_HF_CLASS, "convert_vanilla_to_bert")
    if target is BertForSequenceClassification and model.config.classifier_pooling != "cls":
        raise ValueError(
            f"classifier_pooling={model.config.classifier_pooling!r} has no equivalent in Hugging Face BERT, whose "
            "sequence classifier reads the pooled [CLS] vector"
        )
    hf_model = _build_like(target, bert_config_from_vanilla(model.config), model)
    state = {_rename(key, to_vanilla=False): value for key, value in model.state_dict().items()}
    if HF_DECODER_BIAS in state:
        state[HF_OUTPUT_BIAS] = state[HF_DECODER_BIAS]
    hf_model.load_state_dict(state, strict=True)
    return hf_model.to(model.dtype).train(model.training)


__all__ = [
    "convert_bert_to_vanilla",
    "convert_vanilla_to_bert",
    "vanilla_config_from_bert",
    "bert_config_from_vanilla",
]
