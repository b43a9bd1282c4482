"""Export saved models to CTranslate2, the inference engine translation models are deployed with.

`export_ctranslate2(model_dir, output_dir, quantization=...)` turns a saved folder into a CTranslate2 model
directory: model.bin, config.json, shared_vocabulary.json, plus the tokenizer files and the generation config,
which travel with it. The encoder-decoder becomes a `ctranslate2.Translator`, the BERT-style encoder a
`ctranslate2.Encoder`. The weights are read from the loaded model's `state_dict()` by their checkpoint keys; the
architecture from the config fields. Both go through CTranslate2's own converter (`TransformersConverter` with a
loader registered for our config classes), so quantization, validation and saving are CTranslate2's.

Translating with the exported model is serving, not modeling, and does not ship to the Hub: `CTranslate2Translator`
in `vanilla_transformer.scripts.serving.ctranslate2_translator`.

What maps onto what:

    ours                                   CTranslate2 (TransformerSpec)
    normalize_before False / True          pre_norm False / True; pre-LN's final_norm -> layer_norm
    q_proj, k_proj, v_proj (self)          self_attention.linear[0], fused [q; k; v]
    q_proj / k_proj, v_proj (cross)        attention.linear[0] / attention.linear[1], fused [k; v]
    num_key_value_heads                    num_heads_kv (1: multi-query, in between: grouped-query)
    embed_tokens (one shared table)        encoder and decoder embeddings; scale_embedding -> scale_embeddings
    lm_head (or the tied table), its bias  decoder.projection
    embed_positions                        position_encodings.encodings, always given as weights (below)
    layer_norm_eps                         config.layer_norm_epsilon

Positions. CTranslate2's built-in sinusoidal table is the [sin | cos] layout (dimension i = sin, dimension D/2 + i
= cos), while ours is the paper's interleaved one (dimension 2i = sin, 2i+1 = cos, section 3.5). Both count from
position 0 here. We never rely on the built-in table: the exporter writes our table, row for row, as the position
weights (a learned table the same way), so the engine adds exactly what our model adds. The tests check this
against our model's scores, and check that the built-in layout would not match.
"""

import functools
import json
from pathlib import Path

import numpy as np

# CTranslate2's activation enum for each of our (transformers ACT2FN) activation names it computes exactly.
ACTIVATIONS = {
    "relu": "RELU",
    "gelu": "GELU",  # erf form
    "gelu_python": "GELU",
    "gelu_new": "GELUTanh",
    "gelu_pytorch_tanh": "GELUTanh",
    "gelu_fast": "GELUTanh",
    "quick_gelu": "GELUSigmoid",  # x * sigmoid(1.702 x)
    "silu": "SWISH",
    "swish": "SWISH",
}
# Weight types of the exported model (CTranslate2's own names). float16 / int8_float16 / bfloat16 compute on a GPU;
# on a CPU, CTranslate2 runs a float16 model in float32.
QUANTIZATIONS = ("float32", "int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16", "float16", "bfloat16")
# Files of the saved folder that the exported directory carries (those present).
CARRIED_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json")
# Generation settings CTranslate2's beam search would not reproduce: any of them away from its default is refused.
UNSUPPORTED_GENERATION = {
    "do_sample": False,
    "num_beam_groups": 1,
    "diversity_penalty": 0.0,
    "repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0,
    "min_length": 0,
    "min_new_tokens": None,
    "bad_words_ids": None,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "suppress_tokens": None,
    "begin_suppress_tokens": None,
    "exponential_decay_length_penalty": None,
}
POOLER_KEYS = ("pooler.dense.weight", "pooler.dense.bias")


def sinusoidal_table(num_positions: int, dim: int) -> np.ndarray:
    """(P, D) float32: PE(pos, 2i) = sin(pos / 10000^(2i/D)), PE(pos, 2i+1) = cos(...), the paper's layout
    (section 3.5), computed in float64 as our model computes it."""
    position = np.arange(num_positions, dtype=np.float64)[:, None]  # (P, 1)
    inv_timescale = 10000.0 ** (-np.arange(0, dim, 2, dtype=np.float64) / dim)  # (D/2,)
    table = np.zeros((num_positions, dim), dtype=np.float64)
    table[:, 0::2] = np.sin(position * inv_timescale)
    table[:, 1::2] = np.cos(position * inv_timescale)
    return table.astype(np.float32)


