"""The HTTP API of `vanilla-transformer serve`: a FastAPI app around one back end (scripts/serving/backends.py) and
one `Batcher`.

- Translation: `POST /translate` as LibreTranslate has it (`q` a string or a list, `source`, `target`, answered
  with `translatedText`), plus `beam_size`, `length_penalty` and `max_new_tokens`; `GET /languages`.
- A BERT-style folder: `POST /fill-mask`, `POST /classify`, `POST /tag`, whichever heads it has.
- `GET /health`; the OpenAPI description at `/openapi.json`, its page at `/docs`.

Every answer that is not a result is `{"error": "..."}` (LibreTranslate's form) with a 4xx status that says what to
send instead: bad JSON, a missing or wrongly typed field, empty text, a language pair the model does not have, a text
longer than the model's positions, a body over the size limit (413). A full queue, a request that waited past its
timeout, or a server shutting down is a 503 with Retry-After. A failure inside the model is a 500 for the requests of
that batch only; the server goes on.
"""

import asyncio
import logging
import re
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictFloat, StrictStr, WithJsonSchema
from starlette.exceptions import HTTPException as StarletteHTTPException

from vanilla_transformer.scripts.serving.backends import BadRequest, BertTasks, Translation
from vanilla_transformer.scripts.serving.batching import Batcher, Overloaded

logger = logging.getLogger("vanilla_transformer.serve")
EXAMPLES = {"/translate": '{"q": "Ein Hund läuft.", "source": "de", "target": "en"}',
            "/fill-mask": '{"text": "Return the [MASK] of the list.", "top_k": 5}',
            "/classify": '{"text": "a gripping, funny film"}', "/tag": '{"text": "Ada Lovelace lived in London"}'}

EXPECTED = {"q": "a string or a list of strings", "text": "a string or a list of strings", "source": "a string",
            "target": "a string", "format": "a string", "beam_size": "an integer", "top_k": "an integer",
            "max_new_tokens": "an integer", "length_penalty": "a finite number"}


@dataclass
class Limits:
    max_request_bytes: int = 64 * 1024  # a request body; more is answered 413 before it is read in full
    max_texts: int = 64  # texts in one request
    max_batch_size: int = 32  # texts the model runs at once
    batch_window_ms: float = 5.0  # how long the first request of a batch waits for others
    max_queue: int = 256  # texts waiting; more is answered 503
    request_timeout: float = 30.0  # seconds from arrival to answer; later is answered 503
    max_in_flight: int = 512  # requests in progress (queued or running); more is answered 503


def _integral(value):
    """An integer, as JSON Schema has it: 4 or 4.0, never true, "4" or 4.5."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("not an integer")
    return value


Integer = Annotated[int, BeforeValidator(_integral), WithJsonSchema({"type": "integer"})]


class TranslateRequest(BaseModel):
    """LibreTranslate's request; its `api_key` and `alternatives` are accepted and ignored."""

    model_config = ConfigDict(extra="ignore")
    q: StrictStr | list[StrictStr] = Field(description="the text, or a list of texts")
    source: StrictStr = Field("auto", description="the source language code, or 'auto'")
    target: StrictStr | None = Field(None, description="the target language code (default: the model's)")
    format: StrictStr = Field("text", description="'text' (this server translates plain text only)")
    beam_size: Integer | None = Field(None, description="beam size (default: the model's generation config)")
    length_penalty: StrictFloat | None = Field(None, allow_inf_nan=False, description="length penalty of beam search")
    max_new_tokens: Integer | None = Field(None, description="at most this many tokens per translation")


class TextsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: StrictStr | list[StrictStr] = Field(description="the text, or a list of texts")


class FillMaskRequest(TextsRequest):
    top_k: Integer = Field(5, description="how many answers for the [MASK]")


