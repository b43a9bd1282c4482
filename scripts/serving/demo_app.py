"""A Gradio page to try a saved model folder (or Hub id): `build_demo(model_dir, trust_remote_code)` returns the
`gr.Blocks` app for the folder's task, read from its config.

- translation (an encoder-decoder): a sentence, a beam size, the translation, and the heatmap of the last decoder
  layer's cross-attention averaged over heads: a row per generated token, a column per source token.
- fill-mask (an ...ForMaskedLM): the top-k words for the [MASK] with their probabilities.
- text classification (...ForSequenceClassification): the probability of every class.
- token classification (...ForTokenClassification): the tagged words, highlighted in the text.

Each event has an `api_name` ("translate", "fill_mask", "classify", "tag"), so that `gradio_client` can call it.
Empty text, and text longer than the model's positions (`max_position_embeddings`), are refused with a message.

This file imports gradio, torch, transformers, numpy, matplotlib and the standard library only, never
vanilla_transformer: `publish --space_dir` copies it, as it is, into a Hugging Face Space, where the package is not
installed and the model folder brings its own code (loaded with trust_remote_code=True).
"""

import gradio as gr
import numpy as np
import torch
from matplotlib.figure import Figure
from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoTokenizer, pipeline

# The head a folder's architecture ends with -> the pipeline task of its page
PIPELINE_TASKS = {
    "ForMaskedLM": "fill-mask",
    "ForSequenceClassification": "text-classification",
    "ForTokenClassification": "token-classification",
}
MAX_BEAMS = 8
MAX_TOP_K = 20


class DemoError(ValueError):
    """A model this demo has no page for; the message says which models it takes."""


def task_of(config) -> str:
    """"translation" for an encoder-decoder, else the pipeline task of the folder's architecture (PIPELINE_TASKS)."""
    if config.is_encoder_decoder:
        return "translation"
    for architecture in config.architectures or []:
        for head, task in PIPELINE_TASKS.items():
            if architecture.endswith(head):
                return task
    raise DemoError(f"the model's architectures {config.architectures} have no demo: it takes an encoder-decoder "
                    f"(translation) or a model whose architecture ends with {', '.join(PIPELINE_TASKS)}")


def build_demo(model_dir: str, trust_remote_code: bool = False, title: str | None = None) -> gr.Blocks:
    """The app for the model in `model_dir` (a folder or a Hub id), loaded now; `trust_remote_code` runs the
    folder's own code (needed where the model's package is not installed); `title` heads the page (default: the
    model's name as given)."""
    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    task = task_of(config)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    limit = getattr(config, "max_position_embeddings", None) or tokenizer.model_max_length
    with gr.Blocks(title=title or model_dir, analytics_enabled=False) as demo:
        gr.Markdown(f"# {title or model_dir}\n{type(config).__name__.removesuffix('Config')} model, task: {task}")
        if task == "translation":
            model = AutoModelForSeq2SeqLM.from_pretrained(  # eager: the only kernel that returns attention weights
                model_dir, trust_remote_code=trust_remote_code, attn_implementation="eager").eval()
            translation_page(model, tokenizer, limit)
        else:
            pipe = pipeline(task, model=model_dir, tokenizer=tokenizer, trust_remote_code=trust_remote_code)
            PAGES[task](pipe, tokenizer, limit)
    return demo


def checked_text(text: str | None, tokenizer, limit: int) -> str:
    """`text` stripped, refused (a gr.Error, shown on the page and raised by gradio_client) when it is empty or
    longer than the model's `limit` of positions."""
    text = (text or "").strip()
    if not text:
        raise gr.Error("The text is empty: type a sentence first.")
    length = len(tokenizer(text)["input_ids"])
    if length > limit:
        raise gr.Error(f"The text is {length} tokens long; this model reads at most {limit} tokens "
                       "(max_position_embeddings): shorten it.")
    return text


def translation_page(model, tokenizer, limit: int) -> None:
    default_beams = min(max(model.generation_config.num_beams or 1, 1), MAX_BEAMS)
    with gr.Row():
        with gr.Column():
            source = gr.Textbox(label="Sentence", lines=2, elem_id="source", placeholder="the sentence to translate")
            beams = gr.Slider(1, MAX_BEAMS, value=default_beams, step=1, label="Beam size (1: greedy decoding)")
            button = gr.Button("Translate", variant="primary", elem_id="translate")
        translation = gr.Textbox(label="Translation", lines=2, interactive=False, elem_id="translation")
    heatmap = gr.Plot(label="Cross-attention", show_label=False, format="png", elem_id="attention")

    @torch.no_grad()
    def translate(text: str, num_beams: float) -> tuple[str, Figure]:
        text = checked_text(text, tokenizer, limit)
        inputs = tokenizer(text, return_tensors="pt").to(model.device)
        generated = model.generate(**inputs, num_beams=int(num_beams))[0]
        return tokenizer.decode(generated, skip_special_tokens=True), cross_attention_figure(model, tokenizer,
                                                                                              inputs, generated)

    gr.on([button.click, source.submit], translate, [source, beams], [translation, heatmap], api_name="translate")


