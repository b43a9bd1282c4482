"""The generation contract: the cache our encoder-decoder hands out has the shapes transformers documents for every
model, `[batch_size, num_heads, seq_len, head_dim]` for each self- and cross-attention layer, one row per beam
(or per returned sequence), however it is stored inside (`modeling/beam_cache.py` keeps one row of cross-attention
keys/values per sentence while it searches). Code that reads or reorders a returned cache (assisted decoding, a
user's own loop) sees the same shapes as from any other model, and the outputs are those of the plain computation.

transformers' own check of this, `GenerationTesterMixin.test_beam_search_generate_dict_outputs_use_cache`, lives in
a file its sdist does not ship (see `hf_common.py`); the checks below are ours.
"""

import pytest
import torch

from vanilla_transformer.modeling import VanillaTransformerForConditionalGeneration, beam_cache
from vanilla_transformer.modeling.compat import output_cache


def tiny_model(tiny_transformer_config, attn="sdpa", **overrides):
    torch.manual_seed(0)
    config = tiny_transformer_config(pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1,
                                     **overrides)
    config._attn_implementation = attn
    return VanillaTransformerForConditionalGeneration(config).eval()


def sources(vocab: int, lengths: list[int]):
    """Right-padded random ids (>= 3: no special token inside) with their attention mask."""
    length = max(lengths)
    ids = torch.randint(3, vocab, (len(lengths), length), generator=torch.Generator().manual_seed(1))
    mask = (torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]).long()
    return ids.masked_fill(mask == 0, 0), mask


def expected_shapes(model, rows: int, target_length: int, source_length: int):
    """(self-attention, cross-attention) layer shapes per the Cache API: (rows, K, length, Dh)."""
    config = model.config
    heads = config.num_key_value_heads or config.decoder_attention_heads
    head_dim = config.d_model // config.decoder_attention_heads
    return (rows, heads, target_length, head_dim), (rows, heads, source_length, head_dim)


GENERATIONS = {  # name -> generate options; the rows of the returned cache: sentences * rows_per_sentence
    "beam 2": (dict(num_beams=2), 2),
    "beam 3, 2 returned": (dict(num_beams=3, num_return_sequences=2), 3),
    "sampling, 2 returned": (dict(do_sample=True, num_return_sequences=2), 2),
}


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("kv_heads", [None, 2])
@pytest.mark.parametrize("generation", list(GENERATIONS))
def test_returned_cache_has_one_row_per_beam_for_self_and_cross_attention(
    generation, kv_heads, attn, tiny_transformer_config
):
    """transformers' check of `generate(return_dict_in_generate=True)`: every layer of both caches holds one row
    per beam, (batch * num_beams, K, length, Dh); the cross-attention layers before the fix held one per sentence."""
    model = tiny_model(tiny_transformer_config, attn, num_key_value_heads=kv_heads)
    ids, mask = sources(model.config.vocab_size, [7, 4])
    options, per_sentence = GENERATIONS[generation]
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, return_dict_in_generate=True,
                             eos_token_id=None, **options)
    cache = output_cache(out)
    self_shape, cross_shape = expected_shapes(model, len(ids) * per_sentence, out.sequences.shape[1] - 1,
                                              ids.shape[1])
    assert len(cache.self_attention_cache.layers) == len(cache.cross_attention_cache.layers) == 2
    for layer in cache.self_attention_cache.layers:
        assert (layer.keys.shape, layer.values.shape) == (self_shape, self_shape)
    for layer in cache.cross_attention_cache.layers:
        assert (layer.keys.shape, layer.values.shape) == (cross_shape, cross_shape)
    for self_k, self_v, _, cross_k, cross_v, _ in cache:  # iterating the cache: the same tensors
        assert self_k.shape == self_v.shape == self_shape and cross_k.shape == cross_v.shape == cross_shape


def without_shared_rows(monkeypatch):
    """The plain computation: cross-attention keys/values projected and cached for every batch row."""
    monkeypatch.setattr(beam_cache, "one_row_per_sentence", lambda attention, cache, memory, mask: memory)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("options", [dict(num_beams=4), dict(num_beams=3, num_return_sequences=3, length_penalty=0.5)])
def test_beam_outputs_and_returned_cache_equal_those_without_shared_rows(
    options, attn, tiny_transformer_config, monkeypatch
):
    """The sharing changes nothing anyone sees: same sequences and scores, and the returned cache holds the
    values the plain computation (a row of keys/values per beam) holds, row for row."""
    model = tiny_model(tiny_transformer_config, attn)
    ids, mask = sources(model.config.vocab_size, [7, 3, 5])
    ids[1], mask[1] = ids[0], mask[0]  # two equal sentences: rows of different sentences equal too
    options = dict(options, max_new_tokens=6, return_dict_in_generate=True, output_scores=True,
                   no_repeat_ngram_size=2)
    with torch.no_grad():
        shared = model.generate(input_ids=ids, attention_mask=mask, **options)
        layers = output_cache(shared).cross_attention_cache.layers
        assert all(isinstance(layer, beam_cache.SharedRowsLayer) and layer.shared > 1 for layer in layers)
        with monkeypatch.context() as patch:
            without_shared_rows(patch)
            plain = model.generate(input_ids=ids, attention_mask=mask, **options)
    assert not any(isinstance(layer, beam_cache.SharedRowsLayer)
                   for layer in output_cache(plain).cross_attention_cache.layers)
    assert torch.equal(shared.sequences, plain.sequences)
    torch.testing.assert_close(shared.sequences_scores, plain.sequences_scores, rtol=1e-5, atol=1e-5)
    for ours, reference in zip(output_cache(shared), output_cache(plain)):  # per layer: self k, v, -, cross k, v, -
        for name, a, b in zip(["self keys", "self values", "", "cross keys", "cross values"], ours, reference):
            if b is not None:
                assert a.shape == b.shape, name
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=name)


