"""Each fast path of modeling/ gives the results of the plain path it stands for (its module's docstring names the
test here that proves it): the token layouts (`token_layout.py`: no work on padding, output computed at selected
rows only), the CPU dropout and the eager kernel CPU training runs (`fast_dropout.py`), the MLM loss in vocabulary
chunks (`fast_loss.py`), the feed-forward in blocks of rows (`fast_inference.py`), beam search's
cross-attention cached once per sentence (`beam_cache.py`); and a compiled model against the eager one."""

import pytest
import torch

from vanilla_transformer.modeling import (
    VanillaBertForMaskedLM,
    VanillaBertForSequenceClassification,
    VanillaBertModel,
    VanillaTransformerForConditionalGeneration,
    fast_inference,
)
from vanilla_transformer.modeling import attention as attention_module
from vanilla_transformer.modeling.attention import eager_attention_forward
from vanilla_transformer.modeling.beam_cache import repeated_rows
from vanilla_transformer.modeling.compat import output_cache
from vanilla_transformer.modeling.fast_dropout import Dropout, apply_dropout
from vanilla_transformer.modeling.fast_loss import linear_cross_entropy
from vanilla_transformer.modeling.layers import FeedForward
from vanilla_transformer.modeling.token_layout import PADDED, TokenLayout


def padded_batch(vocab: int, lengths: list[int], pad_id: int = 0):
    """Right-padded random ids (ids >= 4 are ordinary tokens) with their attention mask."""
    length = max(lengths)
    input_ids = torch.randint(4, vocab, (len(lengths), length))
    mask = torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]
    return input_ids.masked_fill(~mask, pad_id), mask.long()


def same_weights(model_class, config, **changes):
    """The model twice, the second with config fields changed and the first one's weights."""
    first = model_class(config)
    second = model_class(config.__class__(**{**config.to_dict(), **changes}))
    second.load_state_dict(first.state_dict())
    return first, second