def error(status: int, message: str, retry_after: int | None = None, headers: dict | None = None) -> JSONResponse:
    headers = {**(headers or {}), **({"Retry-After": str(retry_after)} if retry_after is not None else {})}
    return JSONResponse({"error": message}, status_code=status, headers=headers or None)


class BodyLimit:
    """Answers 413 to a body over `max_bytes`, by its Content-Length or, without one, as it streams in."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        message = (f"the request body is over {self.max_bytes} bytes: send fewer or shorter texts per request "
                   "(or start the server with a larger --max_request_bytes)")
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await error(413, message)(scope, receive, send)
        received, too_large = 0, False

        async def limited_receive():
            nonlocal received, too_large
            event = await receive()
            if event["type"] == "http.request":
                received += len(event.get("body", b""))
                if received > self.max_bytes:  # the app sees the body end here; its answer is replaced by ours
                    too_large = True
                    return {"type": "http.request", "body": b"", "more_body": False}
            return event

        async def guarded_send(event):
            if not too_large:
                await send(event)
            elif event["type"] == "http.response.start":
                await error(413, message)(scope, receive, send)

        await self.app(scope, limited_receive, guarded_send)


class InFlightLimit:
    """Answers 503 with Retry-After once `max_requests` requests are in progress (GET /health always passes): what
    uvicorn's own `limit_concurrency` does, but with the header and a message, so that clients back off."""

    def __init__(self, app, max_requests: int):
        self.app, self.max_requests, self.active = app, max_requests, 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] == "/health":
            return await self.app(scope, receive, send)
        if self.active >= self.max_requests:
            return await error(503, f"the server is busy: {self.active} requests are in progress; retry after 1 s",
                               1)(scope, receive, send)
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1


def validation_message(exc: RequestValidationError, request: Request) -> str:
    """Pydantic's errors as one line that says what to send."""
    example = EXAMPLES.get(request.url.path, "{...}")
    parts = {}
    for item in exc.errors():
        path = [str(part) for part in item.get("loc", ()) if part != "body"]
        location = ".".join(path)
        if item.get("type") == "json_invalid":
            return (f"the body is not valid JSON ({item.get('ctx', {}).get('error', item.get('msg'))}): send a "
                    f"JSON object such as {example}")
        if item.get("type") in ("missing", "model_attributes_type", "dict_type") and not location:
            content_type = request.headers.get("content-type", "")
            hint = "" if "json" in content_type else f" with Content-Type: application/json (not {content_type!r})"
            return f"send a JSON object such as {example}{hint}"
        field = path[0] if path else "body"
        if item.get("type") == "extra_forbidden":
            parts[field] = f"{location}: no such field"
        elif field in EXPECTED:  # a union (q: a string or a list) gives an error per member: one line instead
            parts[field] = f"{field}: give {EXPECTED[field]}"
        else:
            parts.setdefault(field, f"{location}: {item.get('msg')}")
    return "; ".join(parts.values()) + f" (send a JSON object such as {example})"


