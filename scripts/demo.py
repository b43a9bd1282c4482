"""A Gradio page to try a saved model folder in the browser, at http://127.0.0.1:7860 by default (Ctrl-C stops it).

What the page shows follows the folder's task: a translation model translates a sentence with the beam size of a
slider and shows the last decoder layer's cross-attention as a heatmap (a row per generated token, a column per source
token); a masked-LM BERT fills in its [MASK] (the top-k words and their probabilities); a classifier gives the
probability of each class; a token classifier highlights the words it tags. Each action is also an API endpoint
(`gradio_client`: "/translate", "/fill_mask", "/classify", "/tag"). docs/demo.md shows the page.

    python scripts/demo.py --model_dir outputs/main/translation/final
    python scripts/demo.py --model_dir outputs/main/bert/final --port 7861
    vanilla-transformer demo --model_dir outputs/ner/final --host 0.0.0.0   # reachable from other machines

The page is `vanilla_transformer.scripts.serving.demo_app`, which `publish --space` copies into a Hugging Face
Space. Our folders load with this package's classes; a folder (or Hub id) of another model type, a translation model
or a masked-LM, text or token classifier, loads its own .py files only with --trust_remote_code: that code runs on
your machine. Needs gradio (`pip install 'vanilla-transformer[demo]'`).
"""

import argparse
import os
import sys
from dataclasses import dataclass, field

from transformers import HfArgumentParser

import vanilla_transformer.modeling  # noqa: F401  (registers our models: our folders load without their code)
from vanilla_transformer.scripts.training.errors import ArgumentError, parse_arguments, run_command
from vanilla_transformer.scripts.training.model_folders import ModelFolderError, check_model_folder

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class DemoArguments:
    model_dir: str = field(metadata={"help": "a saved model folder (a training script's final/) or a Hub id: a "
                                             "translation model, a masked-LM BERT, a text or token classifier"})
    host: str = field(default="127.0.0.1", metadata={
        "help": "the address to listen on; 127.0.0.1: this machine only, 0.0.0.0: every machine that reaches it"})
    port: int = field(default=7860, metadata={"help": "the port to listen on"})
    title: str | None = field(default=None, metadata={"help": "the page's heading (default: --model_dir)"})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "run the model folder's own Python files (auto_map), for a model type this "
                                         "package and transformers do not have; read them first"}
    )

    def __post_init__(self):
        if not 1 <= self.port <= 65535:
            raise ArgumentError(f"--port {self.port}: a port is a number from 1 to 65535")


def run(args: DemoArguments) -> None:
    """Check the folder, build the page (the model loads now), serve it until Ctrl-C."""
    check_model_folder(args.model_dir, "--model_dir", trust_remote_code=args.trust_remote_code,
                       wanted="a model folder with its tokenizer (a training script's final/) or a Hub id")
    try:
        from vanilla_transformer.scripts.serving.demo_app import DemoError, build_demo
    except ModuleNotFoundError as error:
        if error.name != "gradio":
            raise
        raise ArgumentError("the demo needs gradio, which is not installed: pip install 'vanilla-transformer[demo]'"
                            ) from None
    try:
        demo = build_demo(args.model_dir, trust_remote_code=args.trust_remote_code, title=args.title)
    except DemoError as error:
        raise ModelFolderError(f"--model_dir {args.model_dir}: {error}") from None
    if args.host not in LOOPBACK:
        print(f"--host {args.host}: the page and its API are open to every machine that reaches this one")
    try:
        demo.launch(server_name=args.host, server_port=args.port, share=False, footer_links=["api"])
    except OSError:  # gradio's own message names its environment variables, not our options
        raise ArgumentError(f"--port {args.port} on --host {args.host} cannot be listened on: another program uses "
                            "the port, or the address is not one of this machine's; choose another --port") from None


def parse_args(argv: list[str] | None = None) -> DemoArguments:
    parser = HfArgumentParser(DemoArguments, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    (args,) = parse_arguments(parser, argv)
    return args


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # read when gradio is imported: no usage reports
    return run_command(run, lambda argv: (parse_args(argv),), argv,
                       kept=lambda args: "the demo stopped; it writes nothing: run the same command to start it again")


if __name__ == "__main__":
    sys.exit(main())