def test_token_layout_round_trip():
    _, mask = padded_batch(50, [5, 2, 7, 1])
    x = torch.randn(4, 7, 3)
    layout = TokenLayout.for_batch(mask, skip_padding=True)
    tokens = layout.to_rows(x)
    assert tokens.shape == (int(mask.sum()), 3)
    assert torch.equal(tokens, x[mask.bool()])  # the real tokens, in batch order
    assert torch.equal(layout.to_grid(tokens), x * mask[..., None])  # zeros at the padding
    assert layout.select(tokens) is tokens and layout.output(tokens).shape == x.shape
    # the padded layout: every method is the identity
    for padded in (PADDED, TokenLayout.for_batch(torch.ones(3, 4), skip_padding=True),
                   TokenLayout.for_batch(mask, skip_padding=False)):
        assert padded is PADDED
        assert all(f(x) is x for f in (padded.to_rows, padded.to_grid, padded.select, padded.output))
    # selected output rows: grid positions -> rows of the layout, the rows before the last layer unselected
    positions = torch.tensor([0, 7, 15, 21])  # (0, 0), (1, 0), (2, 1), (3, 0): real tokens
    for skip_padding in (False, True):
        selecting = TokenLayout.for_batch(mask, skip_padding, output_positions=positions)
        rows = selecting.to_rows(x)
        assert torch.equal(selecting.select(rows), x.flatten(0, 1)[positions])
        assert selecting.every_row().select(rows) is rows
    with pytest.raises(ValueError, match="padding"):
        TokenLayout.for_batch(mask, skip_padding=True, output_positions=torch.tensor([6]))  # (0, 6) is padding


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_bert_skip_padding_equals_padded_model(attn, tiny_bert_config):
    config = tiny_bert_config(attn_implementation=attn, num_labels=3)
    plain, fast = same_weights(VanillaBertForSequenceClassification, config, skip_padding=True)
    input_ids, mask = padded_batch(config.vocab_size, [9, 3, 6, 1])
    labels = torch.tensor([0, 2, 1, 2])
    out_plain = plain(input_ids=input_ids, attention_mask=mask, labels=labels, output_hidden_states=True)
    out_fast = fast(input_ids=input_ids, attention_mask=mask, labels=labels, output_hidden_states=True)
    real = mask.bool()
    for h_plain, h_fast in zip(out_plain.hidden_states, out_fast.hidden_states):
        torch.testing.assert_close(h_fast[real], h_plain[real], rtol=1e-5, atol=1e-5)
    assert torch.all(out_fast.hidden_states[-1][~real] == 0)  # padding positions: zeros, documented
    torch.testing.assert_close(out_fast.logits, out_plain.logits, rtol=1e-5, atol=1e-5)
    out_plain.loss.backward()
    out_fast.loss.backward()
    for (name, p_plain), p_fast in zip(plain.named_parameters(), fast.parameters()):
        torch.testing.assert_close(p_fast.grad, p_plain.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_bert_sparse_prediction_with_skip_padding_equals_dense_padded_loss(tiny_bert_config):
    config = tiny_bert_config()
    plain, fast = same_weights(VanillaBertForMaskedLM, config, skip_padding=True, sparse_prediction=True)
    input_ids, mask = padded_batch(config.vocab_size, [12, 5, 8])
    labels = torch.full_like(input_ids, -100)
    chosen = (torch.rand(input_ids.shape) < 0.3) & mask.bool()
    labels[chosen] = input_ids[chosen]
    dense = plain(input_ids=input_ids, attention_mask=mask, labels=labels)
    fast_out = fast(input_ids=input_ids, attention_mask=mask, labels=labels)
    torch.testing.assert_close(fast_out.loss, dense.loss)
    torch.testing.assert_close(fast_out.logits, dense.logits[labels != -100], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("normalize_before", [False, True])
@pytest.mark.parametrize("skip_padding", [False, True])
def test_bert_output_positions_equal_full_stack_rows(normalize_before, skip_padding, tiny_bert_config):
    """The last layer computed at some positions only gives the full stack's hidden states there."""
    config = tiny_bert_config(normalize_before=normalize_before, skip_padding=skip_padding)
    model = VanillaBertModel(config).eval()
    input_ids, mask = padded_batch(config.vocab_size, [9, 4, 7])
    positions = mask.flatten().nonzero().squeeze(1)[torch.tensor([0, 3, 5, 9, 14])]
    full = model(input_ids=input_ids, attention_mask=mask).last_hidden_state
    part = model(input_ids=input_ids, attention_mask=mask, output_positions=positions)
    assert part.last_hidden_state.shape == (5, config.hidden_size) and part.pooler_output is None
    torch.testing.assert_close(part.last_hidden_state, full.flatten(0, 1)[positions], rtol=1e-5, atol=1e-5)
    if skip_padding:
        padding = (mask.flatten() == 0).nonzero()[0]
        with pytest.raises(ValueError, match="padding"):
            model(input_ids=input_ids, attention_mask=mask, output_positions=padding)
    with pytest.raises(ValueError, match="output_hidden_states"):
        model(input_ids=input_ids, attention_mask=mask, output_positions=positions, output_hidden_states=True)


@pytest.mark.parametrize("normalize_before", [False, True])
def test_mlm_masked_positions_path_same_loss_and_gradients_as_dense(normalize_before, tiny_bert_config):
    """Sparse prediction runs the last layer at the masked positions only: loss and every gradient unchanged."""
    config = tiny_bert_config(normalize_before=normalize_before, hidden_dropout_prob=0.0,
                              attention_probs_dropout_prob=0.0)
    dense, sparse = same_weights(VanillaBertForMaskedLM, config, sparse_prediction=True)
    input_ids, mask = padded_batch(config.vocab_size, [12, 12, 12, 12])
    labels = torch.full_like(input_ids, -100)
    chosen = torch.rand(input_ids.shape) < 0.2
    chosen[0, 0] = True
    labels[chosen] = input_ids[chosen]
    dense_out, sparse_out = dense(input_ids=input_ids, labels=labels), sparse(input_ids=input_ids, labels=labels)
    torch.testing.assert_close(sparse_out.loss, dense_out.loss)
    torch.testing.assert_close(sparse_out.logits, dense_out.logits[labels != -100], rtol=1e-5, atol=1e-5)
    dense_out.loss.backward()
    sparse_out.loss.backward()
    for (name, d), s in zip(dense.named_parameters(), sparse.parameters()):
        torch.testing.assert_close(s.grad, d.grad, rtol=1e-4, atol=1e-6, msg=name)
    # asking for every layer's hidden states takes the full stack; same loss
    with_states = sparse(input_ids=input_ids, labels=labels, output_hidden_states=True)
    torch.testing.assert_close(with_states.loss, dense_out.loss)
    assert len(with_states.hidden_states) == config.num_hidden_layers + 1


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_transformer_skip_padding_equals_padded_model(attn, tiny_transformer_config):
    config = tiny_transformer_config(attn_implementation=attn)
    plain, fast = same_weights(VanillaTransformerForConditionalGeneration, config, skip_padding=True)
    source, source_mask = padded_batch(config.vocab_size, [7, 3, 5])
    labels, label_mask = padded_batch(config.vocab_size, [4, 6, 2])
    labels = labels.masked_fill(~label_mask.bool(), -100)
    out_plain = plain(input_ids=source, attention_mask=source_mask, labels=labels)
    out_fast = fast(input_ids=source, attention_mask=source_mask, labels=labels)
    target = labels != -100
    torch.testing.assert_close(out_fast.logits[target], out_plain.logits[target], rtol=1e-5, atol=1e-5)
    real = source_mask.bool()
    torch.testing.assert_close(
        out_fast.encoder_last_hidden_state[real], out_plain.encoder_last_hidden_state[real], rtol=1e-5, atol=1e-5
    )
    torch.testing.assert_close(out_fast.loss, out_plain.loss)
    out_plain.loss.backward()
    out_fast.loss.backward()
    for (name, p_plain), p_fast in zip(plain.named_parameters(), fast.parameters()):
        torch.testing.assert_close(p_fast.grad, p_plain.grad, rtol=1e-4, atol=1e-6, msg=name)
    plain.eval(), fast.eval()
    with torch.no_grad():
        options = dict(max_new_tokens=6, num_beams=2, no_repeat_ngram_size=2)
        assert torch.equal(
            fast.generate(input_ids=source, attention_mask=source_mask, **options),
            plain.generate(input_ids=source, attention_mask=source_mask, **options),
        )


def test_skip_padding_keeps_labels_ignored_inside_the_target(tiny_transformer_config):
    """-100 inside a target (not only as trailing padding) must not drop those decoder inputs."""
    config = tiny_transformer_config()
    plain, fast = same_weights(VanillaTransformerForConditionalGeneration, config, skip_padding=True)
    source, source_mask = padded_batch(config.vocab_size, [5, 5])
    labels = torch.randint(4, config.vocab_size, (2, 6))
    labels[0, 1:3] = -100  # ignored in the middle
    labels[1, 4:] = -100  # trailing padding
    torch.testing.assert_close(
        fast(input_ids=source, attention_mask=source_mask, labels=labels).loss,
        plain(input_ids=source, attention_mask=source_mask, labels=labels).loss,
    )


def test_compiled_model_equals_eager_model(tiny_bert_config):
    config = tiny_bert_config()
    model = VanillaBertForMaskedLM(config).eval()
    input_ids, mask = padded_batch(config.vocab_size, [8, 5])
    compiled = torch.compile(model, backend="aot_eager", fullgraph=False)
    with torch.no_grad():
        torch.testing.assert_close(
            compiled(input_ids=input_ids, attention_mask=mask).logits,
            model(input_ids=input_ids, attention_mask=mask).logits,
        )


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_cpu_dropout_has_torch_dropout_distribution_and_gradient(p):
    x = torch.rand(256, 4096) + 1.0  # no zeros: a zero in the output is a dropped element
    x.requires_grad_(True)
    out = apply_dropout(x, p, training=True)
    kept = out != 0
    n = x.numel()
    sigma = (p * (1 - p) / n) ** 0.5
    assert abs(kept.float().mean().item() - (1 - p)) < 5 * sigma  # P(keep) = 1 - p
    torch.testing.assert_close(out[kept], x.detach()[kept] / (1 - p))  # kept elements scaled by 1 / (1 - p)
    # Independent elements: neighbours are not correlated (the two halves of each 64-bit draw included).
    flat = kept.flatten().float()
    assert abs((flat[0::2] * flat[1::2]).mean().item() - (1 - p) ** 2) < 5 * (1 - p) * (n / 2) ** -0.5
    weights = torch.randn_like(x)
    (out * weights).sum().backward()
    torch.testing.assert_close(x.grad, weights * kept / (1 - p))  # the gradient goes through the same mask
    torch.manual_seed(3)
    first = apply_dropout(x.detach(), p, training=True)
    torch.manual_seed(3)
    assert torch.equal(apply_dropout(x.detach(), p, training=True), first)  # reproducible under a seed


def test_dropout_module_is_identity_in_eval_and_at_zero():
    x = torch.randn(4, 5, dtype=torch.bfloat16)
    assert torch.equal(Dropout(0.3).eval()(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)
    assert apply_dropout(x, 0.3, training=True).dtype == torch.bfloat16
    assert torch.equal(apply_dropout(x, 1.0, training=True), torch.zeros_like(x))  # torch's own edge case


class _Heads:
    training = False

    def __init__(self, groups):
        self.num_key_value_groups = groups


@pytest.mark.parametrize("groups", [1, 2])
def test_eager_kernel_takes_the_sdpa_masks(groups):
    """CPU training runs the eager kernel with the masks built for sdpa: boolean, or None with is_causal (the causal
    triangle is then the kernel's own)."""
    query = torch.randn(2, 4, 6, 8)
    key, value = torch.randn(2, 4 // groups, 6, 8), torch.randn(2, 4 // groups, 6, 8)
    expand = dict(dim=1, repeats=groups)
    padding = torch.ones(2, 1, 6, 6, dtype=torch.bool)
    padding[1, ..., 4:] = False
    for mask, causal in [(padding, False), (None, True), (None, False)]:
        ours, _ = eager_attention_forward(_Heads(groups), query, key, value, mask, scaling=8**-0.5, is_causal=causal)
        reference = torch.nn.functional.scaled_dot_product_attention(
            query, key.repeat_interleave(**expand), value.repeat_interleave(**expand), attn_mask=mask, is_causal=causal
        )
        torch.testing.assert_close(ours, reference.transpose(1, 2))
    # the 2 newest queries over 6 keys (decoding with a cache): they see what the last 2 rows of the full square see
    full, _ = eager_attention_forward(_Heads(groups), query, key, value, None, scaling=8**-0.5, is_causal=True)
    newest, weights = eager_attention_forward(
        _Heads(groups), query[:, :, -2:], key, value, None, scaling=8**-0.5, is_causal=True
    )
    torch.testing.assert_close(newest, full[:, -2:])
    assert (weights[..., 0, 5] == 0).all() and (weights[..., 1, :] > 0).all()  # query 4 does not see key 5


def test_cpu_training_attention_path_equals_sdpa(tiny_bert_config, tiny_transformer_config, monkeypatch):
    """In training on CPU with attention dropout, sdpa models run the eager kernel on sdpa's masks. With a dropout
    probability too small to drop anything, training outputs equal the sdpa kernel's in eval mode."""
    torch.manual_seed(0)
    tiny_p = 1e-9  # keeps all but 4 of the 2^32 values of a draw
    bert_config = tiny_bert_config(attention_probs_dropout_prob=tiny_p)
    bert = VanillaBertForMaskedLM(bert_config)
    input_ids, mask = padded_batch(bert_config.vocab_size, [9, 3, 6])
    calls = []

    def counted(*args, **kwargs):
        calls.append(bert.training)
        return eager_attention_forward(*args, **kwargs)

    monkeypatch.setattr(attention_module, "eager_attention_forward", counted)
    expected = bert.eval()(input_ids=input_ids, attention_mask=mask).logits
    assert calls == []  # eval: the sdpa kernel
    got = bert.train()(input_ids=input_ids, attention_mask=mask).logits
    assert calls == [True] * bert_config.num_hidden_layers  # training: the eager kernel, once per layer
    torch.testing.assert_close(got[mask.bool()], expected[mask.bool()])

    config = tiny_transformer_config(dropout=0.0, attention_dropout=tiny_p)
    model = VanillaTransformerForConditionalGeneration(config)
    source, source_mask = padded_batch(config.vocab_size, [7, 3, 5])
    labels = torch.randint(4, config.vocab_size, (3, 6))  # no padding: the decoder's sdpa mask is None (is_causal)
    expected = model.eval()(input_ids=source, attention_mask=source_mask, labels=labels).logits
    got = model.train()(input_ids=source, attention_mask=source_mask, labels=labels).logits
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("chunk", [7, 32, 512])
def test_chunked_linear_cross_entropy_equals_linear_then_cross_entropy(chunk):
    """Loss, logits and every gradient equal torch's, with chunks that do not divide the vocabulary (100), labels
    in the last partial chunk, and the logits used by a second loss term (their gradient adds to the loss's)."""
    torch.manual_seed(0)
    hidden = torch.randn(9, 16, requires_grad=True)
    weight = torch.randn(100, 16, requires_grad=True)
    bias = torch.randn(100, requires_grad=True)
    labels = torch.tensor([0, 99, 98, 50, 7, 7, 31, 64, 96])
    extra = torch.randn(9, 100)
    results = []
    for fused in (True, False):
        if fused:
            loss, logits = linear_cross_entropy(hidden, weight, bias, labels, chunk=chunk)
        else:
            logits = torch.nn.functional.linear(hidden, weight, bias)
            loss = torch.nn.functional.cross_entropy(logits, labels, reduction="sum")
        (loss * 0.7 + (logits * extra).sum()).backward()
        results.append((loss.detach(), logits.detach(), *(t.grad.clone() for t in (hidden, weight, bias))))
        for t in (hidden, weight, bias):
            t.grad = None
    for name, ours, reference in zip(["loss", "logits", "hidden", "weight", "bias"], *results):
        torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5, msg=name)
    # only the loss, or only the logits, used
    loss, logits = linear_cross_entropy(hidden, weight, bias, labels, chunk=chunk)
    grad_loss_only = torch.autograd.grad(loss, weight, retain_graph=True)[0]
    reference = torch.autograd.grad(
        torch.nn.functional.cross_entropy(hidden @ weight.T + bias, labels, reduction="sum"), weight
    )[0]
    torch.testing.assert_close(grad_loss_only, reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.autograd.grad(logits.sum(), bias)[0], torch.full((100,), 9.0))


@pytest.mark.parametrize("duplicate_sentence", [False, True])
def test_beam_search_caches_cross_attention_once_per_sentence(duplicate_sentence, tiny_transformer_config):
    """Beam search: the cross-attention keys/values are cached once per sentence (beams share them) and are not
    reordered; the self-attention cache is. Same sequences, scores and attention weights as without a cache."""
    torch.manual_seed(0)
    config = tiny_transformer_config(pad_token_id=0, eos_token_id=2, decoder_start_token_id=0)
    model = VanillaTransformerForConditionalGeneration(config).eval()
    source, source_mask = padded_batch(config.vocab_size, [7, 3, 5])
    if duplicate_sentence:  # rows 0-5 equal, 6-8 another: groups of 3 (6 does not divide the 9 rows)
        source[1], source_mask[1] = source[0], source_mask[0]
    beams, moved, reorder = 3, [], model._reorder_cache

    def checked_reorder(past_key_values, beam_idx):
        # the rows as stored (reading `layer.keys` would expand them to one per beam, the Cache API's shape)
        cross = [layer.stored_rows() for layer in past_key_values.cross_attention_cache.layers]
        expected = [layer.keys.index_select(0, beam_idx) for layer in past_key_values.self_attention_cache.layers]
        out = reorder(past_key_values, beam_idx)
        for (keys, values), layer in zip(cross, out.cross_attention_cache.layers):
            assert layer.stored_rows()[0] is keys and layer.stored_rows()[1] is values  # left as they are
            assert keys.shape[0] == len(source) and layer.shared == beams  # one row per sentence, not per beam
        for keys, layer in zip(expected, out.self_attention_cache.layers):
            assert torch.equal(layer.keys, keys)  # one row per beam, reordered
        moved.append(bool((beam_idx != torch.arange(len(beam_idx))).any()))
        return out

    model._reorder_cache = checked_reorder
    options = dict(max_new_tokens=8, num_beams=beams, num_return_sequences=2, no_repeat_ngram_size=2,
                   return_dict_in_generate=True, output_scores=True, output_attentions=True)
    with torch.no_grad():
        cached = model.generate(input_ids=source, attention_mask=source_mask, **options)
        uncached = model.generate(input_ids=source, attention_mask=source_mask, use_cache=False, **options)
    assert any(moved)  # beams did change places: the checks above saw real reorders
    assert torch.equal(cached.sequences, uncached.sequences)
    torch.testing.assert_close(cached.sequences_scores, uncached.sequences_scores, rtol=1e-5, atol=1e-5)
    for step_cached, step_uncached in zip(cached.cross_attentions, uncached.cross_attentions):
        for layer_cached, layer_uncached in zip(step_cached, step_uncached):  # (B * beams, H, 1, S) each step
            assert layer_cached.shape == (len(source) * beams, 4, 1, source.shape[1])
            torch.testing.assert_close(layer_cached, layer_uncached[:, :, -1:], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("beam_idx", [[1, 0, 3, 2], [2, 3, 0, 1], [3, 3, 0, 2]])
def test_shared_cross_attention_cache_stays_exact_under_any_reorder(beam_idx, tiny_transformer_config):
    """Anyone may reorder the cache through the usual API (EncoderDecoderCache.reorder_cache): within a sentence's
    beams the shared rows stay shared, across sentences they become one row per beam; decoding goes on exactly."""
    torch.manual_seed(0)
    config = tiny_transformer_config(pad_token_id=0, eos_token_id=2, decoder_start_token_id=0)
    model = VanillaTransformerForConditionalGeneration(config).eval()
    sentences, mask = padded_batch(config.vocab_size, [6, 4])
    source, source_mask = sentences.repeat_interleave(2, 0), mask.repeat_interleave(2, 0)  # rows a, a, b, b
    first = torch.zeros(4, 1, dtype=torch.long)
    second = torch.randint(3, config.vocab_size, (4, 1))
    with torch.no_grad():
        step = model(input_ids=source, attention_mask=source_mask, decoder_input_ids=first, use_cache=True)
        cache = output_cache(step)
        assert cache.cross_attention_cache.layers[0].stored_rows()[0].shape[0] == 2  # one row per sentence
        order = torch.tensor(beam_idx)
        cache.reorder_cache(order)
        within = bool(torch.equal(order // 2, torch.arange(4) // 2))
        assert cache.cross_attention_cache.layers[0].stored_rows()[0].shape[0] == (2 if within else 4)
        cached = model(encoder_outputs=(step.encoder_last_hidden_state[order],), attention_mask=source_mask[order],
                       decoder_input_ids=second, cache=cache).logits[:, -1]
        full = model(input_ids=source[order], attention_mask=source_mask[order],
                     decoder_input_ids=torch.cat([first, second], 1), use_cache=False).logits[:, -1]
    torch.testing.assert_close(cached, full, rtol=1e-5, atol=1e-5)


def test_repeated_rows_finds_the_runs_of_equal_rows():
    a, b, c = torch.randn(3, 4, 5)
    assert repeated_rows(torch.stack([a, a, b, b, c, c])) == 2
    assert repeated_rows(torch.stack([a, a, a, a, b, b, b, b])) == 4  # the largest
    assert repeated_rows(torch.stack([a, a, a, a, b, b, c, c])) == 2  # 4 would mix b and c
    assert repeated_rows(torch.stack([a, a, b, c])) == 1
    assert repeated_rows(torch.stack([a, a, a])) == 3
    assert repeated_rows(a[None]) == 1
    mask = torch.tensor([[1, 1], [1, 1], [1, 0], [1, 1]])
    assert repeated_rows(torch.stack([a, a, b, b]), mask) == 1  # the mask must repeat too
    assert repeated_rows(torch.stack([a, a, b, b]), mask[[0, 1, 2, 2]]) == 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_feed_forward_in_blocks_of_rows_equals_one_piece(dtype, monkeypatch):
    """Without autograd on CPU the FFN runs over blocks of rows (here 3 rows, which do not divide 2 x 7 = 14)."""
    torch.manual_seed(0)
    ffn = FeedForward(32, 64, "gelu", 0.0).to(dtype).eval()
    x = torch.randn(2, 7, 32, dtype=dtype)
    whole = ffn(x)  # autograd on: one piece
    monkeypatch.setattr(fast_inference, "ROW_BLOCK_ELEMENTS", 3 * 64)
    calls = []
    ffn.fc1.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    with torch.no_grad():
        blocks = ffn(x)
        flat = ffn(x.flatten(0, 1))  # (N, D) rows, as with skip_padding
    assert calls == [3, 3, 3, 3, 2] * 2  # it did run in blocks
    assert blocks.shape == x.shape and blocks.dtype == dtype
    torch.testing.assert_close(blocks, whole.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(flat, whole.detach().flatten(0, 1), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("normalize_before", [False, True])
def test_encoder_inference_with_blocked_feed_forward_equals_training_mode_path(
    normalize_before, tiny_bert_config, monkeypatch
):
    """Inference: FFN in blocks of rows, residual sums added in place into the sublayers' outputs."""
    config = tiny_bert_config(normalize_before=normalize_before)
    model = VanillaBertForMaskedLM(config).eval()
    monkeypatch.setattr(fast_inference, "ROW_BLOCK_ELEMENTS", 5 * config.intermediate_size)  # blocks of 5 rows
    calls = []
    fc1 = model.bert.encoder.layers[0].ffn.fc1
    fc1.register_forward_hook(lambda module, args, output: calls.append(args[0][..., 0].numel()))
    input_ids, mask = padded_batch(config.vocab_size, [8, 5, 7])
    expected = model(input_ids=input_ids, attention_mask=mask).logits  # autograd on: one piece
    with torch.inference_mode():
        actual = model(input_ids=input_ids, attention_mask=mask).logits
    assert calls == [3 * 8, 5, 5, 5, 5, 4]  # one piece with autograd, blocks of 5 rows without
    torch.testing.assert_close(actual, expected.detach(), rtol=1e-5, atol=1e-5)


FAST_PATH_MODULES = ["fast_dropout", "fast_loss", "fast_inference", "beam_cache", "token_layout"]


@pytest.mark.parametrize("module_name", FAST_PATH_MODULES)
def test_each_fast_path_module_names_the_plain_computation_and_tests_that_exist(module_name):
    """Each fast-path module's docstring names the plain computation it equals and the tests here that prove it."""
    import importlib
    import re

    doc = importlib.import_module(f"vanilla_transformer.modeling.{module_name}").__doc__
    assert "Plain computation it equals" in doc and "Entered from one place" in doc
    named = set(re.findall(r"\btest_\w+", doc.replace("tests/test_fast_paths.py", "")))
    assert named, f"{module_name} names no test"
    missing = [name for name in named if not callable(globals().get(name))]
    assert not missing, f"{module_name} names tests that do not exist here: {missing}"
