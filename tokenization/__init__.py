"""vanilla_transformer.tokenization: train subword tokenizers saved as standard fast tokenizers."""

from .bpe import special_token_ids, train_bpe_tokenizer
from .wordpiece import WholeWordMaskCollator, encode_for_mlm, train_wordpiece_tokenizer

__all__ = [
    "train_bpe_tokenizer",
    "special_token_ids",
    "train_wordpiece_tokenizer",
    "encode_for_mlm",
    "WholeWordMaskCollator",
]
