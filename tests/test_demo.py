"""`vanilla-transformer demo` and `publish --space` on tiny untrained models: the demo's API (gradio_client)
answers what the model itself gives (generate(), the fill-mask pipeline), the page works in a headless Chromium, bad
inputs are refused with a message while the server goes on, the heatmap is the model's cross-attention, and the Space
folder runs where this package cannot be imported."""

import contextlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import matplotlib.image
import pytest
import torch
import yaml
from gradio_client import Client
from packaging.requirements import Requirement
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, pipeline

from vanilla_transformer.modeling import (
    VanillaBertForMaskedLM,
    VanillaBertForSequenceClassification,
    VanillaBertForTokenClassification,
    VanillaBertModel,
    VanillaTransformerForConditionalGeneration,
)
from vanilla_transformer.modeling.hub import save_for_hub
from vanilla_transformer.scripts import demo, publish
from vanilla_transformer.tokenization import special_token_ids, train_bpe_tokenizer, train_wordpiece_tokenizer

TEXTS = ["ein kleiner Hund läuft", "a small dog runs", "zwei Katzen schlafen", "two cats sleep"] * 5
SOURCE = "ein kleiner Hund schläft"
MASKED = "a small [MASK] runs"
TOO_LONG = "Hund " * 100  # 100 tokens and more; the tiny models have 64 positions
DEMO_APP = Path(__file__).resolve().parents[1] / "scripts" / "serving" / "demo_app.py"
INSTALL = "apt-get install -y chromium && pip install playwright"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def translation_folder(tmp_path_factory, tiny_transformer_config):
    """An untrained encoder-decoder (2 + 3 layers, 64 positions) that generates at most 6 tokens, 2 beams by default."""
    tokenizer = train_bpe_tokenizer(TEXTS, vocab_size=60, min_frequency=1, show_progress=False)
    model = VanillaTransformerForConditionalGeneration(tiny_transformer_config(**special_token_ids(tokenizer),
                                                                               decoder_layers=3))
    model.generation_config.update(max_new_tokens=6, num_beams=2)
    return save_for_hub(model.eval(), tmp_path_factory.mktemp("translation") / "model", tokenizer)


def bert_folder(folder: Path, head, tiny_bert_config, **config) -> Path:
    tokenizer = train_wordpiece_tokenizer(TEXTS, vocab_size=60, min_frequency=1, show_progress=False)
    return save_for_hub(head(tiny_bert_config(vocab_size=len(tokenizer), **config)).eval(), folder, tokenizer)


def generated(folder: Path, text: str, num_beams: int) -> str:
    """What the folder's model itself translates `text` to."""
    model = AutoModelForSeq2SeqLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        output = model.generate(**tokenizer(text, return_tensors="pt"), num_beams=num_beams)[0]
    return tokenizer.decode(output, skip_special_tokens=True)


