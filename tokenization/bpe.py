"""A joint source/target BPE vocabulary, as the paper's shared source-target vocabulary (section 5.1).

The tokenizer is a plain `PreTrainedTokenizerFast` around a `tokenizers.Tokenizer`: it saves as
tokenizer.json + tokenizer_config.json and reloads with `AutoTokenizer.from_pretrained(folder)`, no custom code.
Pieces follow SentencePiece's convention (NFKC, "▁" marks a word start), so decoding restores the spacing
exactly, which detokenized sacreBLEU needs. Every sequence ends with </s>; the decoder starts from <s>.
"""

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from .corpus import TrainingTexts

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK]  # ids 0, 1, 2, 3: the defaults of VanillaTransformerConfig


def train_bpe_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 8000,
    min_frequency: int = 2,
    model_max_length: int = 256,
    show_progress: bool = True,
) -> PreTrainedTokenizerFast:
    """Learn one BPE vocabulary over source and target text together (pass both languages' sentences)."""
    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        show_progress=show_progress,
    )
    corpus = TrainingTexts(texts)
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    corpus.check_learned(tokenizer.get_vocab_size(), vocab_size, len(SPECIAL_TOKENS))
    eos_id = tokenizer.token_to_id(EOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS}", pair=f"$A {EOS} $B {EOS}", special_tokens=[(EOS, eos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        model_max_length=model_max_length,
    )


def special_token_ids(tokenizer) -> dict[str, int]:
    """The ids a VanillaTransformerConfig must agree with: pass them as config keyword arguments."""
    return {
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "decoder_start_token_id": tokenizer.bos_token_id,
    }
