"""transformers' own common tests (`ModelTesterMixin`, `ConfigTester`) run against the encoder-decoder family.

The test files come from the installed transformers release's sdist, fetched at test time (see `hf_common.py`);
the tester below follows transformers' `MarianModelTester` / `BartModelTester`. Every test of the mixin that does
not apply to our model is skipped below with its reason.
"""

import inspect
import unittest

import torch

# hf_common.py: a helper module beside this file (not a test module), importable as pytest puts tests/ on sys.path
from hf_common import (
    config_arguments_check_reason,
    generation_tests_reason,
    listed_in_auto_tables,
    load_transformers_tests,
    run_config_tests,
)

hf = load_transformers_tests()  # skips this module (with the failed command) when the files cannot be fetched

from vanilla_transformer.modeling import (  # noqa: E402
    VanillaTransformerConfig,
    VanillaTransformerForConditionalGeneration,
    VanillaTransformerModel,
)

from vanilla_transformer.modeling.compat import output_cache  # noqa: E402

ids_tensor = hf.ids_tensor


class BeamSearchCacheCheck:
    """transformers' `GenerationTesterMixin.test_beam_search_generate_dict_outputs_use_cache`, written here for our
    tester while the sdist lacks that mixin (hf_common.py): its beam search (2 sentences, 2 beams, 3 new tokens, no
    early stop, every output asked for, the cache returned) and its expectation, the Cache API's documented shapes:
    one row per beam in every self-attention layer (batch * beams, heads, cached length, head dim) and every
    cross-attention layer (batch * beams, heads, source length, head dim)."""

    def test_beam_search_generate_dict_outputs_use_cache(self):
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        inputs = {name: inputs[name][:2] for name in ("input_ids", "attention_mask")}
        config.eos_token_id = None  # as the mixin: no sentence stops early, every beam has the full length
        config._attn_implementation = "eager"  # attention weights are asked for
        model = VanillaTransformerForConditionalGeneration(config).eval()
        out = model.generate(**inputs, do_sample=False, num_beams=2, early_stopping=False, length_penalty=2.0,
                             max_new_tokens=3, output_scores=True, output_logits=True, output_attentions=True,
                             output_hidden_states=True, return_dict_in_generate=True, use_cache=True)
        self.assertEqual(out.sequences.shape, (2, 1 + 3))
        cache, heads = output_cache(out), config.decoder_attention_heads
        head_dim, source_length = config.d_model // heads, self.model_tester.seq_length
        layers_and_lengths = ((cache.self_attention_cache.layers, 3), (cache.cross_attention_cache.layers, source_length))
        for layers, length in layers_and_lengths:
            self.assertEqual(len(layers), config.decoder_layers)
            for layer in layers:
                self.assertEqual((layer.keys.shape, layer.values.shape), ((2 * 2, heads, length, head_dim),) * 2)


# transformers' generate tests, when the sdist ships them (5.24 does not: see hf_common.py), else our writing of the
# one that checks the returned cache; the others are ours, in test_transformer_*.py, test_fast_paths.py,
# test_generation_contract.py and test_model_contract.py
GENERATION_MIXINS = (BeamSearchCacheCheck,) if generation_tests_reason(hf) else (hf.GenerationTesterMixin,)