def create_app(backend, limits: Limits | None = None) -> FastAPI:
    """The app serving `backend` (a back end of scripts/serving/backends.py), batching with `limits`."""
    limits = limits or Limits()
    state = {"started": time.time(), "answered": 0}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.batcher = Batcher(backend.run, max_batch_size=limits.max_batch_size,
                                    window_s=limits.batch_window_ms / 1000, max_queue=limits.max_queue)
        yield
        app.state.batcher.stop()

    app = FastAPI(title="vanilla-transformer serve", lifespan=lifespan,
                  description=f"{backend.describe()['task']} with {backend.folder.name} ({backend.engine})")
    endpoints = (["POST /translate", "GET /languages"] if isinstance(backend, Translation)
                 else [f"POST {path}" for path in sorted(backend.tasks.values())]) + ["GET /health", "GET /docs"]

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        return error(400, validation_message(exc, request))

    @app.exception_handler(StarletteHTTPException)
    async def not_here(request: Request, exc: StarletteHTTPException):
        if exc.status_code in (404, 405):
            return error(exc.status_code, f"{request.method} {request.url.path}: this server answers "
                                          f"{', '.join(endpoints)}", headers=exc.headers)  # 405: Allow
        if exc.status_code == 400:  # FastAPI could not parse the body at all (JSON nested too deep, say)
            return error(400, f"the body could not be read as JSON ({exc.detail}): send a JSON object such as "
                              f"{EXAMPLES.get(request.url.path, '{...}')}")
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(BadRequest)
    async def bad_request(request: Request, exc: BadRequest):
        return error(exc.status, str(exc))

    def texts_of(value: str | list[str], field: str) -> list[str]:
        texts = [value] if isinstance(value, str) else value
        if not texts:
            raise BadRequest(f"{field} is an empty list: send a text, or a list of 1 to {limits.max_texts}")
        if len(texts) > limits.max_texts:
            raise BadRequest(f"{field} holds {len(texts)} texts; send at most {limits.max_texts} per request", 413)
        return texts

    async def answer(inputs: list, key) -> list | JSONResponse:
        """The batcher's outputs for `inputs`, or the 503/500 that says why not."""
        try:
            future = app.state.batcher.submit(inputs, key)
        except Overloaded as full:
            return error(503, f"the server is busy: {full}; retry after {full.retry_after} s", full.retry_after)
        try:
            outputs = await asyncio.wait_for(asyncio.wrap_future(future), limits.request_timeout)
        except TimeoutError:
            future.cancel()
            return error(503, f"no answer within {limits.request_timeout:g} s (the server is busy); retry later, "
                              "or send fewer texts", max(1, round(limits.request_timeout / 2)))
        except Overloaded as stopping:
            return error(503, str(stopping), stopping.retry_after)
        except Exception:  # noqa: BLE001: a failure of the model for this batch; the server goes on
            logger.exception("the model failed on a batch")
            return error(500, "the model failed on this request (the server log has the details)")
        state["answered"] += 1
        return outputs

    @app.get("/health")
    async def health():
        batcher = app.state.batcher
        return {"status": "ok", "model": str(backend.folder), **backend.describe(),
                "queue": {"waiting": batcher.waiting, "limit": limits.max_queue},
                "batches": batcher.batches, "texts": batcher.inputs, "answered": state["answered"],
                "uptime_s": round(time.time() - state["started"], 1)}

    @app.get("/")
    async def root():
        return {"model": backend.folder.name, "endpoints": endpoints}

    if isinstance(backend, Translation):
        @app.get("/languages")
        async def languages():
            """LibreTranslate's list: the languages and the targets each translates to."""
            return [{"code": backend.source_lang, "name": language_name(backend.source_lang),
                     "targets": [backend.target_lang]},
                    {"code": backend.target_lang, "name": language_name(backend.target_lang), "targets": []}]

        @app.post("/translate")
        async def translate(request: TranslateRequest):
            """Translate `q` (a text, or a list of texts); the answer's `translatedText` has the same shape."""
            if request.format != "text":
                raise BadRequest(f"format {request.format!r}: this server translates plain text; send format 'text'")
            backend.check_pair(request.source, request.target)
            options = backend.options(request.beam_size, request.length_penalty, request.max_new_tokens)
            texts = texts_of(request.q, "q")
            outputs = await answer(backend.encode(texts), options)
            if isinstance(outputs, JSONResponse):
                return outputs
            return {"translatedText": outputs[0] if isinstance(request.q, str) else outputs}

    if isinstance(backend, BertTasks):
        def bert_endpoint(task: str, request_class, describe: str):
            async def endpoint(request: request_class):
                top_k = backend.check_top_k(request.top_k) if task == "fill-mask" else None
                texts = texts_of(request.text, "text")
                outputs = await answer(backend.encode(task, texts), (task, top_k))
                if isinstance(outputs, JSONResponse):
                    return outputs
                return {"results": outputs[0] if isinstance(request.text, str) else outputs}

            endpoint.__doc__ = describe
            app.post(backend.tasks[task], name=task)(endpoint)

        describe = {"fill-mask": (FillMaskRequest, "The top_k words for the one [MASK] of each text, with "
                                                   "their probabilities"),
                    "text-classification": (TextsRequest, "Every label of each text with its probability"),
                    "token-classification": (TextsRequest, "The tagged words of each text (entity, span, score)")}
        for task in backend.tasks:
            bert_endpoint(task, *describe[task])

    app.openapi = lambda: document_limits(app, backend, limits)
    app.add_middleware(BodyLimit, max_bytes=limits.max_request_bytes)
    app.add_middleware(InFlightLimit, max_requests=limits.max_in_flight)  # the outermost: refuses before reading
    return app


