"""Translate text with a model exported to CTranslate2 (`vanilla_transformer.modeling.convert_ctranslate2`):
`CTranslate2Translator(output_dir).translate(texts)`. It needs `ctranslate2` and `tokenizers` only (the `serve`
extra): no PyTorch model is loaded. See docs/serving.md.
"""

import json
from pathlib import Path


class CTranslate2Translator:
    """Translate text with an exported encoder-decoder: `ctranslate2.Translator` + the `tokenizers` tokenizer.

    Defaults (beam size, length penalty, maximum length) come from the exported generation_config.json, as our
    `generate` takes them. Settings mean what they mean in transformers:
    - `length_penalty`: a finished hypothesis scores sum(log p) / length**length_penalty, length counting the
      generated tokens with </s> (CTranslate2 computes the same; checked against `generate` in the tests);
    - `max_new_tokens`: at most this many generated tokens, </s> included (transformers' `max_length` also counts
      the decoder start token, so max_new_tokens = max_length - 1);
    - beam search stops a sentence once `num_beams` hypotheses have finished, as transformers' `early_stopping=True`
      does. transformers' default (`False`) may search on and find a longer hypothesis that scores better, so
      its beam outputs can differ there (greedy outputs are the same).
    """

    def __init__(self, model_dir, device: str = "cpu", compute_type: str = "default", intra_threads: int = 0,
                 inter_threads: int = 1):
        import ctranslate2
        from tokenizers import Tokenizer

        self.model_dir = Path(model_dir)
        # intra_threads: threads per batch (0: CTranslate2's default, 4 or fewer); inter_threads: batches translated
        # at once (the sub-batches of `batch_size` of one call run in parallel)
        self.translator = ctranslate2.Translator(
            str(model_dir), device=device, compute_type=compute_type, intra_threads=intra_threads,
            inter_threads=inter_threads,
        )
        self.tokenizer = Tokenizer.from_file(str(self.model_dir / "tokenizer.json"))
        # the model's tokens by id (the tokenizer's, then placeholders if the embedding table is larger)
        self.vocabulary = json.loads((self.model_dir / "shared_vocabulary.json").read_text())
        self.token_ids = {token: index for index, token in enumerate(self.vocabulary)}
        config = json.loads((self.model_dir / "config.json").read_text())
        self.max_positions = config["max_position_embeddings"]
        self.tokenizer.enable_truncation(self.max_positions)  # longer sources have no position vectors
        generation = self.model_dir / "generation_config.json"
        saved = json.loads(generation.read_text()) if generation.is_file() else {}
        # the defaults of `translate`, as our generate takes them from the saved generation config
        self.num_beams = saved.get("num_beams") or 1
        self.length_penalty = 1.0 if saved.get("length_penalty") is None else saved["length_penalty"]
        if saved.get("max_new_tokens") is not None:
            self.max_new_tokens = saved["max_new_tokens"]
        else:  # transformers' max_length counts the decoder start token too; 20 is its default
            self.max_new_tokens = (saved.get("max_length") or 20) - 1

    def generate_ids(
        self,
        sources: list[list[int]],
        num_beams: int | None = None,
        length_penalty: float | None = None,
        max_new_tokens: int | None = None,
        batch_size: int = 32,
    ) -> list[list[int]]:
        """Token ids in, token ids out (no decoder start token; </s> included when the hypothesis finished)."""
        max_new_tokens = self.max_new_tokens if max_new_tokens is None else max_new_tokens
        # the decoder input holds the start token and all but the last generated token, one position each
        max_new_tokens = min(max_new_tokens, self.max_positions)
        results = self.translator.translate_batch(
            [[self.vocabulary[i] for i in ids] for ids in sources],
            beam_size=num_beams or self.num_beams,
            length_penalty=self.length_penalty if length_penalty is None else length_penalty,
            max_decoding_length=max_new_tokens,
            max_batch_size=batch_size,
            min_decoding_length=0,  # CTranslate2's default (1) would forbid an immediate </s>; transformers' is 0
            return_end_token=True,  # </s> is counted in the length the length penalty divides by, as in transformers
        )
        return [[self.token_ids[token] for token in result.hypotheses[0]] for result in results]

    def translate(
        self,
        texts: list[str],
        num_beams: int | None = None,
        length_penalty: float | None = None,
        max_new_tokens: int | None = None,
        batch_size: int = 32,
    ) -> list[str]:
        """Texts in, translations out."""
        sources = [encoding.ids for encoding in self.tokenizer.encode_batch(list(texts))]
        outputs = self.generate_ids(sources, num_beams, length_penalty, max_new_tokens, batch_size)
        return self.tokenizer.decode_batch(outputs, skip_special_tokens=True)


__all__ = ["CTranslate2Translator"]
