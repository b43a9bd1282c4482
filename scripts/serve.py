"""Serve a trained model over HTTP: a translation folder, its CTranslate2 export, or a BERT-style folder.

    vanilla-transformer serve --model_dir outputs/main/translation/final
    curl -s localhost:8000/translate -H 'Content-Type: application/json' \\
        -d '{"q": ["Vereinigtes Königreich", "Januar"], "source": "de", "target": "en"}'
    vanilla-transformer serve --model_dir outputs/multi30k/ct2-int8 --source_lang de --target_lang en
    vanilla-transformer serve --model_dir outputs/main/bert/final --port 8001      # POST /fill-mask

Translation speaks LibreTranslate's API (POST /translate with q, source, target; GET /languages), so its clients
work unchanged; BERT-style folders answer POST /fill-mask, /classify or /tag, by the heads they have. GET /health
says what is served and how full the queue is; /docs is the OpenAPI page. Requests that arrive together are
batched (--batch_window_ms, --max_batch_size, sorted by length); the queue, the body size and the time a request may
wait are bounded, and past them the server answers 503 with Retry-After or 413 rather than falling over. Bad input
is a 4xx whose message says what to send. See docs/serving.md.

It listens on 127.0.0.1: only this machine can reach it. --host 0.0.0.0 opens it to the network, without
authentication: put it behind a proxy that has some. A folder's own Python files run only with --trust_remote_code.
"""

import argparse
import logging
import sys
from dataclasses import dataclass, field

from transformers import HfArgumentParser

import vanilla_transformer.modeling  # noqa: F401  (registers our models: our folders load without their code)
from vanilla_transformer.scripts.training.errors import ArgumentError, parse_arguments, run_command

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class ServeArguments:
    model_dir: str = field(metadata={"help": "a translation folder, its CTranslate2 export, or a BERT-style folder "
                                             "(masked-LM, text or token classification)"})
    host: str = field(default="127.0.0.1", metadata={"help": "the address to listen on (0.0.0.0: every interface)"})
    port: int = field(default=8000, metadata={"help": "the port (0: any free one, printed at start)"})
    source_lang: str | None = field(default=None, metadata={
        "help": "the language the model translates from (default: the folder's training_args.json)"})
    target_lang: str | None = field(default=None, metadata={"help": "the language it translates into (idem)"})
    max_batch_size: int = field(default=32, metadata={"help": "texts the model runs at once (1: one at a time)"})
    batch_window_ms: float = field(default=5.0, metadata={
        "help": "how long the first request of a batch waits for others to join it"})
    max_queue: int = field(default=256, metadata={"help": "texts that may wait; beyond, 503 with Retry-After"})
    request_timeout: float = field(default=30.0, metadata={"help": "seconds a request may take; beyond, 503"})
    max_request_bytes: int = field(default=64 * 1024, metadata={"help": "the largest request body; beyond, 413"})
    max_texts: int = field(default=64, metadata={"help": "texts in one request"})
    max_beams: int = field(default=8, metadata={"help": "the largest beam_size a request may ask for"})
    max_connections: int = field(default=512, metadata={
        "help": "requests in progress at once; beyond, 503 with Retry-After (and at 4 times as many open "
                "connections, uvicorn's own bare 503)"})
    threads: int = field(default=0, metadata={"help": "threads the model computes with (0: torch's or CTranslate2's "
                                                      "default)"})
    device: str = field(default="cpu", metadata={"help": "cpu, or cuda"})
    compute_type: str = field(default="default", metadata={
        "help": "a CTranslate2 export's compute type at load (int8, float16, ...; default: as exported)"})
    access_log: bool = field(default=True, metadata={"help": "log every request (uvicorn's access log)"})
    trust_remote_code: bool = field(default=False, metadata={
        "help": "run the folder's own Python files (auto_map), for a model type this package and transformers "
                "do not have; read them first"})

    def __post_init__(self):
        positive = {"--max_batch_size": self.max_batch_size, "--max_queue": self.max_queue,
                    "--request_timeout": self.request_timeout, "--max_request_bytes": self.max_request_bytes,
                    "--max_texts": self.max_texts, "--max_beams": self.max_beams,
                    "--max_connections": self.max_connections}
        for option, value in positive.items():
            if not value > 0:
                raise ArgumentError(f"{option} {value}: give a positive number")
        if self.batch_window_ms < 0 or self.threads < 0:
            raise ArgumentError("--batch_window_ms and --threads are never negative")
        if not 0 <= self.port <= 65535:
            raise ArgumentError(f"--port {self.port}: give 0 to 65535")
        if self.max_texts > self.max_queue:
            raise ArgumentError(f"--max_texts {self.max_texts} is over --max_queue {self.max_queue}: one request "
                                "could never be queued")


def run(args: ServeArguments) -> None:
    import torch
    import uvicorn

    from vanilla_transformer.scripts.serving.backends import load_backend
    from vanilla_transformer.scripts.serving.server import Limits, create_app

    if args.threads:
        torch.set_num_threads(args.threads)
    backend = load_backend(args.model_dir, trust_remote_code=args.trust_remote_code, source_lang=args.source_lang,
                           target_lang=args.target_lang, max_beams=args.max_beams, device=args.device,
                           compute_type=args.compute_type, threads=args.threads)
    limits = Limits(max_request_bytes=args.max_request_bytes, max_texts=args.max_texts,
                    max_batch_size=args.max_batch_size, batch_window_ms=args.batch_window_ms,
                    max_queue=args.max_queue, request_timeout=args.request_timeout,
                    max_in_flight=args.max_connections)
    app = create_app(backend, limits)
    served = backend.describe()
    what = (f"{served['source']} -> {served['target']}" if served["task"] == "translation"
            else ", ".join(served["tasks"]))
    print(f"serving {args.model_dir} ({what}, {served['engine']}); POST "
          f"{'/translate' if served['task'] == 'translation' else ' '.join(sorted(backend.tasks.values()))}, "
          "GET /health, /docs", flush=True)
    if args.host not in LOOPBACK:
        print(f"warning: listening on {args.host}: anyone who reaches this machine can use the model, and the "
              "server asks for no key; put it behind a proxy with authentication", file=sys.stderr, flush=True)
    logging.basicConfig(level=logging.INFO)
    config = uvicorn.Config(app, host=args.host, port=args.port, limit_concurrency=4 * args.max_connections,
                            timeout_keep_alive=5, access_log=args.access_log, log_level="info")
    uvicorn.Server(config).run()


def parse_args(argv: list[str] | None = None) -> ServeArguments:
    parser = HfArgumentParser(ServeArguments, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    (args,) = parse_arguments(parser, argv)
    return args


def main(argv: list[str] | None = None) -> int:
    return run_command(run, lambda argv: (parse_args(argv),), argv, kept=lambda args: "nothing was written")


if __name__ == "__main__":
    sys.exit(main())
