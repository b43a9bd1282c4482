"""`vanilla-transformer serve` as a real server process on a loopback port (`--port 0`: the port uvicorn prints):
translations that equal `generate()` one sentence at a time, whether requests come alone or together (batched), on
the PyTorch model and on its CTranslate2 export; BERT folders' fill-mask, classification and tagging equal to the
pipelines'; every bad request a 4xx whose message says what to send, with the server up afterwards; a flood of
requests answered 200 or 503 with Retry-After; a folder's own code refused without --trust_remote_code."""

import http.client
import json
import os
import re
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, pipeline

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from vanilla_transformer.modeling import (  # noqa: E402
    VanillaBertForMaskedLM,
    VanillaBertForSequenceClassification,
    VanillaBertForTokenClassification,
    VanillaTransformerForConditionalGeneration,
)
from vanilla_transformer.modeling.hub import save_for_hub  # noqa: E402
from vanilla_transformer.scripts import serve  # noqa: E402
from vanilla_transformer.tokenization import special_token_ids, train_bpe_tokenizer, train_wordpiece_tokenizer  # noqa: E402

TEXTS = ["ein kleiner Hund läuft", "a small dog runs", "zwei Katzen schlafen im Garten", "two cats sleep",
         "der Mann liest ein Buch", "the man reads a book", "eine Frau singt", "a woman sings"] * 4
SENTENCES = ["ein Hund", "zwei Katzen schlafen im Garten", "der Mann liest", "eine kleine Frau singt laut",
             "Hund", "ein Buch", "zwei Männer", "die Katze schläft im Haus"]


