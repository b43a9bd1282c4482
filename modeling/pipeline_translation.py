"""`translation` and `text2text-generation` pipelines for encoder-decoder models.

transformers 5 removed both tasks; this module gives them back for our models. It ships beside the model files
in a saved folder (config.json `custom_pipelines` points here), so on the Hub

    pipeline("translation", model="user/repo", trust_remote_code=True)

works on a machine without vanilla_transformer. In memory, after `hub.enable_pipelines(model)` (which declares
the tasks in `model.config.custom_pipelines`, where transformers looks before rejecting a removed task):

    pipeline("translation", model=model, tokenizer=tok, config=model.config, pipeline_class=TranslationPipeline)

or simply `TranslationPipeline(model=model, tokenizer=tok)`. Generation options (num_beams, max_new_tokens, ...)
pass through, at construction or per call.
"""

import warnings

from transformers import Pipeline


class Text2TextGenerationPipeline(Pipeline):
    """Text in, `model.generate()`, text out: [{"generated_text": ...}] per input."""

    _pipeline_calls_generate = True
    _load_tokenizer = True
    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False
    output_key = "generated_text"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.tokenizer is None:
            raise ValueError(f"{type(self).__name__} needs a tokenizer: pass tokenizer=... or save one beside the model")
        vocab_size = self.model.config.get_text_config(decoder=True).vocab_size
        if len(self.tokenizer) > vocab_size:
            raise ValueError(
                f"the tokenizer has {len(self.tokenizer)} tokens but the model's vocabulary has {vocab_size}: "
                "they were not trained together; load the tokenizer saved with this model"
            )
        for name in ("pad_token_id", "eos_token_id"):
            tok_id, model_id = getattr(self.tokenizer, name), getattr(self.model.config, name, None)
            if tok_id is not None and model_id is not None and tok_id != model_id:
                raise ValueError(
                    f"tokenizer {name}={tok_id} but model config {name}={model_id}: the tokenizer does not belong "
                    "to this model; load the tokenizer saved with this model"
                )

    def __call__(self, inputs, **kwargs):
        """One string gives [{key: text}]; a list of strings gives one such dict per string (a list of dicts
        per string when asking for several sequences with num_return_sequences)."""
        results = super().__call__(inputs, **kwargs)
        if isinstance(inputs, list) and all(len(result) == 1 for result in results):
            return [result[0] for result in results]
        return results

    def _sanitize_parameters(self, truncation=None, max_length=None, clean_up_tokenization_spaces=None, **generate_kwargs):
        preprocess = {}
        if truncation is not None:
            preprocess["truncation"] = truncation
        if max_length is not None:  # a source length, as in tokenizer(...); use max_new_tokens for the output
            preprocess["max_length"] = max_length
        postprocess = {}
        if clean_up_tokenization_spaces is not None:
            postprocess["clean_up_tokenization_spaces"] = clean_up_tokenization_spaces
        return preprocess, generate_kwargs, postprocess

    def preprocess(self, text: str, truncation: bool | None = None, max_length: int | None = None):
        """The text's ids, at most `max_length` (default: the model's max_position_embeddings). A text longer than the
        model's limit is cut with a warning that says so (`truncation=True`, or a `max_length` of one's own: cut
        without one; `truncation=False`: refused): a translation of its beginning must not pass for one of the text."""
        if not isinstance(text, str):
            raise TypeError(f"{type(self).__name__} takes a string or a list of strings, got {type(text).__name__}")
        limit = max_length or self.model.config.max_position_embeddings
        if truncation or max_length is not None:
            return self.tokenizer(text, return_tensors="pt", truncation=truncation is not False, max_length=limit)
        encoded = self.tokenizer(text, return_tensors="pt")
        length = encoded["input_ids"].shape[1]
        if length <= limit:
            return encoded
        if truncation is False:
            raise ValueError(
                f"the text is {length} tokens long, more than the {limit} the model reads (max_position_embeddings): "
                "split it into sentences, or pass truncation=True to translate its first tokens only"
            )
        warnings.warn(
            f"the text is {length} tokens long, more than the {limit} the model reads (max_position_embeddings): only "
            f"its first {limit} tokens are translated. Split it into sentences, or pass truncation=True to cut without "
            "this warning",
            stacklevel=2,
        )
        return self.tokenizer(text, return_tensors="pt", truncation=True, max_length=limit)

    def _forward(self, model_inputs, **generate_kwargs):
        if hasattr(self, "_prepare_generate_kwargs"):  # transformers >= 5.20: the call's and the init's parameters
            generate_kwargs = self._prepare_generate_kwargs(generate_kwargs)
        elif "generation_config" not in generate_kwargs:  # earlier: the pipeline's generation config, as in-tree ones
            generate_kwargs["generation_config"] = self.generation_config
        return {"output_ids": self.model.generate(**model_inputs, **generate_kwargs)}

    def postprocess(self, model_outputs, clean_up_tokenization_spaces: bool = False):
        return [
            {self.output_key: self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=clean_up_tokenization_spaces)}
            for ids in model_outputs["output_ids"]
        ]


class TranslationPipeline(Text2TextGenerationPipeline):
    """Source sentence in, translation out: [{"translation_text": ...}] per input."""

    output_key = "translation_text"
