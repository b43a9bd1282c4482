"""The Transformer's defining properties, each checked on a tiny model: causality, caching, padding, attention
kernels and head sharing, attention distributions, positions, the LayerNorm placement, validation, gradients."""

import json
import math

import pytest
import torch
from safetensors import safe_open
from torch import nn
from transformers.cache_utils import StaticCache

from vanilla_transformer.modeling import VanillaTransformerConfig, VanillaTransformerForConditionalGeneration
from vanilla_transformer.modeling.compat import output_cache

PAD, START, EOS = 0, 1, 2
ATTENTION_KERNELS = ["eager", "sdpa"]


@pytest.fixture
def tiny_model(tiny_transformer_config):
    """A factory: tiny_model(**overrides) -> a tiny model in eval mode, with LayerNorms and biases moved away from 1
    and 0 so that each one matters."""

    def make(**overrides) -> VanillaTransformerForConditionalGeneration:
        model = VanillaTransformerForConditionalGeneration(tiny_transformer_config(**overrides))
        with torch.no_grad():
            for name, param in model.named_parameters():
                if param.dim() == 1 and "norm" in name and name.endswith("weight"):
                    param.normal_(1.0, 0.2)
                elif param.dim() == 1:
                    param.normal_(0.0, 0.1)
        return model.eval()

    return make


def source_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """The same three sources at every call (their own generator), two of them padded."""
    input_ids = torch.randint(3, 99, (3, 9), generator=torch.Generator().manual_seed(1))  # (B, S)
    input_ids[1, 6:] = PAD
    input_ids[2, 3:] = PAD
    return input_ids, (input_ids != PAD).long()


def target_batch(length: int = 7) -> torch.Tensor:
    decoder_input_ids = torch.randint(3, 99, (3, length), generator=torch.Generator().manual_seed(2))  # (B, T)
    decoder_input_ids[:, 0] = START
    return decoder_input_ids


# --- the decoder does not look at the future ------------------------------------------------------------------


@pytest.mark.parametrize("attn_implementation", ATTENTION_KERNELS)
def test_changing_target_token_t_changes_only_logits_from_t_on(attn_implementation, tiny_model):
    model = tiny_model(attn_implementation=attn_implementation)
    input_ids, attention_mask = source_batch()
    decoder_input_ids = target_batch(8)
    with torch.no_grad():
        base = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids).logits
        for t in (0, 3, 7):
            changed = decoder_input_ids.clone()
            changed[:, t] = (changed[:, t] - 3 + 1) % 96 + 3  # another ordinary token
            logits = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=changed).logits
            torch.testing.assert_close(logits[:, :t], base[:, :t], atol=1e-6, rtol=0)
            difference = (logits[:, t:] - base[:, t:]).abs().amax(dim=-1)  # (B, T - t)
            assert (difference > 1e-4).all(), f"changing token {t} left some logits at or after {t} unchanged"


# --- incremental decoding with a key/value cache --------------------------------------------------------------


def test_teacher_forced_logits_equal_step_by_step_cached_decoding(tiny_model):
    model = tiny_model()
    input_ids, attention_mask = source_batch()
    decoder_input_ids = target_batch(7)
    with torch.no_grad():
        parallel = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids)
        encoder_outputs = model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask)
        cache, steps = None, []
        for t in range(decoder_input_ids.shape[1]):  # one token at a time, as generate() does
            step = model(
                encoder_outputs=encoder_outputs,
                attention_mask=attention_mask,
                decoder_input_ids=decoder_input_ids[:, t : t + 1],
                cache=cache,
                use_cache=True,
            )
            cache = output_cache(step)
            steps.append(step.logits)
    assert cache.get_seq_length() == 7
    torch.testing.assert_close(torch.cat(steps, dim=1), parallel.logits, atol=1e-5, rtol=1e-5)