@torch.no_grad()
def cross_attention_figure(model, tokenizer, inputs, generated: torch.Tensor) -> Figure:
    """The last decoder layer's cross-attention, averaged over heads, for the sequence `generate` gave (decoder start
    token, tokens, end of sequence): one teacher-forced pass with the generated tokens as the decoder's input. The
    decoder reads "<s> y1 .. y(T-1)" and predicts "y1 .. yT": a row shows where it looked while it produced yt."""
    end = model.generation_config.eos_token_id
    ends = torch.isin(generated, torch.tensor(end if isinstance(end, list) else [end], device=generated.device))
    found = ends[1:].nonzero()  # the start token may double as the end one
    generated = generated[: int(found[0]) + 2] if len(found) else generated
    outputs = model(**inputs, decoder_input_ids=generated[None, :-1], output_attentions=True)
    weights = outputs.cross_attentions[-1][0].float().mean(0).cpu().numpy()  # (T, S)
    rows = tokenizer.convert_ids_to_tokens(generated[1:])
    columns = tokenizer.convert_ids_to_tokens(inputs["input_ids"][0])
    layers, heads = len(outputs.cross_attentions), outputs.cross_attentions[-1].shape[1]
    return heatmap_figure(weights, rows, columns, f"Cross-attention of the last decoder layer ({layers} of {layers}), "
                          f"mean of {heads} heads:\nwhich source tokens each generated token looked at")


def heatmap_figure(weights: np.ndarray, rows: list[str], columns: list[str], title: str) -> Figure:
    """A labelled heatmap, sized to its tokens up to 20 inches a side (1024 tokens would make an image larger than a
    browser shows); a Figure of its own, not pyplot's, so that it is freed with its last reference."""
    width, height = min(max(6.5, 0.6 * len(columns) + 2.5), 20.0), min(max(3.0, 0.45 * len(rows) + 2.0), 20.0)
    figure = Figure(figsize=(width, height), layout="constrained")
    axis = figure.subplots()
    image = axis.imshow(weights, vmin=0.0, vmax=float(weights.max()), cmap="viridis", aspect="auto")
    axis.set_xticks(range(len(columns)), columns, rotation=45, ha="right", rotation_mode="anchor", fontsize=10)
    axis.set_yticks(range(len(rows)), rows, fontsize=10)
    axis.set_xlabel("source tokens")
    axis.set_ylabel("generated tokens")
    axis.set_title(title, fontsize=10)
    figure.colorbar(image, ax=axis, label="attention weight")
    return figure


def fill_mask_page(pipe, tokenizer, limit: int) -> None:
    mask = tokenizer.mask_token
    text = gr.Textbox(label=f"Text with one {mask}", lines=2, elem_id="source",
                      placeholder=f"The capital of France is {mask}.")
    top_k = gr.Slider(1, MAX_TOP_K, value=5, step=1, label="Answers to show (top k)")
    button = gr.Button("Fill the mask", variant="primary", elem_id="fill_mask")
    answers = gr.Label(label=f"Words for {mask}, with their probabilities", elem_id="answers")

    def fill_mask(value: str, k: float) -> dict[str, float]:
        value = checked_text(value, tokenizer, limit)
        if value.count(mask) != 1:
            raise gr.Error(f"Put one {mask} where the word to guess goes (the text has {value.count(mask)}).")
        return {answer["token_str"]: answer["score"] for answer in pipe(value, top_k=int(k))}

    gr.on([button.click, text.submit], fill_mask, [text, top_k], answers, api_name="fill_mask")


def classification_page(pipe, tokenizer, limit: int) -> None:
    text = gr.Textbox(label="Text", lines=3, elem_id="source")
    button = gr.Button("Classify", variant="primary", elem_id="classify")
    classes = gr.Label(label="Class probabilities", elem_id="classes")

    def classify(value: str) -> dict[str, float]:
        (scores,) = pipe([checked_text(value, tokenizer, limit)], top_k=None)  # a list in: one list per text out
        return {row["label"]: row["score"] for row in scores}

    gr.on([button.click, text.submit], classify, text, classes, api_name="classify")


def token_classification_page(pipe, tokenizer, limit: int) -> None:
    text = gr.Textbox(label="Text", lines=3, elem_id="source")
    button = gr.Button("Tag", variant="primary", elem_id="tag")
    tagged = gr.HighlightedText(label="Tagged words", elem_id="tagged")

    def tag(value: str) -> dict:
        value = checked_text(value, tokenizer, limit)
        return {"text": value, "entities": pipe(value, aggregation_strategy="simple")}

    gr.on([button.click, text.submit], tag, text, tagged, api_name="tag")


PAGES = {
    "fill-mask": fill_mask_page,
    "text-classification": classification_page,
    "token-classification": token_classification_page,
}
