"""Training the Transformer: with Seq2SeqTrainer and DataCollatorForSeq2Seq, gradient accumulation that equals one
big batch, label smoothing as defined, and overfitting one batch to exact reproduction."""

import copy
import itertools

import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
from transformers import DataCollatorForSeq2Seq, PreTrainedTokenizerFast, Seq2SeqTrainer, Seq2SeqTrainingArguments

from vanilla_transformer.modeling import VanillaTransformerForConditionalGeneration

# A toy translation task: English number words to German ones, in reverse order (so that it needs attention).
NUMBERS = {"one": "eins", "two": "zwei", "three": "drei", "four": "vier", "five": "fünf", "six": "sechs"}
SOURCES = ["one two", "three", "four five six", "six one", "two three four five six one two", "five four three"]
PAIRS = [(source, " ".join(NUMBERS[word] for word in reversed(source.split()))) for source in SOURCES]


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer trained here, with the config's special ids: <pad> 0, <s> 1, </s> 2, <unk> 3."""
    backend = Tokenizer(models.WordLevel(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    texts = [text for pair in PAIRS for text in pair]
    backend.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=specials))
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 2)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    assert [tokenizer.convert_tokens_to_ids(token) for token in specials] == [0, 1, 2, 3]
    return tokenizer


@pytest.fixture
def model(tokenizer, tiny_transformer_config) -> VanillaTransformerForConditionalGeneration:
    """A tiny encoder-decoder over the tokenizer's vocabulary, freshly initialised (seeded)."""
    return VanillaTransformerForConditionalGeneration(tiny_transformer_config(vocab_size=len(tokenizer)))


def features(tokenizer, pairs=PAIRS) -> list[dict]:
    return [dict(tokenizer(source, text_target=target)) for source, target in pairs]


def training_arguments(tmp_path, **overrides) -> Seq2SeqTrainingArguments:
    args = dict(
        output_dir=str(tmp_path),
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_strategy="no",
        remove_unused_columns=False,  # the features are plain dicts, nothing to remove
        dataloader_num_workers=0,
        seed=0,
    )
    args.update(overrides)
    return Seq2SeqTrainingArguments(**args)


def test_seq2seq_trainer_lowers_the_loss(model, tokenizer, tmp_path):
    data = features(tokenizer)
    args = training_arguments(tmp_path, per_device_train_batch_size=3, max_steps=12, learning_rate=3e-3)
    trainer = Seq2SeqTrainer(
        model=model,
        args=args,
        train_dataset=data,
        eval_dataset=data,
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model),
        processing_class=tokenizer,
    )
    assert trainer.label_names == ["labels"]  # found from forward arguments whose names contain "label"
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    assert after < 0.8 * before, f"eval loss {before:.3f} -> {after:.3f}"


def test_gradient_accumulation_equals_one_full_batch(model, tokenizer, tmp_path):
    data = features(tokenizer, [PAIRS[i] for i in (0, 1, 2, 4)])  # targets of 3, 2, 4 and 8 tokens
    target_lengths = [len(example["labels"]) for example in data]
    # Micro-batches with different token counts: averaging per micro-batch would weigh tokens unequally, so the
    # test fails unless the loss is summed and divided by the token count of the whole accumulated batch.
    assert all(
        sum(target_lengths[i] for i in half) * 2 != sum(target_lengths) for half in itertools.combinations(range(4), 2)
    )
    initial = model
    # Plain SGD, no clipping: the update is proportional to the gradient (Adam's first step and clipping would
    # hide a wrongly scaled gradient).
    common = dict(max_steps=1, optim="sgd", learning_rate=0.5, max_grad_norm=0.0, weight_decay=0.0)

    def one_optimizer_step(batch_size, accumulation, folder):
        model = copy.deepcopy(initial)
        args = training_arguments(
            tmp_path / folder,
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=accumulation,
            **common,
        )
        collator = DataCollatorForSeq2Seq(tokenizer, model=model)
        trainer = Seq2SeqTrainer(
            model=model, args=args, train_dataset=data, data_collator=collator, processing_class=tokenizer
        )
        trainer.train()
        return model.state_dict()

    full = one_optimizer_step(4, 1, "full")
    accumulated = one_optimizer_step(2, 2, "accumulated")
    embeddings = "model.encoder.embed_tokens.weight"
    assert not torch.allclose(full[embeddings], initial.state_dict()[embeddings])  # the step did move the weights
    for name, weight in full.items():
        torch.testing.assert_close(accumulated[name], weight, atol=1e-6, rtol=1e-5, msg=name)


def test_label_smoothing_is_the_standard_definition(model, tokenizer, tmp_path):
    model.eval()
    batch = DataCollatorForSeq2Seq(tokenizer, model=model)(features(tokenizer))
    labels = batch["labels"]
    assert (labels == -100).any()  # padded targets: ignored positions are part of the test
    epsilon = 0.1
    with torch.no_grad():
        output = model(**batch, smoothing=epsilon)
        logits = output.logits.flatten(0, 1)  # (B * T, V)
        targets = labels.flatten()

        # written out: (1 - ε) · (-log p(y)) + ε · mean over the vocabulary of -log p(v), averaged over real tokens
        real = targets != -100
        log_probs = logits[real].log_softmax(-1)
        nll = -log_probs.gather(-1, targets[real, None]).squeeze(-1)
        uniform = -log_probs.mean(-1)
        by_hand = ((1 - epsilon) * nll + epsilon * uniform).mean()
        torch.testing.assert_close(output.loss, by_hand)
        reference = F.cross_entropy(logits, targets, ignore_index=-100, label_smoothing=epsilon)
        torch.testing.assert_close(output.loss, reference)
        assert not torch.allclose(output.loss, model(**batch).loss)  # the argument is not ignored

        # summed and divided by the accumulated token count when Trainer passes it
        count = int(real.sum())
        summed = model(**batch, smoothing=epsilon, num_items_in_batch=2 * count).loss
        torch.testing.assert_close(summed, by_hand / 2)

        # Trainer's own label_smoothing_factor computes the same loss from our logits
        args = training_arguments(tmp_path, label_smoothing_factor=epsilon)
        trainer = Seq2SeqTrainer(model=model, args=args, processing_class=tokenizer)
        torch.testing.assert_close(trainer.compute_loss(model, dict(batch)), by_hand)


def test_two_hundred_adam_steps_overfit_one_batch(model, tokenizer):
    batch = DataCollatorForSeq2Seq(tokenizer, model=model)(features(tokenizer))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(200):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert loss.item() < 0.05

    model.eval()
    generated = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=12)
    translations = tokenizer.batch_decode(generated, skip_special_tokens=True)
    assert translations == [target for _, target in PAIRS]