def test_generate_with_dynamic_static_and_no_cache_agree_with_teacher_forcing(tiny_model):
    model = tiny_model()
    input_ids, attention_mask = source_batch()
    settings = dict(max_new_tokens=10, min_new_tokens=10, return_dict_in_generate=True, output_logits=True)
    runs = {
        "dynamic": model.generate(input_ids=input_ids, attention_mask=attention_mask, **settings),
        "static": model.generate(
            input_ids=input_ids, attention_mask=attention_mask, cache_implementation="static", **settings
        ),
        "none": model.generate(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **settings),
    }
    assert isinstance(output_cache(runs["static"]).self_attention_cache, StaticCache)
    sequences = runs["dynamic"].sequences  # (B, 1 + 10), starting with the decoder start token
    with torch.no_grad():
        teacher_forced = model(
            input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=sequences[:, :-1]
        ).logits
    for name, run in runs.items():
        torch.testing.assert_close(run.sequences, sequences, rtol=0, atol=0, msg=name)
        torch.testing.assert_close(torch.stack(run.logits, dim=1), teacher_forced, atol=1e-5, rtol=1e-5, msg=name)


# --- padding, attention kernels, shared key/value heads -------------------------------------------------------


@pytest.mark.parametrize("attn_implementation", ATTENTION_KERNELS)
def test_a_sequence_alone_equals_the_same_sequence_padded_in_a_batch(attn_implementation, tiny_model):
    model = tiny_model(attn_implementation=attn_implementation)
    input_ids, attention_mask = source_batch()
    decoder_input_ids = target_batch(5)
    with torch.no_grad():
        batch = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids)
        for row, length in ((1, 6), (2, 3)):
            source, target = input_ids[row : row + 1, :length], decoder_input_ids[row : row + 1]  # no padding
            alone = model(input_ids=source, decoder_input_ids=target)
            torch.testing.assert_close(
                batch.encoder_last_hidden_state[row, :length], alone.encoder_last_hidden_state[0], atol=1e-5, rtol=1e-5
            )
            torch.testing.assert_close(batch.logits[row], alone.logits[0], atol=1e-5, rtol=1e-5)


def test_eager_and_sdpa_give_the_same_outputs(tiny_model):
    eager = tiny_model(attn_implementation="eager")
    sdpa = tiny_model(attn_implementation="sdpa")
    sdpa.load_state_dict(eager.state_dict())
    assert (eager.config._attn_implementation, sdpa.config._attn_implementation) == ("eager", "sdpa")
    input_ids, attention_mask = source_batch()
    labels = target_batch(6)
    labels[2, 4:] = -100  # a padded target
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    with torch.no_grad():
        expected = eager(**inputs)
        actual = sdpa(**inputs)
        torch.testing.assert_close(actual.logits, expected.logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(actual.loss, expected.loss, atol=1e-6, rtol=1e-6)
        sdpa.set_attn_implementation("eager")  # switching after construction
        assert sdpa.config._attn_implementation == "eager"
        torch.testing.assert_close(sdpa(**inputs).logits, expected.logits, atol=1e-6, rtol=1e-6)


def multi_head_copy(model: VanillaTransformerForConditionalGeneration, tiny_model):
    """A multi-head model with `model`'s weights, each key/value head repeated for the query heads of its group:
    the model `model` stands for if grouped-query and multi-query attention are right."""
    head_dim, groups = 32 // 4, model.model.encoder.layers[0].self_attn.num_key_value_groups
    assert groups > 1, "the model must share key/value heads"
    mha = tiny_model()
    state = {}
    for name, value in model.state_dict().items():
        if ".k_proj." in name or ".v_proj." in name:
            # (K * Dh, ...) -> (K, Dh, ...) -> each kv head once per query head of its group -> (H * Dh, ...)
            value = value.unflatten(0, (-1, head_dim)).repeat_interleave(groups, dim=0).flatten(0, 1)
        state[name] = value
    mha.load_state_dict(state, strict=True)
    return mha


@pytest.mark.parametrize("attn_implementation", ATTENTION_KERNELS)
@pytest.mark.parametrize("kv_heads", [2, 1], ids=["grouped-query", "multi-query"])
def test_shared_key_value_heads_equal_multi_head_attention_with_repeated_heads(
    attn_implementation, kv_heads, tiny_model
):
    shared = tiny_model(num_key_value_heads=kv_heads, attn_implementation=attn_implementation)  # 4 query heads
    mha = multi_head_copy(shared, tiny_model)
    mha.set_attn_implementation(attn_implementation)
    input_ids, attention_mask = source_batch()
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=target_batch())
    with torch.no_grad():
        torch.testing.assert_close(shared(**inputs).logits, mha(**inputs).logits, atol=1e-5, rtol=1e-5)
    # decoding with a cache: the same tokens as the multi-head model
    settings = dict(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=6, no_repeat_ngram_size=2)
    assert torch.equal(shared.generate(**settings), mha.generate(**settings))