def _activation(name: str, field: str):
    from ctranslate2.specs import common_spec

    if name not in ACTIVATIONS:
        raise ValueError(
            f"{field}={name!r} cannot be exported to CTranslate2, which computes {sorted(ACTIVATIONS)}; "
            "train with one of those"
        )
    return common_spec.Activation[ACTIVATIONS[name]]


def _kv_heads(config, heads: int):
    """num_heads_kv for CTranslate2: None for multi-head attention (one key/value head per query head)."""
    kv = getattr(config, "num_key_value_heads", None)
    return None if kv in (None, heads) else kv


def _positions(config, state_dict: dict, key: str) -> np.ndarray:
    if config.position_embedding_type == "learned":
        return state_dict[key]
    if config.position_embedding_type == "sinusoidal":
        width = config.d_model if hasattr(config, "d_model") else config.hidden_size
        return sinusoidal_table(config.max_position_embeddings, width)
    raise ValueError(f"position_embedding_type={config.position_embedding_type!r} cannot be exported")


@functools.cache
def _loaders():
    """Define and register the loaders (here, so that importing this module for translation alone does not import
    the converters, which import torch and transformers)."""
    from ctranslate2.converters import utils
    from ctranslate2.converters.transformers import ModelLoader, register_loader
    from ctranslate2.specs import common_spec, transformer_spec

    class StateDictLoader(ModelLoader):
        """Fills specs from a state dict by checkpoint key (ModelLoader's helpers take modules)."""

        def linear(self, spec, state_dict: dict, *prefixes: str) -> None:
            """One LinearSpec from one or more nn.Linear (several are fused along the output dimension)."""
            parts = []
            for prefix in prefixes:
                part = common_spec.LinearSpec()
                part.weight = state_dict[f"{prefix}.weight"]
                if f"{prefix}.bias" in state_dict:
                    part.bias = state_dict[f"{prefix}.bias"]
                parts.append(part)
            utils.fuse_linear(spec, parts)

        def norm(self, spec, state_dict: dict, prefix: str) -> None:
            spec.gamma = state_dict[f"{prefix}.weight"]
            spec.beta = state_dict[f"{prefix}.bias"]

        def attention(self, spec, state_dict: dict, prefix: str, self_attention: bool) -> None:
            q, k, v, o = (f"{prefix}.{name}" for name in ("q_proj", "k_proj", "v_proj", "o_proj"))
            if self_attention:
                self.linear(spec.linear[0], state_dict, q, k, v)
            else:  # cross-attention: the queries come from the decoder, keys and values from the encoder output
                self.linear(spec.linear[0], state_dict, q)
                self.linear(spec.linear[1], state_dict, k, v)
            self.linear(spec.linear[-1], state_dict, o)

        def layers(self, stack_spec, state_dict: dict, prefix: str, cross_attention: bool) -> None:
            for index, layer in enumerate(stack_spec.layer):
                p = f"{prefix}.layers.{index}"
                self.attention(layer.self_attention, state_dict, f"{p}.self_attn", self_attention=True)
                self.norm(layer.self_attention.layer_norm, state_dict, f"{p}.self_attn_norm")
                if cross_attention:
                    self.attention(layer.attention, state_dict, f"{p}.cross_attn", self_attention=False)
                    self.norm(layer.attention.layer_norm, state_dict, f"{p}.cross_attn_norm")
                self.linear(layer.ffn.linear_0, state_dict, f"{p}.ffn.fc1")
                self.linear(layer.ffn.linear_1, state_dict, f"{p}.ffn.fc2")
                self.norm(layer.ffn.layer_norm, state_dict, f"{p}.ffn_norm")
            if f"{prefix}.final_norm.weight" in state_dict:  # pre-LN
                self.norm(stack_spec.layer_norm, state_dict, f"{prefix}.final_norm")

        def vocabulary_tokens(self, config, tokenizer) -> list[str]:
            tokens = [token for token, _ in sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])]
            if len(tokens) > config.vocab_size:
                raise ValueError(
                    f"the tokenizer has {len(tokens)} tokens but the model's vocab_size={config.vocab_size}; "
                    "export the tokenizer the model was trained with"
                )
            # rows of the embedding table no token maps to (a vocabulary padded to a round size)
            return tokens + [f"<unused_{i}>" for i in range(config.vocab_size - len(tokens))]

    @register_loader("VanillaTransformerConfig")
    class VanillaTransformerLoader(StateDictLoader):
        """The encoder-decoder: a TransformerSpec (a `ctranslate2.Translator`)."""

        @property
        def architecture_name(self):
            return "AutoModelForSeq2SeqLM"

        def get_model_spec(self, model):
            config = model.config
            state_dict = model.state_dict()
            encoder = transformer_spec.TransformerEncoderSpec(
                config.encoder_layers,
                config.encoder_attention_heads,
                pre_norm=config.normalize_before,
                activation=_activation(config.activation_function, "activation_function"),
                num_heads_kv=_kv_heads(config, config.encoder_attention_heads),
            )
            decoder = transformer_spec.TransformerDecoderSpec(
                config.decoder_layers,
                config.decoder_attention_heads,
                pre_norm=config.normalize_before,
                activation=_activation(config.activation_function, "activation_function"),
                num_heads_kv=_kv_heads(config, config.decoder_attention_heads),
            )
            spec = transformer_spec.TransformerSpec(encoder, decoder)
            embeddings = state_dict["model.encoder.embed_tokens.weight"]  # (V, D): source and target share it
            for side, stack in (("encoder", encoder), ("decoder", decoder)):
                table = stack.embeddings[0] if side == "encoder" else stack.embeddings
                table.weight = embeddings
                stack.scale_embeddings = bool(config.scale_embedding)  # x sqrt(d_model), section 3.4
                stack.position_encodings.encodings = _positions(
                    config, state_dict, f"model.{side}.embed_positions.weight"
                )
                self.layers(stack, state_dict, f"model.{side}", cross_attention=side == "decoder")
            decoder.projection.weight = state_dict.get("lm_head.weight", embeddings)  # tied: the embedding table
            if "lm_head.bias" in state_dict:
                decoder.projection.bias = state_dict["lm_head.bias"]
            return spec

        def get_vocabulary(self, model, tokenizer):
            return self.vocabulary_tokens(model.config, tokenizer)

        def set_vocabulary(self, spec, tokens):
            spec.register_source_vocabulary(tokens)
            spec.register_target_vocabulary(tokens)

        def set_config(self, config, model, tokenizer):
            vocab = self.get_vocabulary(model, tokenizer)
            for name in ("eos", "decoder_start"):
                if getattr(model.config, f"{name}_token_id") is None:
                    raise ValueError(f"{name}_token_id is not set in the model config; CTranslate2 needs it")
            config.eos_token = vocab[model.config.eos_token_id]
            config.decoder_start_token = vocab[model.config.decoder_start_token_id]  # decoding starts from it
            bos = model.config.bos_token_id  # unused in decoding (no source bos is added); informative only
            config.bos_token = vocab[model.config.decoder_start_token_id if bos is None else bos]
            config.unk_token = tokenizer.unk_token if tokenizer.unk_token is not None else vocab[0]
            config.layer_norm_epsilon = model.config.layer_norm_eps
            # read by CTranslate2Translator (scripts/serving): the position table's length bounds source and
            # target lengths
            config.add_attribute("max_position_embeddings", model.config.max_position_embeddings)

    @register_loader("VanillaBertConfig")
    class VanillaBertLoader(StateDictLoader):
        """The BERT-style encoder: a TransformerEncoderModelSpec (a `ctranslate2.Encoder`), with the pooler when the
        checkpoint has one."""

        @property
        def architecture_name(self):
            return "AutoModel"

        def get_model_spec(self, model):
            config = model.config
            state_dict = model.state_dict()
            encoder = transformer_spec.TransformerEncoderSpec(
                config.num_hidden_layers,
                config.num_attention_heads,
                pre_norm=config.normalize_before,
                activation=_activation(config.hidden_act, "hidden_act"),
                layernorm_embedding=True,  # BERT normalises the embedding sum
                num_source_embeddings=2,  # tokens and segments, added
                embeddings_merge=common_spec.EmbeddingsMerge.ADD,
                num_heads_kv=_kv_heads(config, config.num_attention_heads),
            )
            pooler = all(key in state_dict for key in POOLER_KEYS)
            spec = transformer_spec.TransformerEncoderModelSpec(
                encoder, pooling_layer=pooler, pooling_activation=common_spec.Activation.Tanh
            )
            encoder.scale_embeddings = False  # BERT does not scale its embeddings
            encoder.embeddings[0].weight = state_dict["embeddings.embed_tokens.weight"]
            encoder.embeddings[1].weight = state_dict["embeddings.embed_token_types.weight"]
            encoder.position_encodings.encodings = _positions(config, state_dict, "embeddings.embed_positions.weight")
            self.norm(encoder.layernorm_embedding, state_dict, "embeddings.norm")
            self.layers(encoder, state_dict, "encoder", cross_attention=False)
            if pooler:
                self.linear(spec.pooler_dense, state_dict, "pooler.dense")
            return spec

        def get_vocabulary(self, model, tokenizer):
            return self.vocabulary_tokens(model.config, tokenizer)

        def set_vocabulary(self, spec, tokens):
            spec.register_vocabulary(tokens)

        def set_config(self, config, model, tokenizer):
            config.unk_token = tokenizer.unk_token
            config.layer_norm_epsilon = model.config.layer_norm_eps
            config.add_attribute("max_position_embeddings", model.config.max_position_embeddings)

    return VanillaTransformerLoader, VanillaBertLoader


