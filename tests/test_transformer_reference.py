"""Independent references for the Transformer: a Hugging Face MarianMTModel converted weight for weight, and
torch.nn.TransformerEncoderLayer / TransformerDecoderLayer with copied weights."""

import pytest
import torch
from torch import nn
from transformers import MarianConfig, MarianMTModel
from transformers.masking_utils import create_bidirectional_mask, create_causal_mask

from vanilla_transformer.modeling import VanillaTransformerForConditionalGeneration
from vanilla_transformer.modeling.convert_marian import convert_marian_to_vanilla, marian_to_paper_permutation
from vanilla_transformer.modeling.attention import MultiHeadAttention
from vanilla_transformer.modeling.embeddings import sinusoidal_table
from vanilla_transformer.modeling.layers import TransformerLayer

PAD = 98  # Marian's convention: the last id pads and starts decoding


def tiny_marian(**overrides) -> MarianMTModel:
    args = dict(
        vocab_size=99,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=37,
        decoder_ffn_dim=37,
        max_position_embeddings=64,
        scale_embedding=True,
        activation_function="swish",  # what opus-mt checkpoints use
        pad_token_id=PAD,
        decoder_start_token_id=PAD,
        eos_token_id=0,
        forced_eos_token_id=0,
        dropout=0.1,  # switched off by eval(); makes sure conversion does not depend on it
    )
    args.update(overrides)
    marian = MarianMTModel(MarianConfig(**args))
    randomize_(marian)
    return marian.eval()


@torch.no_grad()
def randomize_(model: nn.Module) -> None:
    """Non-trivial values everywhere (LayerNorms not 1/0, biases not 0, a real logits bias), so that a weight
    copied to the wrong place or left unpermuted changes the outputs. Position tables stay as they are."""
    for name, param in model.named_parameters():
        if "embed_positions" in name:
            continue
        if "norm" in name and name.endswith("weight"):
            param.normal_(1.0, 0.2)
        else:
            param.normal_(0.0, 0.3 if param.dim() > 1 else 0.1)
    for name, buffer in model.named_buffers():
        if name == "final_logits_bias":
            buffer.normal_(0.0, 0.5)


def source_batch() -> tuple[torch.Tensor, torch.Tensor]:
    input_ids = torch.randint(1, PAD, (3, 9))
    input_ids[1, 6:] = PAD  # padded sources
    input_ids[2, 3:] = PAD
    return input_ids, (input_ids != PAD).long()


def test_marian_sinusoids_are_ours_permuted():
    marian = tiny_marian()
    perm = marian_to_paper_permutation(32)
    torch.testing.assert_close(marian.model.encoder.embed_positions.weight[:, perm], sinusoidal_table(64, 32))
    # the permutation is not the identity: without it the tables differ
    assert not torch.allclose(marian.model.encoder.embed_positions.weight, sinusoidal_table(64, 32), atol=1e-2)