def test_multi_query_attention_caches_one_key_value_head(tiny_model):
    input_ids, attention_mask = source_batch()
    decoder_input_ids = target_batch(5)
    caches = {}
    for kv_heads in (None, 1):
        model = tiny_model(num_key_value_heads=kv_heads)
        with torch.no_grad():
            output = model(
                input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids, use_cache=True
            )
        caches[kv_heads] = output_cache(output)
    self_keys = caches[1].self_attention_cache.layers[0].keys
    cross_keys = caches[1].cross_attention_cache.layers[0].keys
    assert self_keys.shape == (3, 1, 5, 8) and cross_keys.shape == (3, 1, 9, 8)  # (B, K=1, T or S, Dh)
    assert caches[None].self_attention_cache.layers[0].keys.shape == (3, 4, 5, 8)  # (B, H, T, Dh)


# --- attention weights are probability distributions ----------------------------------------------------------


@pytest.mark.parametrize("attn_implementation", ATTENTION_KERNELS)
def test_attention_rows_are_distributions_over_visible_positions(attn_implementation, tiny_model):
    model = tiny_model(attn_implementation=attn_implementation)
    input_ids, attention_mask = source_batch()
    decoder_input_ids = target_batch(6)
    with torch.no_grad():
        output = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
            output_attentions=True,
        )
    assert model.config._attn_implementation == attn_implementation  # returning weights does not switch the model
    padded_source = (attention_mask == 0)[:, None, None, :]  # (B, 1, 1, S)
    future = torch.ones(6, 6, dtype=torch.bool).triu(diagonal=1)  # (T, T), above the diagonal
    for name, weights, shape in (
        ("encoder self", output.encoder_attentions, (3, 4, 9, 9)),
        ("decoder self", output.decoder_attentions, (3, 4, 6, 6)),
        ("cross", output.cross_attentions, (3, 4, 6, 9)),
    ):
        assert len(weights) == 2, name
        for layer_weights in weights:  # (B, H, T or S, S or T)
            assert layer_weights.shape == shape, name
            torch.testing.assert_close(layer_weights.sum(-1), torch.ones(shape[:-1]), msg=name)
            if name == "decoder self":
                assert (layer_weights[..., future] == 0).all(), "the decoder attends to a future position"
                assert (layer_weights[..., ~future] > 0).all()
            else:
                assert (layer_weights.masked_select(padded_source) == 0).all(), f"{name} attention reads padding"


# --- positions ------------------------------------------------------------------------------------------------


def papers_sinusoids(num_positions: int, d_model: int) -> torch.Tensor:
    """Section 3.5, written out: PE(pos, 2i) = sin(pos / 10000^(2i/d_model)), PE(pos, 2i+1) = cos(...)."""
    table = [[0.0] * d_model for _ in range(num_positions)]
    for pos in range(num_positions):
        for i in range(d_model // 2):
            angle = pos / 10000 ** (2 * i / d_model)
            table[pos][2 * i] = math.sin(angle)
            table[pos][2 * i + 1] = math.cos(angle)
    return torch.tensor(table)


def test_sinusoidal_table_is_the_papers_formula_and_survives_save_and_load(tmp_path, tiny_model):
    model = tiny_model()
    expected = papers_sinusoids(64, 32)
    torch.testing.assert_close(model.model.encoder.embed_positions.weight, expected)
    torch.testing.assert_close(model.model.decoder.embed_positions.weight, expected)

    model.save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", framework="pt") as saved:
        assert not [key for key in saved.keys() if "embed_positions" in key]  # recomputed, never stored
    # from_pretrained builds on the meta device: the table must be refilled, not left as garbage
    reloaded = VanillaTransformerForConditionalGeneration.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(reloaded.model.encoder.embed_positions.weight, expected)
    torch.testing.assert_close(reloaded.model.decoder.embed_positions.weight, expected)
    input_ids, attention_mask = source_batch()
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=target_batch())
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, model(**inputs).logits)