def saved_keys(model_dir) -> set[str]:
    """The checkpoint keys of a saved folder (one safetensors file, or a sharded one's index)."""
    index = Path(model_dir) / "model.safetensors.index.json"
    if index.is_file():
        return set(json.loads(index.read_text())["weight_map"])
    from safetensors import safe_open

    with safe_open(Path(model_dir) / "model.safetensors", framework="np") as checkpoint:
        return set(checkpoint.keys())


def check_generation_config(model_dir) -> None:
    """Refuse a saved generation config that CTranslate2's decoding would not reproduce, naming the field."""
    path = Path(model_dir) / "generation_config.json"
    if not path.is_file():
        return
    settings = json.loads(path.read_text())
    for name, default in UNSUPPORTED_GENERATION.items():
        value = settings.get(name, default)
        if value != default and not (default is None and value in ([], 0)):
            raise ValueError(
                f"{path} sets {name}={value!r}; the CTranslate2 export decodes with beam search (num_beams, "
                f"length_penalty, max length) only. Set {name} back to {default!r} to export"
            )


def export_ctranslate2(model_dir, output_dir, quantization: str = "float32", force: bool = False) -> Path:
    """Export a saved VanillaTransformer (encoder-decoder) or VanillaBert folder to a CTranslate2 model directory.

    quantization: the weight type, one of QUANTIZATIONS ("int8" and "int8_float32" for CPUs, "float16" and
    "int8_float16" for GPUs). The tokenizer files and generation_config.json are copied alongside. Raises ValueError
    naming the config field for what CTranslate2 cannot express. Returns the output directory.
    """
    import ctranslate2.converters
    import torch
    import transformers

    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization={quantization!r}; choose one of {list(QUANTIZATIONS)}")
    model_dir, output_dir = Path(model_dir), Path(output_dir)
    config = transformers.AutoConfig.from_pretrained(model_dir)
    if config.model_type not in ("vanilla_transformer", "vanilla_bert"):
        raise ValueError(
            f"{model_dir} holds a {config.model_type!r} model; expected vanilla_transformer or vanilla_bert"
        )
    if config.model_type == "vanilla_transformer":
        check_generation_config(model_dir)
    _loaders()

    pooler = any(key.endswith(POOLER_KEYS[0]) for key in saved_keys(model_dir))

    class Converter(ctranslate2.converters.TransformersConverter):
        def load_model(self, model_class, model_name_or_path, **kwargs):
            kwargs["dtype"] = torch.float32  # exported weights are quantized from float32, whatever was saved
            if config.model_type == "vanilla_bert":
                kwargs["add_pooling_layer"] = pooler  # an MLM checkpoint has no trained pooler: export none
            verbosity = transformers.logging.get_verbosity()
            transformers.logging.set_verbosity_error()  # the load report lists the heads we leave out
            try:
                model, info = model_class.from_pretrained(model_name_or_path, output_loading_info=True, **kwargs)
            finally:
                transformers.logging.set_verbosity(verbosity)
            missing = sorted(info["missing_keys"])
            if missing:
                raise ValueError(f"{model_name_or_path} lacks weights the export needs: {missing}")
            return model.eval()

    carried = [name for name in CARRIED_FILES if (model_dir / name).is_file()]
    if "tokenizer.json" not in carried:
        raise ValueError(f"{model_dir} has no tokenizer.json; save the model with its tokenizer (save_for_hub)")
    converter = Converter(str(model_dir), copy_files=carried)
    converter.convert(str(output_dir), quantization=None if quantization == "float32" else quantization, force=force)
    return output_dir


__all__ = [
    "QUANTIZATIONS",
    "check_generation_config",
    "export_ctranslate2",
    "saved_keys",
    "sinusoidal_table",
]