def test_the_search_itself_keeps_one_row_per_sentence(tiny_transformer_config):
    """The speed stays: until someone reads the returned cache, its cross-attention layers hold one row per
    sentence (generate read none of them); the first read expands them."""
    model = tiny_model(tiny_transformer_config)
    ids, mask = sources(model.config.vocab_size, [6, 4])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, num_beams=4, max_new_tokens=4,
                             return_dict_in_generate=True)
    layer = output_cache(out).cross_attention_cache.layers[0]
    stored_keys, stored_values = layer.stored_rows()
    assert layer.shared == 4 and stored_keys.shape[0] == stored_values.shape[0] == 2
    keys = layer.keys  # the Cache API's view
    assert keys.shape[0] == 8 and layer.shared == 1
    assert torch.equal(keys, stored_keys.repeat_interleave(4, dim=0))
    assert layer.stored_rows()[0] is keys and layer.values.shape[0] == 8


@pytest.mark.parametrize("order", [[1, 0, 3, 2], [2, 3, 0, 1], [3, 3, 0, 2]])
def test_a_users_loop_reorders_the_returned_cache_by_hand(order, tiny_transformer_config):
    """A user's own beam loop: one forward over repeated sentences, then the cache's rows reordered by indexing
    its tensors (what DynamicLayer.reorder_cache does) and decoding goes on: the next logits equal an uncached
    forward over the reordered rows. With one row per sentence behind `keys`, the indexing read other rows."""
    model = tiny_model(tiny_transformer_config, "eager")
    sentences, sentence_mask = sources(model.config.vocab_size, [6, 4])
    source, mask = sentences.repeat_interleave(2, 0), sentence_mask.repeat_interleave(2, 0)  # rows a, a, b, b
    first = torch.full((4, 1), model.config.decoder_start_token_id)
    second = torch.randint(3, model.config.vocab_size, (4, 1), generator=torch.Generator().manual_seed(2))
    order = torch.tensor(order)
    with torch.no_grad():
        step = model(input_ids=source, attention_mask=mask, decoder_input_ids=first, use_cache=True)
        cache = output_cache(step)
        for layer in [*cache.self_attention_cache.layers, *cache.cross_attention_cache.layers]:
            assert layer.keys.shape[0] == 4
            layer.keys, layer.values = layer.keys[order], layer.values[order]
        cached = model(encoder_outputs=(step.encoder_last_hidden_state[order],), attention_mask=mask[order],
                       decoder_input_ids=second, cache=cache).logits[:, -1]
        full = model(input_ids=source[order], attention_mask=mask[order],
                     decoder_input_ids=torch.cat([first, second], 1), use_cache=False).logits[:, -1]
    torch.testing.assert_close(cached, full, rtol=1e-5, atol=1e-5)


def test_cache_api_operations_on_shared_rows_equal_those_on_one_row_per_beam(tiny_transformer_config):
    """Each Cache API operation on a layer that stores shared rows gives what it gives on the expanded layer:
    selecting rows, repeating them, cropping, moving them, resetting (then filled again, one row per batch row)."""
    from transformers.cache_utils import DynamicLayer

    keys, values = torch.randn(2, 2, 5, 3), torch.randn(2, 2, 5, 3)  # 2 sentences, 3 beams each

    def pair():
        shared, plain = beam_cache.SharedRowsLayer(3), DynamicLayer()
        shared.update(keys, values)
        plain.update(keys.repeat_interleave(3, 0), values.repeat_interleave(3, 0))
        return shared, plain

    operations = {
        "reorder within sentences": lambda layer: layer.reorder_cache(torch.tensor([2, 2, 0, 3, 5, 4])),
        "reorder across sentences": lambda layer: layer.reorder_cache(torch.tensor([3, 0, 0, 5, 1, 2])),
        "select rows": lambda layer: layer.batch_select_indices(torch.tensor([4, 1])),
        "repeat rows": lambda layer: layer.batch_repeat_interleave(2),
        "crop": lambda layer: layer.crop(-2),
        "offload": lambda layer: layer.offload(),
    }
    for name, operation in operations.items():
        shared, plain = pair()
        operation(shared)
        operation(plain)
        assert shared.get_seq_length() == plain.get_seq_length(), name
        assert torch.equal(shared.keys, plain.keys) and torch.equal(shared.values, plain.values), name
    shared, _ = pair()
    shared.reset()
    assert shared.get_seq_length() == 0 and shared.shared == 1
    shared.update(keys, values)  # after a reset: rows as they come, each its own
    assert torch.equal(shared.keys, keys)