class Server:
    """`vanilla-transformer serve` in a child process, on the free port it picked; `stop()` ends it."""

    def __init__(self, model_dir, *options: str, timeout: float = 120):
        command = [sys.executable, "-m", "vanilla_transformer.scripts", "serve", "--model_dir", str(model_dir),
                   "--port", "0", "--no_access_log", *options]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.lines: list[str] = []
        found = threading.Event()

        def read():
            for line in self.process.stdout:
                self.lines.append(line)
                if "Uvicorn running on" in line:
                    found.set()
            found.set()  # the process ended

        threading.Thread(target=read, daemon=True).start()
        found.wait(timeout)
        match = next((re.search(r"http://127\.0\.0\.1:(\d+)", line) for line in self.lines
                      if "Uvicorn running on" in line), None)
        if match is None:
            self.stop()
            raise AssertionError("the server did not start:\n" + "".join(self.lines[-40:]))
        self.port = int(match.group(1))

    def request(self, method: str, path: str, body=None, headers: dict | None = None, timeout: float = 60):
        """(status, headers, the JSON answer); `body`: bytes as they are, anything else as JSON."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        if body is not None and not isinstance(body, bytes):
            body = json.dumps(body).encode()
            headers = {"Content-Type": "application/json", **(headers or {})}
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        raw = response.read()
        connection.close()
        try:
            answer = json.loads(raw)
        except ValueError:
            answer = raw.decode(errors="replace")
        return response.status, response.headers, answer  # headers: case-insensitive

    def post(self, path: str, body, **kwargs):
        return self.request("POST", path, body, **kwargs)

    def alive(self) -> bool:
        return self.process.poll() is None and self.request("GET", "/health")[0] == 200

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()


@pytest.fixture(scope="module")
def translation_folder(tmp_path_factory, tiny_transformer_config):
    """A tiny untrained de->en model: its outputs are arbitrary but deterministic, which is all equality needs."""
    tokenizer = train_bpe_tokenizer(TEXTS, vocab_size=80, min_frequency=1, show_progress=False)
    torch.manual_seed(0)
    model = VanillaTransformerForConditionalGeneration(tiny_transformer_config(**special_token_ids(tokenizer)))
    model.generation_config.update(max_new_tokens=8, num_beams=1)
    folder = save_for_hub(model.eval(), tmp_path_factory.mktemp("translation") / "model", tokenizer)
    (folder / "training_args.json").write_text(json.dumps({"source_lang": "de", "target_lang": "en"}))
    return folder


def reference(folder, texts: list[str], **generate) -> list[str]:
    """What generate() gives each text alone: no padding, no batch."""
    model = VanillaTransformerForConditionalGeneration.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    outputs = []
    for text in texts:
        with torch.no_grad():
            ids = model.generate(**tokenizer(text, return_tensors="pt"), **generate)
        outputs.append(tokenizer.decode(ids[0], skip_special_tokens=True))
    return outputs


@pytest.fixture(scope="module")
def translation_server(translation_folder):
    server = Server(translation_folder, "--batch_window_ms", "50", "--max_request_bytes", "70000", "--max_texts", "10")
    yield server
    server.stop()


def test_translate_answers_as_libretranslate_does_and_equals_generate(translation_server, translation_folder):
    expected = reference(translation_folder, SENTENCES)
    status, _, answer = translation_server.post("/translate", {"q": SENTENCES[1], "source": "de", "target": "en"})
    assert (status, answer) == (200, {"translatedText": expected[1]})
    status, _, answer = translation_server.post("/translate", {"q": SENTENCES, "source": "auto", "target": "en",
                                                               "api_key": "", "format": "text"})
    assert (status, answer) == (200, {"translatedText": expected})  # a list in, a list out; api_key ignored
    beams = reference(translation_folder, SENTENCES[:3], num_beams=3, length_penalty=0.5)
    status, _, answer = translation_server.post("/translate", {"q": SENTENCES[:3], "source": "de",
                                                               "beam_size": 3, "length_penalty": 0.5})
    assert (status, answer["translatedText"]) == (200, beams)
    assert translation_server.request("GET", "/languages")[2] == [
        {"code": "de", "name": "German", "targets": ["en"]}, {"code": "en", "name": "English", "targets": []}]
    status, _, spec = translation_server.request("GET", "/openapi.json")
    assert status == 200 and "/translate" in spec["paths"] and "/health" in spec["paths"]


def test_the_openapi_description_says_the_bounds_and_the_answers_the_server_gives(translation_server):
    """What schemathesis checks (docs/serving.md): a client generated from the description sends what the server
    takes, and expects the statuses it answers."""
    spec = translation_server.request("GET", "/openapi.json")[2]
    request = spec["components"]["schemas"]["TranslateRequest"]["properties"]
    assert request["q"]["anyOf"][1]["maxItems"] == 10 and request["q"]["anyOf"][0]["pattern"] == r"\S"
    beam = next(option for option in request["beam_size"]["anyOf"] if option.get("type") == "integer")
    assert (beam["minimum"], beam["maximum"]) == (1, 8)
    assert request["source"]["enum"] == ["de", "auto"] and request["format"]["enum"] == ["text"]
    responses = spec["paths"]["/translate"]["post"]["responses"]
    assert {"200", "400", "413", "503"} <= set(responses) and "422" not in responses
    status, headers, _ = translation_server.request("DELETE", "/health")
    assert status == 405 and headers["Allow"] == "GET"


def test_requests_that_arrive_together_are_batched_and_answered_as_alone(translation_server, translation_folder):
    expected = dict(zip(SENTENCES, reference(translation_folder, SENTENCES)))
    before = translation_server.request("GET", "/health")[2]
    with ThreadPoolExecutor(len(SENTENCES) * 2) as pool:
        answers = list(pool.map(lambda text: translation_server.post("/translate", {"q": text, "source": "de"}),
                                SENTENCES * 2))
    assert [answer for _, _, answer in answers] == [{"translatedText": expected[text]} for text in SENTENCES * 2]
    after = translation_server.request("GET", "/health")[2]
    texts, batches = after["texts"] - before["texts"], after["batches"] - before["batches"]
    assert texts == 16 and batches < texts  # several requests shared a batch


# body (bytes as sent, or an object sent as JSON), extra headers -> status, a part of the message
BAD_REQUESTS = {
    "not JSON": (b'{"q": "ein Hund', {"Content-Type": "application/json"}, 400, "the body is not valid JSON"),
    "a form, not JSON": (b"q=ein+Hund&source=de", {"Content-Type": "application/x-www-form-urlencoded"}, 400,
                         "with Content-Type: application/json"),
    "no body": (b"", {"Content-Type": "application/json"}, 400, "send a JSON object such as"),
    "JSON nested deeper than the parser goes": (b"[" * 30000 + b"]" * 30000, {"Content-Type": "application/json"},
                                                400, "the body could not be read as JSON"),
    "not UTF-8": (b'{"q": "J\xe4nner"}', {"Content-Type": "application/json"}, 400, "could not be read as JSON"),
    "a JSON list": ([1, 2], {}, 400, "send a JSON object such as"),
    "no q": ({"source": "de"}, {}, 400, "q: give a string or a list of strings"),
    "q a number": ({"q": 5}, {}, 400, "q: give a string or a list of strings"),
    "empty text": ({"q": "   "}, {}, 400, "q is empty: send the text itself"),
    "an empty text in a list": ({"q": ["ein Hund", ""]}, {}, 400, "q[1] is empty"),
    "an empty list": ({"q": []}, {}, 400, "q is an empty list"),
    "too many texts": ({"q": ["Hund"] * 11}, {}, 413, "send at most 10 per request"),
    "another language pair": ({"q": "chien", "source": "fr", "target": "en"}, {}, 400,
                              "this model translates de to en only, not fr to en"),
    "another target": ({"q": "Hund", "source": "de", "target": "ja"}, {}, 400, "target 'en'"),
    "longer than the positions": ({"q": "Hund " * 70}, {}, 400, "this model reads at most 64"),
    "beam size 0": ({"q": "Hund", "beam_size": 0}, {}, 400, "beam_size 0: this server takes 1 to 8"),
    "beam size a string": ({"q": "Hund", "beam_size": "4"}, {}, 400, "beam_size: give an integer"),
    "length penalty NaN": (b'{"q": "Hund", "length_penalty": NaN}', {"Content-Type": "application/json"}, 400,
                           "length_penalty: give a finite number"),
    "max_new_tokens beyond the positions": ({"q": "Hund", "max_new_tokens": 65}, {}, 400,
                                            "this model writes 1 to 64 tokens"),
    "html": ({"q": "<b>Hund</b>", "format": "html"}, {}, 400, "this server translates plain text"),
    "over the size limit": ({"q": "Hund " * 15000}, {}, 413, "the request body is over 70000 bytes"),
    "a Content-Length that is not a number": (b"{}", {"Content-Length": "x"}, 413, None),
}


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=list(BAD_REQUESTS))
def test_a_bad_request_is_a_4xx_that_says_what_to_send(case, translation_server):
    body, headers, status, message = BAD_REQUESTS[case]
    try:
        answered, _, answer = translation_server.post("/translate", body, headers=headers)
    except (http.client.HTTPException, ConnectionError):  # http.client refuses to send some headers itself
        answered, answer = None, None
    if message is None:  # a malformed header: refused by the server or the HTTP layer, never a 500
        assert answered in (None, 400, 413)
    else:
        assert answered == status and message in answer["error"], answer
    assert translation_server.alive()


def test_a_wrong_path_or_method_names_the_endpoints(translation_server):
    status, _, answer = translation_server.request("GET", "/translate")
    assert status == 405 and "POST /translate" in answer["error"]
    status, _, answer = translation_server.post("/fill-mask", {"text": "a [MASK]"})
    assert status == 404 and "this server answers POST /translate" in answer["error"]


def test_a_body_streamed_without_length_is_cut_at_the_limit(translation_server):
    connection = http.client.HTTPConnection("127.0.0.1", translation_server.port, timeout=30)
    chunks = (b'{"q": "' + b"Hund " * 2000 + b'"}' for _ in range(10))  # ~100 kB, no Content-Length
    connection.request("POST", "/translate", body=chunks, headers={"Content-Type": "application/json"},
                       encode_chunked=True)
    response = connection.getresponse()
    assert response.status == 413 and "over 70000 bytes" in json.loads(response.read())["error"]
    assert translation_server.alive()


def test_a_flood_is_answered_200_or_503_with_retry_after_and_the_server_stays_up(translation_folder):
    server = Server(translation_folder, "--max_queue", "6", "--max_batch_size", "2", "--max_texts", "4",
                    "--max_connections", "8")  # two refusals: a full queue, too many requests in progress
    try:
        body = {"q": SENTENCES[:4], "source": "de", "beam_size": 4, "max_new_tokens": 32}
        with ThreadPoolExecutor(24) as pool:
            answers = list(pool.map(lambda _: server.post("/translate", body), range(48)))
        statuses = [status for status, _, _ in answers]
        assert set(statuses) <= {200, 503} and statuses.count(503) > 0 and statuses.count(200) > 0
        for status, headers, answer in answers:
            if status == 503:
                assert int(headers["Retry-After"]) >= 1 and "the server is busy" in answer["error"]
        assert server.alive()
    finally:
        server.stop()


def test_a_request_past_its_timeout_is_a_503_and_the_next_is_answered(translation_folder):
    server = Server(translation_folder, "--request_timeout", "0.001")
    try:
        status, headers, answer = server.post("/translate", {"q": SENTENCES, "source": "de", "beam_size": 8,
                                                             "max_new_tokens": 64})
        assert status == 503 and "no answer within 0.001 s" in answer["error"] and "Retry-After" in headers
        assert server.alive()
    finally:
        server.stop()


def test_the_ctranslate2_export_is_served_with_the_same_translations(translation_folder, tmp_path):
    pytest.importorskip("ctranslate2")
    from vanilla_transformer.modeling.convert_ctranslate2 import export_ctranslate2

    export = export_ctranslate2(translation_folder, tmp_path / "ct2")
    assert not (export / "training_args.json").exists()
    server = Server(export, "--source_lang", "de", "--target_lang", "en")
    try:
        status, _, answer = server.post("/translate", {"q": SENTENCES, "source": "de", "target": "en"})
        assert (status, answer["translatedText"]) == (200, reference(translation_folder, SENTENCES))
        health = server.request("GET", "/health")[2]
        assert (health["engine"], health["source"], health["target"]) == ("ctranslate2", "de", "en")
        status, _, answer = server.post("/translate", {"q": "Hund " * 70})
        assert status == 400 and "at most 64" in answer["error"]
    finally:
        server.stop()


@pytest.fixture(scope="module")
def bert_folders(tmp_path_factory, tiny_bert_config):
    tokenizer = train_wordpiece_tokenizer(TEXTS, vocab_size=80, min_frequency=1, show_progress=False)
    root = tmp_path_factory.mktemp("bert")
    torch.manual_seed(0)
    spread = {"vocab_size": len(tokenizer), "initializer_range": 0.5}  # no near-ties among an untrained model's scores
    config = tiny_bert_config(**spread)
    labels = {"id2label": {0: "negative", 1: "positive"}, "label2id": {"negative": 0, "positive": 1}}
    tags = {"id2label": {0: "O", 1: "B-ANIMAL", 2: "I-ANIMAL"}, "label2id": {"O": 0, "B-ANIMAL": 1, "I-ANIMAL": 2}}
    return {"mlm": save_for_hub(VanillaBertForMaskedLM(config).eval(), root / "mlm", tokenizer),
            "classify": save_for_hub(VanillaBertForSequenceClassification(
                tiny_bert_config(num_labels=2, **spread, **labels)).eval(), root / "cls", tokenizer),
            "tag": save_for_hub(VanillaBertForTokenClassification(
                tiny_bert_config(num_labels=3, **spread, **tags)).eval(), root / "tag", tokenizer)}


def test_a_masked_lm_folder_answers_fill_mask_as_the_pipeline(bert_folders):
    folder = bert_folders["mlm"]
    texts = ["ein kleiner [MASK] läuft", "two [MASK] sleep", "der Mann [MASK] ein Buch"]
    expected = pipeline("fill-mask", model=str(folder), top_k=3)(texts)
    server = Server(folder)
    try:
        status, _, answer = server.post("/fill-mask", {"text": texts, "top_k": 3})
        assert status == 200
        assert [[a["token"] for a in answers] for answers in answer["results"]] == [
            [a["token_str"] for a in answers] for answers in expected]
        assert [a["score"] for answers in answer["results"] for a in answers] == pytest.approx(
            [a["score"] for answers in expected for a in answers], abs=1e-5)
        status, _, alone = server.post("/fill-mask", {"text": texts[1], "top_k": 3})  # a batch of one text
        assert status == 200 and [a["token"] for a in alone["results"]] == [a["token_str"] for a in expected[1]]
        status, _, answer = server.post("/fill-mask", {"text": "no mask here"})
        assert status == 400 and "has 0 [MASK] tokens: put exactly one [MASK]" in answer["error"]
        status, _, answer = server.post("/fill-mask", {"text": "two [MASK]", "top_k": 0})
        assert status == 400 and "top_k 0" in answer["error"]
        status, _, answer = server.post("/fill-mask", {"text": "two [MASK]", "topk": 3})
        assert status == 400 and "topk: no such field" in answer["error"]
        status, _, answer = server.post("/classify", {"text": "two cats"})
        assert status == 404 and "POST /fill-mask" in answer["error"]
        assert server.alive()
    finally:
        server.stop()


def test_classification_and_tagging_folders_answer_as_their_pipelines(bert_folders):
    texts = ["a small dog runs", "the man reads a book"]
    for kind, path, task, options in (("classify", "/classify", "text-classification", {"top_k": None}),
                                      ("tag", "/tag", "token-classification", {"aggregation_strategy": "simple"})):
        expected = pipeline(task, model=str(bert_folders[kind]), **options)(texts)
        server = Server(bert_folders[kind])
        try:
            status, _, answer = server.post(path, {"text": texts})
            assert status == 200 and len(answer["results"]) == 2
            if kind == "classify":
                assert [[(a["label"], round(a["score"], 5)) for a in labels] for labels in answer["results"]] == [
                    [(a["label"], round(float(a["score"]), 5)) for a in labels] for labels in expected]
            else:
                assert [[(e["entity"], e["word"], e["start"], e["end"]) for e in entities]
                        for entities in answer["results"]] == [
                    [(e["entity_group"], e["word"], e["start"], e["end"]) for e in entities] for entities in expected]
            status, _, single = server.post(path, {"text": texts[0]})  # alone: no padding, scores within 1e-5
            assert status == 200 and [a.get("label", a.get("entity")) for a in single["results"]] == [
                a.get("label", a.get("entity")) for a in answer["results"][0]]
            assert [a["score"] for a in single["results"]] == pytest.approx(
                [a["score"] for a in answer["results"][0]], abs=1e-5)
        finally:
            server.stop()


def test_a_folder_with_its_own_code_is_refused_without_trust_remote_code(tmp_path, capsys):
    folder = tmp_path / "custom"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "someone_elses", "is_encoder_decoder": True,
                                                    "auto_map": {"AutoConfig": "configuration.SomeConfig"}}))
    (folder / "configuration.py").write_text("raise SystemExit('this code must not run')\n")
    with pytest.raises(SystemExit) as stopped:
        serve.main(["--model_dir", str(folder)])
    assert stopped.value.code == 1
    err = capsys.readouterr().err
    assert "whose code is the folder's own Python files (configuration.py)" in err and "--trust_remote_code" in err


def test_it_listens_on_loopback_unless_told(translation_folder, capsys):
    assert serve.parse_args(["--model_dir", "m"]).host == "127.0.0.1"
    with pytest.raises(SystemExit) as stopped:
        serve.main(["--model_dir", str(translation_folder), "--max_texts", "500"])
    assert stopped.value.code == 1 and "one request could never be queued" in capsys.readouterr().err


def test_a_folder_without_its_languages_asks_for_them(translation_folder, tmp_path, capsys):
    folder = tmp_path / "model"
    folder.mkdir()
    for path in Path(translation_folder).iterdir():
        if path.name != "training_args.json":
            (folder / path.name).write_bytes(path.read_bytes())
    with pytest.raises(SystemExit):
        serve.main(["--model_dir", str(folder)])
    assert "give --source_lang and --target_lang" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        serve.main(["--model_dir", str(folder), "--source_lang", "de", "--target_lang", "en;rm"])
    assert "'en;rm' is not a language code" in capsys.readouterr().err


def test_a_damaged_ctranslate2_export_is_refused_in_one_line(translation_folder, tmp_path, capsys):
    pytest.importorskip("ctranslate2")
    from vanilla_transformer.modeling.convert_ctranslate2 import export_ctranslate2

    export = export_ctranslate2(translation_folder, tmp_path / "ct2")
    (export / "generation_config.json").write_text('{"num_beams": "four"}')
    with pytest.raises(SystemExit):
        serve.main(["--model_dir", str(export), "--source_lang", "de", "--target_lang", "en"])
    assert "generation_config.json: num_beams 'four' is not a usable number" in capsys.readouterr().err
    (export / "generation_config.json").write_text("{not json")
    with pytest.raises(SystemExit):
        serve.main(["--model_dir", str(export), "--source_lang", "de", "--target_lang", "en"])
    assert "is not a usable CTranslate2 export (JSONDecodeError" in capsys.readouterr().err