def test_learned_positions_train_and_save(tmp_path, tiny_model):
    model = tiny_model(position_embedding_type="learned").train()
    table = model.model.encoder.embed_positions.weight
    assert isinstance(table, nn.Parameter) and table.requires_grad
    before = table.detach().clone()
    input_ids, attention_mask = source_batch()
    labels = target_batch()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(5):
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert not torch.allclose(table[:9], before[:9])  # the positions used were trained
    torch.testing.assert_close(table[9:], before[9:])  # positions never seen got no gradient

    model.eval().save_pretrained(tmp_path)
    reloaded = VanillaTransformerForConditionalGeneration.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(reloaded.model.encoder.embed_positions.weight, table)
    with torch.no_grad():
        inputs = dict(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        torch.testing.assert_close(reloaded(**inputs).logits, model(**inputs).logits)


# --- LayerNorm placement --------------------------------------------------------------------------------------


def test_pre_ln_stacks_end_with_a_layer_norm_and_post_ln_stacks_do_not(tiny_transformer_config):
    pre_ln = VanillaTransformerForConditionalGeneration(tiny_transformer_config(normalize_before=True)).eval()
    post_ln = VanillaTransformerForConditionalGeneration(tiny_transformer_config()).eval()
    for stack in ("encoder", "decoder"):
        assert isinstance(getattr(pre_ln.model, stack).final_norm, nn.LayerNorm)
        assert f"model.{stack}.final_norm.weight" in pre_ln.state_dict()
        assert getattr(post_ln.model, stack).final_norm is None
    assert not [key for key in post_ln.state_dict() if "final_norm" in key]

    input_ids, attention_mask = source_batch()
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=target_batch())
    with torch.no_grad():
        output = pre_ln(**inputs, output_hidden_states=True)
        for states in (output.encoder_last_hidden_state, output.decoder_hidden_states[-1]):
            # unit LayerNorm weights, zero biases at initialisation: each position is normalised
            torch.testing.assert_close(states.mean(-1), torch.zeros(states.shape[:-1]), atol=1e-5, rtol=0)
            torch.testing.assert_close(states.var(-1, unbiased=False), torch.ones(states.shape[:-1]), atol=1e-3, rtol=0)
        pre_ln.model.decoder.final_norm.bias.fill_(0.5)  # the final norm is on the path to the logits
        assert not torch.allclose(pre_ln(**inputs).logits, output.logits)


# --- validation -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "arguments, message",
    [
        (dict(d_model=30), "hidden size 30 is not divisible by the number of attention heads 4"),
        (dict(num_key_value_heads=3), "4 attention heads are not divisible by num_key_value_heads=3"),
        (dict(position_embedding_type="rotary"), "position_embedding_type='rotary' is not supported"),
        (dict(activation_function="reluu"), "activation_function='reluu' is not supported"),
        (dict(dropout=1.5), "dropout=1.5 must be a probability"),
        (dict(pad_token_id=99), "pad_token_id=99 is outside the vocabulary"),
    ],
)
def test_config_validation_says_what_is_wrong(arguments, message, tiny_transformer_config):
    with pytest.raises(ValueError, match=message):
        tiny_transformer_config(**arguments)


def test_config_round_trips_through_json(tmp_path, tiny_transformer_config):
    config = tiny_transformer_config(num_key_value_heads=2, normalize_before=True, position_embedding_type="learned")
    config.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["num_key_value_heads"] == 2
    reloaded = VanillaTransformerConfig.from_pretrained(tmp_path)
    assert reloaded.to_diff_dict() == config.to_diff_dict()


def test_token_ids_outside_the_vocabulary_are_rejected(tiny_model):
    model = tiny_model()
    input_ids, attention_mask = source_batch()
    decoder_input_ids = target_batch()
    too_large = input_ids.clone()
    too_large[0, 0] = 99
    with pytest.raises(ValueError, match="input_ids contains token id 99, outside the vocabulary of 99"):
        model(input_ids=too_large, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids)
    decoder_input_ids[1, 2] = 150
    with pytest.raises(ValueError, match="decoder_input_ids contains token id 150"):
        model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids)
    label_padding = input_ids.masked_fill(attention_mask == 0, -100)
    with pytest.raises(ValueError, match="-100 label padding was passed as input"):
        model(input_ids=label_padding, decoder_input_ids=target_batch())