class VanillaTransformerModelTester:
    """transformers' `MarianModelTester`, for our classes: a tiny config and random source/target ids."""

    def __init__(
        self,
        parent,
        batch_size=13,
        seq_length=7,
        is_training=True,
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        hidden_act="relu",
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        max_position_embeddings=100,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
    ):
        self.parent = parent
        self.batch_size = batch_size
        self.seq_length = seq_length
        self.is_training = is_training
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.max_position_embeddings = max_position_embeddings
        self.pad_token_id = pad_token_id
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.decoder_start_token_id = decoder_start_token_id

    def get_config(self):
        return VanillaTransformerConfig(
            vocab_size=self.vocab_size,
            d_model=self.hidden_size,
            encoder_layers=self.num_hidden_layers,
            decoder_layers=self.num_hidden_layers,
            encoder_attention_heads=self.num_attention_heads,
            decoder_attention_heads=self.num_attention_heads,
            encoder_ffn_dim=self.intermediate_size,
            decoder_ffn_dim=self.intermediate_size,
            activation_function=self.hidden_act,
            dropout=self.hidden_dropout_prob,
            attention_dropout=self.attention_probs_dropout_prob,
            max_position_embeddings=self.max_position_embeddings,
            pad_token_id=self.pad_token_id,
            bos_token_id=self.bos_token_id,
            eos_token_id=self.eos_token_id,
            decoder_start_token_id=self.decoder_start_token_id,
        )

    def prepare_config_and_inputs(self):
        # source: no special ids inside, <eos> last (as Marian's tester); target: any ids
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size).clamp(3)
        input_ids[:, -1] = self.eos_token_id
        decoder_input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size)
        config = self.get_config()
        inputs_dict = {
            "input_ids": input_ids,
            "attention_mask": input_ids.ne(config.pad_token_id),
            "decoder_input_ids": decoder_input_ids,
            "decoder_attention_mask": decoder_input_ids.ne(config.pad_token_id),
        }
        return config, inputs_dict

    def prepare_config_and_inputs_for_common(self):
        return self.prepare_config_and_inputs()

    def create_and_check_model(self, config, inputs_dict):
        model = VanillaTransformerModel(config).eval()
        result = model(**inputs_dict)
        self.parent.assertEqual(result.last_hidden_state.shape, (self.batch_size, self.seq_length, self.hidden_size))
        self.parent.assertEqual(
            result.encoder_last_hidden_state.shape, (self.batch_size, self.seq_length, self.hidden_size)
        )

    def create_and_check_for_conditional_generation(self, config, inputs_dict):
        model = VanillaTransformerForConditionalGeneration(config).eval()
        labels = ids_tensor([self.batch_size, self.seq_length], self.vocab_size)
        result = model(input_ids=inputs_dict["input_ids"], attention_mask=inputs_dict["attention_mask"], labels=labels)
        self.parent.assertEqual(result.logits.shape, (self.batch_size, self.seq_length, self.vocab_size))
        self.parent.assertEqual(result.loss.shape, ())

    def create_and_check_decoder_model_past_large_inputs(self, config, inputs_dict):
        """The cached decoder continues where the uncached one would (transformers' Marian/BART tester check)."""
        model = VanillaTransformerModel(config).eval()
        encoder_outputs = model.get_encoder()(inputs_dict["input_ids"], attention_mask=inputs_dict["attention_mask"])
        decoder_input_ids = inputs_dict["decoder_input_ids"]
        common = dict(attention_mask=inputs_dict["attention_mask"], encoder_outputs=encoder_outputs)
        outputs = model(decoder_input_ids=decoder_input_ids, use_cache=True, **common)
        cache = outputs.get("cache") if "cache" in outputs else outputs.get("past_key_values")
        next_tokens = ids_tensor((self.batch_size, 3), config.vocab_size)
        with_past = model(decoder_input_ids=next_tokens, use_cache=True, **common, **{_cache_argument(model): cache})
        without_past = model(decoder_input_ids=torch.cat([decoder_input_ids, next_tokens], dim=-1), **common)
        torch.testing.assert_close(
            with_past.last_hidden_state, without_past.last_hidden_state[:, -3:], atol=1e-3, rtol=1e-3
        )


def _cache_argument(model) -> str:
    """The forward argument that takes the cache: `cache` (transformers >= 5.24) or `past_key_values`."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


class VanillaTransformerModelTest(hf.ModelTesterMixin, *GENERATION_MIXINS, unittest.TestCase):
    all_model_classes = (VanillaTransformerModel, VanillaTransformerForConditionalGeneration)
    is_encoder_decoder = True
    # transformers runs this test only for models added from 2023 on (it reads the year of a copyright header,
    # which our files lack) or those that opt in: ours do, their _init_weights covers every weight and buffer
    test_can_init_all_missing_weights_before_2023 = True

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        # the mixin tells base models from heads, and picks labels, by these tables (see listed_in_auto_tables)
        cls.enterClassContext(
            listed_in_auto_tables(
                "vanilla_transformer",
                {
                    "MODEL_MAPPING_NAMES": "VanillaTransformerModel",
                    "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES": "VanillaTransformerForConditionalGeneration",
                },
            )
        )

    def setUp(self):
        self.model_tester = VanillaTransformerModelTester(self)

    def test_config(self):
        run_config_tests(
            hf, self, VanillaTransformerConfig, d_model=36, encoder_attention_heads=4, decoder_attention_heads=4
        )

    @unittest.skipIf(config_arguments_check_reason(hf), config_arguments_check_reason(hf))
    def test_config_arguments_init(self):
        hf.ConfigTester(self, config_class=VanillaTransformerConfig).check_config_arguments_init()

    # Skips of the mixin's tests that do not apply. transformers skips these too, but its reasons would be false
    # for our models ("does not support SDPA", "does not have position embeddings"), so they are restated here.
    @unittest.skip(reason="composite (multi-sub-config) models only; our config has no sub_configs, and "
                   "test_sdpa_can_dispatch_non_composite_models covers sdpa/eager dispatch")
    def test_sdpa_can_dispatch_composite_models(self):
        pass

    @unittest.skip(reason="our models do not implement resize_position_embeddings() (a fixed table of "
                   "max_position_embeddings), like most in-tree models (test_resize_position_embeddings=False)")
    def test_resize_position_vector_embeddings(self):
        pass

    @unittest.skipIf(generation_tests_reason(hf), generation_tests_reason(hf))
    def test_generation_tester_mixin_inheritance(self):
        super().test_generation_tester_mixin_inheritance()

    def test_model(self):
        self.model_tester.create_and_check_model(*self.model_tester.prepare_config_and_inputs())

    def test_for_conditional_generation(self):
        self.model_tester.create_and_check_for_conditional_generation(*self.model_tester.prepare_config_and_inputs())

    def test_decoder_model_past_with_large_inputs(self):
        self.model_tester.create_and_check_decoder_model_past_large_inputs(
            *self.model_tester.prepare_config_and_inputs()
        )


if __name__ == "__main__":
    unittest.main()