@contextlib.contextmanager
def serving(command: list[str], port: int, log: Path, cwd: Path | None = None, deadline: float = 120):
    """Run `command`, a Gradio server on 127.0.0.1:`port`; yield its URL once it answers; stop it at the end. A
    server that exits or stays silent past `deadline` seconds fails the test with its output."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1",
               GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port))
    url = f"http://127.0.0.1:{port}/"
    with open(log, "wb") as output:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=output,
                                   stderr=subprocess.STDOUT)
    try:
        started = time.monotonic()
        while True:
            if process.poll() is not None or time.monotonic() - started > deadline:
                why = f"exited with status {process.returncode}" if process.poll() is not None else (
                    f"did not answer within {deadline} s")
                output = log.read_text(errors="replace")[-5000:]
                pytest.fail(f"{' '.join(command[:4])} ... {why}; its output:\n{output}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(url, timeout=2):
                    break
            time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def demo_command(folder: Path, port: int) -> list[str]:
    return [sys.executable, "-m", "vanilla_transformer.scripts.demo", "--model_dir", str(folder), "--port", str(port)]


@pytest.fixture(scope="module")
def translation_demo(translation_folder, free_port, tmp_path_factory):
    """The URL of `vanilla-transformer demo` serving the tiny translation model."""
    port = free_port()
    with serving(demo_command(translation_folder, port), port, tmp_path_factory.mktemp("logs") / "demo.log") as url:
        yield url


def test_translate_through_the_api_is_the_models_generate(translation_demo, translation_folder):
    client = Client(translation_demo, verbose=False)
    for num_beams in (1, 3):
        translation, plot = client.predict(SOURCE, num_beams, api_name="/translate")
        assert translation == generated(translation_folder, SOURCE, num_beams)
        assert plot["type"] == "matplotlib" and plot["plot"].startswith("data:image/png;base64,")


def test_bad_inputs_are_refused_with_a_message_and_the_server_goes_on(translation_demo, translation_folder):
    client = Client(translation_demo, verbose=False)
    for text, said in [("", "The text is empty"), ("  \n ", "The text is empty"),
                       (TOO_LONG, "this model reads at most 64 tokens (max_position_embeddings)")]:
        with pytest.raises(Exception, match=re.escape(said)):
            client.predict(text, 2, api_name="/translate")
    with pytest.raises(Exception, match="greater than maximum value 8"):  # the slider's bounds hold for the API too
        client.predict(SOURCE, 9, api_name="/translate")
    assert client.predict(SOURCE, 2, api_name="/translate")[0] == generated(translation_folder, SOURCE, 2)


def test_fill_mask_through_the_api_is_the_pipelines_top_k(tmp_path, tiny_bert_config, free_port):
    folder = bert_folder(tmp_path / "bert", VanillaBertForMaskedLM, tiny_bert_config)
    expected = pipeline("fill-mask", model=str(folder))(MASKED, top_k=3)
    port = free_port()
    with serving(demo_command(folder, port), port, tmp_path / "demo.log") as url:
        client = Client(url, verbose=False)
        answers = client.predict(MASKED, 3, api_name="/fill_mask")["confidences"]
        with pytest.raises(Exception, match=r"Put one \[MASK\] where the word to guess goes \(the text has 0\)"):
            client.predict("a small dog runs", 3, api_name="/fill_mask")
        with pytest.raises(Exception, match="this model reads at most 64 tokens"):
            client.predict(TOO_LONG + "[MASK]", 3, api_name="/fill_mask")
    assert [answer["label"] for answer in answers] == [answer["token_str"] for answer in expected]
    assert [answer["confidence"] for answer in answers] == pytest.approx([answer["score"] for answer in expected])


@pytest.mark.parametrize("head, api_name", [(VanillaBertForSequenceClassification, "classify"),
                                            (VanillaBertForTokenClassification, "tag")])
def test_classifiers_answer_what_their_pipeline_does(head, api_name, tmp_path, tiny_bert_config):
    """The page's function itself (no server): a classifier's probabilities, a tagger's words in the text."""
    from vanilla_transformer.scripts.serving.demo_app import build_demo

    labels = {0: "ANIMAL", 1: "PLACE", 2: "O"}
    folder = bert_folder(tmp_path / "bert", head, tiny_bert_config, num_labels=3, id2label=labels,
                         label2id={label: i for i, label in labels.items()})
    functions = {function.api_name: function.fn for function in build_demo(str(folder)).fns.values()}
    if api_name == "classify":
        (expected,) = pipeline("text-classification", model=str(folder), top_k=None)([SOURCE])
        assert functions["classify"](SOURCE) == pytest.approx({row["label"]: row["score"] for row in expected})
        assert set(expected[0]) == {"label", "score"} and {row["label"] for row in expected} == set(labels.values())
    else:
        expected = pipeline("token-classification", model=str(folder), aggregation_strategy="simple")(SOURCE)
        assert functions["tag"](SOURCE) == {"text": SOURCE, "entities": expected}
        assert expected and all(0 <= entity["start"] < entity["end"] <= len(SOURCE) for entity in expected)