def document_limits(app: FastAPI, backend, limits: Limits) -> dict:
    """The OpenAPI description as the server behaves: the bounds it checks (a text with a non-space character, at
    most `max_texts` of them, beam size, new tokens, top k) in the request schemas, and the answers it gives instead
    of FastAPI's 422: 400, 413 and 503, each `{"error": "..."}`."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    from fastapi.openapi.utils import get_openapi

    spec = get_openapi(title=app.title, version="1", description=app.description, routes=app.routes)
    schemas = spec.get("components", {}).get("schemas", {})
    text = {"type": "string", "minLength": 1, "pattern": r"\S"}
    texts = {"anyOf": [text, {"type": "array", "items": text, "minItems": 1, "maxItems": limits.max_texts}]}
    bounds = {"beam_size": (1, getattr(backend, "max_beams", 1)), "max_new_tokens": (1, backend.max_positions),
              "length_penalty": (-10, 10), "top_k": (1, getattr(backend, "max_top_k", 1))}
    for schema in schemas.values():
        properties = schema.get("properties", {})
        for name in ("q", "text"):
            if name in properties:
                properties[name] = {**texts, "description": properties[name].get("description", "")}
        if "top_k" in properties:  # fill-mask: exactly one mask token in each text
            mask = re.escape(backend.tokenizer.mask_token)
            one_mask = {"type": "string", "pattern": f"^(?:(?!{mask})[\\s\\S])*{mask}(?:(?!{mask})[\\s\\S])*$"}
            properties["text"]["anyOf"] = [one_mask, {**texts["anyOf"][1], "items": one_mask}]
        if "format" in properties:
            properties["format"]["enum"] = ["text"]
        if isinstance(backend, Translation) and "source" in properties:  # the one pair the model translates
            properties["source"]["enum"] = [backend.source_lang, "auto"]
            properties["target"]["anyOf"] = [{"enum": [backend.target_lang]}, {"type": "null"}]
        for name, (low, high) in bounds.items():
            if name in properties:
                for option in properties[name].get("anyOf", [properties[name]]):
                    if option.get("type") in ("integer", "number"):
                        option.update(minimum=low, maximum=high)
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    schemas["Error"] = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
    answer = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    for operations in spec["paths"].values():
        for operation in operations.values():
            operation["responses"].pop("422", None)
            if "requestBody" in operation:
                operation["responses"].update({
                    "400": {"description": "a request the model cannot answer; the message says what to send",
                            **answer},
                    "413": {"description": f"a body over {limits.max_request_bytes} bytes", **answer},
                    "503": {"description": "busy: the queue is full, or no answer within the timeout; see "
                                           "Retry-After", **answer}})
    app.openapi_schema = spec
    return spec


def language_name(code: str) -> str:
    from babel import Locale, UnknownLocaleError

    try:
        return Locale.parse(code.replace("-", "_")).get_display_name("en") or code
    except (UnknownLocaleError, ValueError):
        return code


__all__ = ["Limits", "create_app"]
