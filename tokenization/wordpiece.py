"""A BERT WordPiece vocabulary (Devlin et al. 2019, section 3; Wu et al. 2016), trained with `tokenizers`.

The tokenizer is a plain `PreTrainedTokenizerFast` around a `tokenizers.Tokenizer`: it saves as
tokenizer.json + tokenizer_config.json and reloads with `AutoTokenizer.from_pretrained(folder)`, no custom code.
As BERT-uncased: lowercasing and accent stripping (BertNormalizer), split on whitespace and punctuation
(BertPreTokenizer), "##" marks a piece that continues a word. Inputs read "[CLS] A [SEP]" or "[CLS] A [SEP] B [SEP]"
with token_type_ids 0 for A (and its [CLS], [SEP]) and 1 for B.

Masked-language-model batches come from transformers' `DataCollatorForLanguageModeling(tokenizer)` (80% [MASK],
10% random token, 10% unchanged, never a special token), fed with `encode_for_mlm` features. Whole-word masking is
its `whole_word_mask=True` mode, which finds words from character offsets (a piece that starts where the previous
one ended continues its word, so "dog." is one word) and always uses [MASK] (no random/unchanged share).
transformers 5.23 does not pad `offset_mapping`, so that mode fails on batches of unequal length:
`WholeWordMaskCollator` pads it and is otherwise the transformers collator.
"""

from collections.abc import Iterable
from dataclasses import dataclass

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import BatchEncoding, DataCollatorForLanguageModeling, PreTrainedTokenizerFast

from .corpus import TrainingTexts

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = [PAD, UNK, CLS, SEP, MASK]  # ids 0..4; [PAD] = 0 is VanillaBertConfig's default pad_token_id


def train_wordpiece_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 30522,
    min_frequency: int = 2,
    lowercase: bool = True,
    model_max_length: int = 512,
    show_progress: bool = True,
) -> PreTrainedTokenizerFast:
    """Learn a WordPiece vocabulary (special tokens included in `vocab_size`) from an iterable of texts."""
    tokenizer = Tokenizer(models.WordPiece(unk_token=UNK, continuing_subword_prefix="##"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=None, clean_text=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        continuing_subword_prefix="##",
        show_progress=show_progress,
    )
    corpus = TrainingTexts(texts)
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    corpus.check_learned(tokenizer.get_vocab_size(), vocab_size, len(SPECIAL_TOKENS))
    tokenizer.model = _in_stable_order(tokenizer)
    cls_id, sep_id = tokenizer.token_to_id(CLS), tokenizer.token_to_id(SEP)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{CLS}:0 $A:0 {SEP}:0",
        pair=f"{CLS}:0 $A:0 {SEP}:0 $B:1 {SEP}:1",  # ":1" = token_type_ids of segment B
        special_tokens=[(CLS, cls_id), (SEP, sep_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=PAD,
        unk_token=UNK,
        cls_token=CLS,
        sep_token=SEP,
        mask_token=MASK,
        model_max_length=model_max_length,
        # transformers 5 returns only input_ids and attention_mask unless told; BERT reads the segments too
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


def _in_stable_order(tokenizer: Tokenizer) -> models.WordPiece:
    """The trained vocabulary in a fixed order: the special tokens first (ids 0-4), then every other piece in
    character order. The trainer numbers pieces in the order of Rust hash maps, which changes from one run to the next
    (the letters' ids, and with them which of two equally frequent merges comes first): the same text and seed gave
    other token ids, so other embedding rows, other masking and other weights. WordPiece matches pieces by their text
    (longest first), never by id, so the order changes no tokenization."""
    model = tokenizer.model
    pieces = sorted(token for token in tokenizer.get_vocab(with_added_tokens=False) if token not in SPECIAL_TOKENS)
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + pieces)}
    return models.WordPiece(vocab=vocab, unk_token=model.unk_token,
                            continuing_subword_prefix=model.continuing_subword_prefix,
                            max_input_chars_per_word=model.max_input_chars_per_word)


def encode_for_mlm(
    tokenizer: PreTrainedTokenizerFast, texts: list[str], max_length: int | None = None, whole_word_mask: bool = False
) -> BatchEncoding:
    """Encode texts as features for `DataCollatorForLanguageModeling`: with `special_tokens_mask` (so the collator
    need not recompute it) and, for `whole_word_mask=True`, the `offset_mapping` that collator mode requires.
    Works as a batched `datasets.map` function: `ds.map(lambda b: encode_for_mlm(tok, b["text"]), batched=True)`."""
    return tokenizer(
        texts,
        truncation=True,
        max_length=max_length,
        return_special_tokens_mask=True,
        return_offsets_mapping=whole_word_mask,
    )


@dataclass
class WholeWordMaskCollator(DataCollatorForLanguageModeling):
    """`DataCollatorForLanguageModeling(whole_word_mask=True)` for features of unequal length: pads their
    `offset_mapping` (which `tokenizer.pad` leaves alone) before the transformers collator pads the rest."""

    whole_word_mask: bool = True
    mask_replace_prob: float = 1.0  # the only choice transformers supports with whole words (it warns otherwise)
    random_replace_prob: float = 0.0

    def torch_call(self, examples: list[dict]) -> dict:
        longest = max(len(example["input_ids"]) for example in examples)
        if self.pad_to_multiple_of:
            longest = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        padded = []
        for example in examples:
            offsets = [tuple(pair) for pair in example["offset_mapping"]]
            filler = [(0, 0)] * (longest - len(offsets))  # like special tokens: no characters
            offsets = offsets + filler if self.tokenizer.padding_side == "right" else filler + offsets
            padded.append({**example, "offset_mapping": offsets})
        return super().torch_call(padded)


__all__ = ["train_wordpiece_tokenizer", "encode_for_mlm", "WholeWordMaskCollator", "SPECIAL_TOKENS"]