def test_the_heatmap_is_the_last_layers_cross_attention_of_the_translation(translation_folder):
    from vanilla_transformer.scripts.serving.demo_app import cross_attention_figure

    model = AutoModelForSeq2SeqLM.from_pretrained(translation_folder, attn_implementation="eager").eval()
    tokenizer = AutoTokenizer.from_pretrained(translation_folder)
    inputs = tokenizer(SOURCE, return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**inputs)[0]  # <s> y1 .. yT (</s>)
        figure = cross_attention_figure(model, tokenizer, inputs, output)
        attention = model(**inputs, decoder_input_ids=output[None, :-1], output_attentions=True).cross_attentions
    (axis,) = [axis for axis in figure.axes if axis.images]
    torch.testing.assert_close(torch.as_tensor(axis.images[0].get_array().data), attention[2][0].mean(0))
    assert [label.get_text() for label in axis.get_yticklabels()] == tokenizer.convert_ids_to_tokens(output[1:])
    assert [label.get_text() for label in axis.get_xticklabels()] == tokenizer.convert_ids_to_tokens(
        inputs["input_ids"][0])


def test_a_folder_without_a_demo_or_without_a_model_is_one_line(tmp_path, tiny_bert_config, capsys):
    encoder = bert_folder(tmp_path / "encoder", VanillaBertModel, tiny_bert_config)
    for folder, said in [(encoder, "the model's architectures ['VanillaBertModel'] have no demo: it takes an "
                                   "encoder-decoder (translation) or a model whose architecture ends with"),
                         (tmp_path / "missing", "no such folder")]:
        with pytest.raises(SystemExit) as stopped:
            demo.main(["--model_dir", str(folder)])
        err = capsys.readouterr().err
        assert stopped.value.code == 1 and "Traceback" not in err and said in err.strip().splitlines()[-1]


@pytest.fixture
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason=f"playwright is not installed: {INSTALL}")
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip(f"no chromium to drive: {INSTALL}")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield browser, sync_api.expect
        browser.close()


def test_the_page_translates_and_draws_the_heatmap_in_chromium(browser, translation_demo, translation_folder,
                                                                 tmp_path):
    browser, expect = browser
    page = browser.new_page(viewport={"width": 1100, "height": 800})
    page.goto(translation_demo)
    page.locator("#source textarea").fill(SOURCE)
    page.locator("#translate").click()
    expect(page.locator("#translation textarea")).not_to_have_value("", timeout=60_000)
    assert page.locator("#translation textarea").input_value() == generated(translation_folder, SOURCE, 2)
    heatmap = page.locator("#attention img")
    heatmap.wait_for(timeout=60_000)
    box = heatmap.bounding_box()
    assert box["width"] > 200 and box["height"] > 150 and heatmap.evaluate("image => image.naturalWidth") > 200
    page.screenshot(path=tmp_path / "page.png", full_page=True)
    pixels = matplotlib.image.imread(tmp_path / "page.png")
    assert (tmp_path / "page.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert pixels.shape[0] >= 700 and pixels.shape[1] == 1100 and pixels.std() > 0.05  # a page, not a blank


def test_publish_writes_a_space_that_runs_without_the_package(translation_folder, tmp_path, free_port,
                                                              no_package_code):
    space = tmp_path / "hub-space"  # --space: beside the model folder, never inside it (it would be uploaded too)
    assert publish.main(["--model_dir", str(translation_folder), "--output_dir", str(tmp_path / "hub"),
                         "--space", "--model_name", "tiny-de-en"]) == 0
    front_matter = yaml.safe_load((space / "README.md").read_text(encoding="utf-8").split("---")[1])
    assert front_matter["sdk"] == "gradio" and front_matter["app_file"] == "app.py"
    assert front_matter["sdk_version"] == importlib.metadata.version("gradio") and front_matter["title"] == "tiny-de-en"
    required = {Requirement(line).name for line in (space / "requirements.txt").read_text().splitlines()}
    assert {"gradio", "transformers", "torch"} <= required
    assert (space / "demo_app.py").read_bytes() == DEMO_APP.read_bytes()
    hub_files = {path.name for path in (tmp_path / "hub").iterdir()} - {"README.md"}
    assert {path.name for path in (space / "model").iterdir()} == hub_files

    port = free_port()
    command = [sys.executable, "-c", no_package_code + "import runpy\nrunpy.run_path('app.py', run_name='__main__')"]
    with serving(command, port, tmp_path / "space.log", cwd=space) as url:
        translation, _ = Client(url, verbose=False).predict(SOURCE, 1, api_name="/translate")
    assert translation == generated(translation_folder, SOURCE, 1)