def test_converted_marian_gives_the_same_logits(tmp_path):
    marian = tiny_marian()
    model = convert_marian_to_vanilla(marian).eval()
    assert model.config.lm_head_bias and model.config.scale_embedding
    assert model.lm_head.weight is model.model.encoder.embed_tokens.weight
    input_ids, attention_mask = source_batch()
    labels = torch.randint(1, PAD, (3, 7))
    decoder_input_ids = marian.prepare_decoder_input_ids_from_labels(labels)

    expected = marian(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids)
    actual = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids)
    torch.testing.assert_close(actual.logits, expected.logits, atol=1e-5, rtol=1e-5)
    # the same decoder start and loss convention: labels alone give the same decoder inputs and loss
    torch.testing.assert_close(
        model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss,
        marian(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss,
        atol=1e-5,
        rtol=1e-5,
    )

    model.save_pretrained(tmp_path)  # the logits bias and the tied embeddings survive a round trip
    reloaded = VanillaTransformerForConditionalGeneration.from_pretrained(tmp_path).eval()
    logits = reloaded(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids).logits
    torch.testing.assert_close(logits, expected.logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_converted_marian_generates_the_same(num_beams):
    marian = tiny_marian()
    marian.generation_config.bad_words_ids = [[PAD]]  # as in the opus-mt checkpoints: copied by the conversion
    model = convert_marian_to_vanilla(marian).eval()
    input_ids, attention_mask = source_batch()
    # A random model with tied embeddings mostly repeats its last token; forbidding repeated bigrams makes the
    # generations differ from row to row and from greedy to beam, so that the comparison covers varied steps.
    settings = dict(
        max_new_tokens=12,
        num_beams=num_beams,
        do_sample=False,
        no_repeat_ngram_size=2,
        return_dict_in_generate=True,
        output_logits=True,
    )
    expected = marian.generate(input_ids=input_ids, attention_mask=attention_mask, **settings)
    actual = model.generate(input_ids=input_ids, attention_mask=attention_mask, **settings)
    torch.testing.assert_close(actual.sequences, expected.sequences, rtol=0, atol=0)
    # the raw logits of every step, computed through each model's own key/value cache
    torch.testing.assert_close(torch.stack(actual.logits), torch.stack(expected.logits), atol=1e-5, rtol=1e-5)
    if num_beams > 1:
        torch.testing.assert_close(actual.sequences_scores, expected.sequences_scores, atol=1e-5, rtol=1e-5)
    assert len({tuple(row) for row in expected.sequences.tolist()}) == 3  # a different output for each source


def test_marian_with_layerdrop_converts_exactly_for_inference():
    marian = tiny_marian(encoder_layerdrop=0.5, decoder_layerdrop=0.5)
    model = convert_marian_to_vanilla(marian).eval()
    input_ids, attention_mask = source_batch()
    decoder_input_ids = torch.full((3, 1), PAD)
    torch.testing.assert_close(
        model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids).logits,
        marian(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids).logits,
        atol=1e-5,
        rtol=1e-5,
    )


def test_unconvertible_models_raise(tiny_transformer_config):
    with pytest.raises(ValueError, match="expected a transformers.MarianMTModel"):
        convert_marian_to_vanilla(VanillaTransformerForConditionalGeneration(tiny_transformer_config()))
    with pytest.raises(ValueError, match="separate decoder vocabulary"):
        convert_marian_to_vanilla(tiny_marian(share_encoder_decoder_embeddings=False))
    with pytest.raises(ValueError, match="separate from its embeddings"):
        convert_marian_to_vanilla(tiny_marian(tie_word_embeddings=False))
    with pytest.raises(ValueError, match=r"eos_token_id=\[0, 5\]: the vanilla Transformer config takes a single"):
        convert_marian_to_vanilla(tiny_marian(eos_token_id=[0, 5]))
    assert convert_marian_to_vanilla(tiny_marian(eos_token_id=[0])).config.eos_token_id == 0
    marian = tiny_marian()
    with torch.no_grad():
        marian.model.decoder.embed_positions.weight.mul_(2)
    with pytest.raises(ValueError, match="decoder position table is not the standard sinusoidal table"):
        convert_marian_to_vanilla(marian)


# --- torch.nn reference layers ---------------------------------------------------------------------------------


@torch.no_grad()
def copy_attention(ours: MultiHeadAttention, theirs: nn.MultiheadAttention) -> None:
    """torch packs q, k, v into one in_proj; ours keeps three projections."""
    for proj, weight, bias in zip(
        (ours.q_proj, ours.k_proj, ours.v_proj), theirs.in_proj_weight.chunk(3), theirs.in_proj_bias.chunk(3)
    ):
        proj.weight.copy_(weight)
        proj.bias.copy_(bias)
    ours.o_proj.weight.copy_(theirs.out_proj.weight)
    ours.o_proj.bias.copy_(theirs.out_proj.bias)


@torch.no_grad()
def copy_layer(ours: TransformerLayer, theirs: nn.Module) -> None:
    copy_attention(ours.self_attn, theirs.self_attn)
    ours.ffn.fc1.load_state_dict(theirs.linear1.state_dict())
    ours.ffn.fc2.load_state_dict(theirs.linear2.state_dict())
    ours.self_attn_norm.load_state_dict(theirs.norm1.state_dict())
    if ours.cross_attn is None:
        ours.ffn_norm.load_state_dict(theirs.norm2.state_dict())
    else:
        copy_attention(ours.cross_attn, theirs.multihead_attn)
        ours.cross_attn_norm.load_state_dict(theirs.norm2.state_dict())
        ours.ffn_norm.load_state_dict(theirs.norm3.state_dict())


def our_layer(config, cross_attention: bool) -> TransformerLayer:
    return TransformerLayer(
        hidden_size=config.d_model,
        num_heads=4,
        num_key_value_heads=4,
        ffn_dim=37,
        activation="relu",
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        layer_norm_eps=1e-5,
        normalize_before=config.normalize_before,
        cross_attention=MultiHeadAttention if cross_attention else None,
        config=config,
        layer_idx=0,
    ).eval()


LAYER_VARIANTS = [
    pytest.param(False, "eager", id="post-LN-eager"),
    pytest.param(False, "sdpa", id="post-LN-sdpa"),
    pytest.param(True, "eager", id="pre-LN-eager"),
    pytest.param(True, "sdpa", id="pre-LN-sdpa"),
]


@pytest.mark.parametrize("normalize_before, attn_implementation", LAYER_VARIANTS)
def test_encoder_layer_equals_torch(normalize_before, attn_implementation, tiny_transformer_config):
    config = tiny_transformer_config(normalize_before=normalize_before, attn_implementation=attn_implementation)
    reference = nn.TransformerEncoderLayer(
        32, 4, dim_feedforward=37, dropout=0.0, activation="relu", batch_first=True, norm_first=normalize_before
    ).eval()
    randomize_(reference)
    layer = our_layer(config, cross_attention=False)
    copy_layer(layer, reference)

    x = torch.randn(3, 8, 32)  # (B, S, D)
    padding = torch.ones(3, 8, dtype=torch.long)
    padding[1, 5:] = 0
    padding[2, 2:] = 0
    mask = create_bidirectional_mask(config=config, inputs_embeds=x, attention_mask=padding)
    with torch.no_grad():
        expected = reference(x, src_key_padding_mask=padding == 0)
        actual, _, _ = layer(x, attention_mask=mask)
    # torch's fast path zeroes padded positions; only real tokens carry meaning
    real = padding.bool()
    torch.testing.assert_close(actual[real], expected[real], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("normalize_before, attn_implementation", LAYER_VARIANTS)
def test_decoder_layer_equals_torch(normalize_before, attn_implementation, tiny_transformer_config):
    config = tiny_transformer_config(normalize_before=normalize_before, attn_implementation=attn_implementation)
    reference = nn.TransformerDecoderLayer(
        32, 4, dim_feedforward=37, dropout=0.0, activation="relu", batch_first=True, norm_first=normalize_before
    ).eval()
    randomize_(reference)
    layer = our_layer(config, cross_attention=True)
    copy_layer(layer, reference)

    y = torch.randn(3, 6, 32)  # (B, T, D)
    memory = torch.randn(3, 8, 32)  # (B, S, D)
    memory_padding = torch.ones(3, 8, dtype=torch.long)
    memory_padding[1, 5:] = 0
    memory_padding[2, 2:] = 0
    causal_mask = create_causal_mask(config, y, None, None)  # the cache: 4th, renamed in 5.24
    memory_mask = create_bidirectional_mask(
        config=config, inputs_embeds=y, attention_mask=memory_padding, encoder_hidden_states=memory
    )
    with torch.no_grad():
        expected = reference(
            y,
            memory,
            tgt_mask=nn.Transformer.generate_square_subsequent_mask(6),
            memory_key_padding_mask=memory_padding == 0,
            tgt_is_causal=True,
        )
        actual, _, _ = layer(
            y,
            attention_mask=causal_mask,
            encoder_hidden_states=memory,
            encoder_attention_mask=memory_mask,
            is_causal=True,
        )
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)