@pytest.mark.parametrize("position_embedding_type", ["sinusoidal", "learned"])
def test_sequences_longer_than_the_position_table_are_rejected(position_embedding_type, tiny_model):
    model = tiny_model(position_embedding_type=position_embedding_type)
    short, long = torch.randint(3, 99, (1, 5)), torch.randint(3, 99, (1, 65))
    with pytest.raises(ValueError, match="sequence of 65 positions is longer than max_position_embeddings=64"):
        model(input_ids=long, decoder_input_ids=short)
    with pytest.raises(ValueError, match="sequence of 65 positions is longer than max_position_embeddings=64"):
        model(input_ids=short, decoder_input_ids=long)
    # generation that runs past the table fails the same way, at the step that leaves it
    with pytest.raises(ValueError, match="sequence of 65 positions is longer than max_position_embeddings=64"):
        model.generate(input_ids=short, max_new_tokens=70, min_new_tokens=70)


def test_labels_of_the_wrong_shape_are_rejected(tiny_model):
    model = tiny_model()
    input_ids, attention_mask = source_batch()
    labels = target_batch()
    with pytest.raises(ValueError, match=r"labels must be \(batch, target_length\) token ids, got shape \(21,\)"):
        model(input_ids=input_ids, attention_mask=attention_mask, labels=labels.flatten())
    with pytest.raises(ValueError, match="labels must be"):
        model(input_ids=input_ids, attention_mask=attention_mask, labels=labels[..., None])
    with pytest.raises(ValueError, match="labels hold 2 sequences but input_ids hold 3"):
        model(input_ids=input_ids, attention_mask=attention_mask, labels=labels[:2])
    with pytest.raises(ValueError, match=r"decoder_input_ids \(3, 6\) and labels \(3, 7\) must have the same shape"):
        model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, decoder_input_ids=labels[:, :6])
    labels[0, 1] = 99
    with pytest.raises(ValueError, match="labels contain ids outside the vocabulary of 99"):
        model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)


# --- gradients ------------------------------------------------------------------------------------------------

GRADIENT_VARIANTS = [
    pytest.param({}, id="paper"),
    pytest.param(
        dict(normalize_before=True, position_embedding_type="learned", lm_head_bias=True, num_key_value_heads=2),
        id="pre-LN-learned-bias-GQA",
    ),
]


def loss_and_gradients(model: VanillaTransformerForConditionalGeneration) -> tuple[torch.Tensor, dict]:
    input_ids, attention_mask = source_batch()
    labels = target_batch()
    labels[2, 5:] = -100
    model.zero_grad()
    loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
    loss.backward()
    return loss.detach(), {name: param.grad for name, param in model.named_parameters()}


@pytest.mark.parametrize("overrides", GRADIENT_VARIANTS)
def test_gradients_reach_every_parameter(overrides, tiny_model):
    model = tiny_model(**overrides).train()
    _, gradients = loss_and_gradients(model)
    assert "model.encoder.embed_tokens.weight" in gradients  # the tied lm_head.weight is the same parameter
    for name, gradient in gradients.items():
        assert gradient is not None, f"{name} got no gradient"
        assert gradient.abs().sum() > 0, f"{name} got a zero gradient"


def test_gradient_checkpointing_gives_the_same_gradients(tiny_model):
    model = tiny_model().train()
    loss, gradients = loss_and_gradients(model)
    gradients = {name: gradient.clone() for name, gradient in gradients.items()}

    # the name since transformers 5.23 (gradient_checkpointing_enable before, deprecated since)
    (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
    layers = [*model.model.encoder.layers, *model.model.decoder.layers]
    assert all(layer.gradient_checkpointing for layer in layers)
    calls = []
    model.model.encoder.layers[0].ffn.register_forward_hook(lambda *_: calls.append(1))
    checkpointed_loss, checkpointed = loss_and_gradients(model)
    assert len(calls) == 2, "the layer was not recomputed in the backward pass: checkpointing is off"
    torch.testing.assert_close(checkpointed_loss, loss)
    for name, gradient in gradients.items():
        torch.testing.assert_close(checkpointed[name], gradient, atol=1e-6, rtol=1e-5, msg=name)
