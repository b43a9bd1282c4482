"""Shared test setup and fixtures: offline Hugging Face caches in a temporary folder, tiny seeded configs, the shared
data path, a Python process without our package. Tests take what they need as fixtures (arguments), never by importing
this file.

The HF_* variables are read when transformers is imported, so they are set here, before any test imports it.
"""

import atexit
import os
import shutil
import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

_CACHE = tempfile.mkdtemp(prefix="vt-hf-")
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HOME"] = _CACHE
os.environ["HF_MODULES_CACHE"] = os.path.join(_CACHE, "modules")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

# Test tensors are tiny: a second intra-op thread costs more than it saves, and far more on a busy machine
# (a 27x32 linear: ~8 us on one thread, ~800 us on two with both cores loaded). Subprocesses inherit the variable.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"reference corpora not found at {SHARED_DATA} (they live beside the project checkout)")
    return SHARED_DATA


def _tiny_transformer_config(**overrides):
    from vanilla_transformer.modeling import VanillaTransformerConfig

    args = dict(
        vocab_size=99,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=37,
        decoder_ffn_dim=37,
        max_position_embeddings=64,
        dropout=0.0,
    )
    args.update(overrides)
    return VanillaTransformerConfig(**args)


@pytest.fixture(scope="session")  # a pure factory: usable from module-scoped fixtures too
def tiny_transformer_config():
    """A factory: tiny_transformer_config(**overrides) -> a 2+2-layer, 32-wide VanillaTransformerConfig, dropout off."""
    return _tiny_transformer_config


def _tiny_bert_config(**overrides):
    """A 2-layer, 32-wide BERT with dropout off (tests compare outputs exactly)."""
    from vanilla_transformer.modeling import VanillaBertConfig

    args = dict(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=64,
        type_vocab_size=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    args.update(overrides)
    return VanillaBertConfig(**args)


@pytest.fixture(scope="session")  # a pure factory: usable from module-scoped fixtures too
def tiny_bert_config():
    """A factory: tiny_bert_config(**overrides) -> a 2-layer, 32-wide VanillaBertConfig, dropout off."""
    return _tiny_bert_config


_NO_PACKAGE = textwrap.dedent(
    """
    import importlib.abc, sys
    class _NoPackage(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "vanilla_transformer" or name.startswith("vanilla_transformer."):
                raise ModuleNotFoundError(f"No module named {name!r} (hidden for this test)")
            return None
    sys.meta_path.insert(0, _NoPackage())
    try:
        import vanilla_transformer  # noqa
        raise SystemExit("vanilla_transformer should not be importable here")
    except ModuleNotFoundError:
        pass
    """
)


def _run_without_package(code: str, cwd: str, timeout: int = 600, python: str | None = None) -> dict:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [python or sys.executable, "-c", _NO_PACKAGE + textwrap.dedent(code)],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise AssertionError(f"subprocess failed:\nSTDOUT:\n{result.stdout}\nSTDERR:\n{result.stderr[-5000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def no_package_code() -> str:
    """Python code after which `vanilla_transformer` cannot be imported (checked): put first in a `python -c` whose
    process must run as on a machine without this package, e.g. a server that `run_without_package` cannot wait for."""
    return _NO_PACKAGE


@pytest.fixture
def run_without_package():
    """run_without_package(code, cwd, timeout=600, python=None) -> dict: run `code` (which prints one JSON object as
    its last line) in a fresh Python process in which `vanilla_transformer` cannot be imported, as on a machine that
    only has transformers (a Hub user with trust_remote_code=True); `python`: another interpreter (another
    environment, another transformers release). Returns that object."""
    return _run_without_package


# ------------------------------------------------------------------------------ the scripts' tests, shared
# Helpers of the training scripts' tests, as fixtures (session-scoped: plain functions, usable from module-scoped
# fixtures too). The scripts are imported as the installed package has them: vanilla_transformer.scripts.<name>.

_BABEL_PAIRS = []


def _translation_pairs() -> list[tuple[str, str]]:
    if not _BABEL_PAIRS:
        from vanilla_transformer.scripts.training.translation_data import babel_pairs

        _BABEL_PAIRS.extend(babel_pairs("de", "en"))
    return _BABEL_PAIRS


def _write_translation_corpus(folder: Path) -> Path:
    """48 training pairs (.gz) and 8 validation pairs (plain text), one file per language."""
    import gzip

    pairs = _translation_pairs()
    folder.mkdir(parents=True, exist_ok=True)
    splits = {"train": (pairs[::25][:48], gzip.open), "val": (pairs[7::97][:8], open)}
    for split, (chosen, opener) in splits.items():
        for lang, side in (("de", 0), ("en", 1)):
            suffix = ".gz" if opener is gzip.open else ""
            with opener(folder / f"{split}.{lang}{suffix}", "wt", encoding="utf-8") as handle:
                handle.writelines(pair[side] + "\n" for pair in chosen)
    return folder


def _translation_args(corpus: Path, output_dir: Path, *extra: str) -> list[str]:
    """A tiny model on the tiny corpus: about 12 micro-batches per epoch, a few ms per step."""
    return [
        "--train_split", str(corpus / "train"), "--validation_split", str(corpus / "val"),
        "--output_dir", str(output_dir), "--vocab_size", "150", "--d_model", "32", "--encoder_layers", "1",
        "--decoder_layers", "1", "--attention_heads", "4", "--ffn_dim", "64", "--max_tokens", "64",
        "--max_length", "24", "--warmup_steps", "4", "--learning_rate", "3e-3", "--num_beams", "2",
        "--eval_batch_size", "16", "--logging_steps", "1", "--save_steps", "3", *extra,
    ]  # fmt: skip


def _run_translation(argv: list[str]):
    from vanilla_transformer.scripts import train_translation

    return train_translation.run(*train_translation.parse_args(argv))


def _log_records(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="session")
def write_translation_corpus():
    """write_translation_corpus(folder) -> folder: a tiny parallel corpus (CLDR names), train.{de,en}.gz, val.{de,en}."""
    return _write_translation_corpus


@pytest.fixture(scope="session")
def translation_args():
    """translation_args(corpus, output_dir, *extra) -> train_translation's argv for a tiny model on that corpus."""
    return _translation_args


@pytest.fixture(scope="session")
def run_translation():
    """run_translation(argv) -> TrainOutcome: train_translation in this process (its errors raised, not printed)."""
    return _run_translation


@pytest.fixture(scope="session")
def log_records():
    """log_records(output_dir) -> the records of its log.jsonl."""
    return _log_records


_ANIMALS = ["cat", "dog", "horse", "bird", "fish", "cow", "sheep", "goat"]
_FOODS = ["grass", "seeds", "meat", "bread", "apples", "corn", "hay", "fruit"]
_PLACES = ["garden", "field", "house", "barn", "river", "forest", "yard", "park"]


def _documents(count: int, seed: int) -> list[str]:
    """Documents of one to four sentences "the <animal> eats <food> in the <place> ."."""
    import random

    rng = random.Random(seed)
    return [" ".join(f"the {rng.choice(_ANIMALS)} eats {rng.choice(_FOODS)} in the {rng.choice(_PLACES)} ."
                     for _ in range(rng.randint(1, 4))) for _ in range(count)]


def _write_mlm_corpus(folder: Path) -> Path:
    """train.txt: 300 documents, one per line, with blank and whitespace-only lines between; val.txt: 40."""
    folder.mkdir(parents=True, exist_ok=True)
    train = [line for i, text in enumerate(_documents(300, seed=0)) for line in ([text, ""] if i % 7 else [text, " "])]
    (folder / "train.txt").write_text("\n".join(train) + "\n")
    (folder / "val.txt").write_text("\n".join(_documents(40, seed=1)) + "\n")
    return folder


def _mlm_args(corpus: Path, output_dir: Path, *extra: str) -> list[str]:
    """A 2-layer, 32-wide BERT on blocks of 32 tokens, 8 blocks per step: a few ms per step."""
    return [
        "--train_file", str(corpus / "train.txt"), "--validation_file", str(corpus / "val.txt"),
        "--output_dir", str(output_dir), "--vocab_size", "100", "--block_size", "32", "--batch_size", "8",
        "--warmup_steps", "5", "--learning_rate", "3e-3", "--logging_steps", "5", "--save_steps", "20", *extra,
    ]  # fmt: skip


def _tiny_model_args() -> list[str]:
    return ["--hidden_size", "32", "--num_hidden_layers", "2", "--num_attention_heads", "4", "--intermediate_size",
            "64"]


def _run_mlm(argv: list[str]):
    from vanilla_transformer.scripts import pretrain_mlm

    return pretrain_mlm.run(*pretrain_mlm.parse_args(argv))


@pytest.fixture(scope="session")
def mlm_documents():
    """mlm_documents(count, seed) -> templated documents ("the cat eats grass in the garden ."), one to four
    sentences each."""
    return _documents


@pytest.fixture(scope="session")
def write_mlm_corpus():
    """write_mlm_corpus(folder) -> folder: train.txt (300 templated documents, blank lines between), val.txt (40)."""
    return _write_mlm_corpus


@pytest.fixture(scope="session")
def mlm_args():
    """mlm_args(corpus, output_dir, *extra) -> pretrain_mlm's argv on that corpus (add tiny_model_args() for a new
    model's size)."""
    return _mlm_args


@pytest.fixture(scope="session")
def tiny_model_args():
    """tiny_model_args() -> pretrain_mlm's size options for a 2-layer, 32-wide BERT."""
    return _tiny_model_args


@pytest.fixture(scope="session")
def run_mlm():
    """run_mlm(argv) -> TrainOutcome: pretrain_mlm in this process (its errors raised, not printed)."""
    return _run_mlm


def _free_port() -> int:
    """A port nothing listens on, for a rendezvous. Under pytest-xdist each worker draws from a range of its own: the
    OS's next free port, probed by two workers at once, could be the same one, and two launches rendezvousing on one
    port mix their processes and wait for each other forever."""
    import random
    import socket

    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    low = 20_000 + 2_000 * (worker % 10)  # below Linux's ephemeral range (32768-60999)
    for port in random.Random().sample(range(low, low + 2_000), 2_000):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {low}-{low + 1_999}")


@pytest.fixture(scope="session")
def free_port():
    """free_port() -> a port for a rendezvous (see _free_port)."""
    return _free_port


def _launch_command(num_processes: int, mixed_precision: str = "no") -> list[str]:
    """`accelerate launch` on CPU processes of this machine. accelerate's `--cpu` starts a single process unless
    run under mpirun; its torchrun launcher (`--multi_gpu`) with ACCELERATE_USE_CPU starts them, on the gloo
    backend, rendezvousing on a free port."""
    command = [str(Path(sys.executable).parent / "accelerate"), "launch", "--num_machines", "1", "--dynamo_backend",
               "no", "--mixed_precision", mixed_precision, "--num_processes", str(num_processes)]
    return command + (["--multi_gpu", "--main_process_port", str(_free_port())] if num_processes > 1 else ["--cpu"])


@pytest.fixture(scope="session")
def launch_command():
    """launch_command(num_processes, mixed_precision="no") -> the `accelerate launch ...` command line, to which the
    script's path and arguments are added."""
    return _launch_command


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps one process-wide AcceleratorState, fixed by the first Accelerator (its mixed precision
    included): give this test its own, and put the previous one back after it."""
    from accelerate.state import AcceleratorState

    saved = dict(AcceleratorState._shared_state)
    AcceleratorState._shared_state.clear()
    yield
    AcceleratorState._shared_state.clear()
    AcceleratorState._shared_state.update(saved)


_FINETUNE_ROWS = [
    ("it 's a charming and often affecting journey . ", 1),
    ('unflinchingly bleak and "desperate ', 0),  # an unbalanced quote, as in GLUE's TSVs
    ("the acting is wonderful", 1),
    ("a boring , tedious film", 0),
] * 4


def _finetune_args(output_dir, **files) -> list[str]:
    args = ["--output_dir", str(output_dir), "--max_train_samples", "12", "--per_device_train_batch_size", "4",
            "--num_train_epochs", "1", "--logging_steps", "1", "--seed", "0"]
    for name, path in files.items():
        args += [f"--{name}", str(path)]
    return args


@pytest.fixture(scope="session")
def finetune_rows() -> list[tuple[str, int]]:
    """16 labelled sentences (SST-2 style; 4 distinct, twice each class), for finetune_classification's tests."""
    return _FINETUNE_ROWS


@pytest.fixture(scope="session")
def finetune_args():
    """finetune_args(output_dir, **files) -> finetune_classification's argv: 12 rows, batches of 4, one epoch, seed 0;
    `files`: {option: path} (train_file=..., validation_file=...)."""
    return _finetune_args


@pytest.fixture(scope="session")
def finetune_tokenizer():
    """A WordPiece of 80 tokens trained on `finetune_rows`."""
    from vanilla_transformer.tokenization import train_wordpiece_tokenizer

    return train_wordpiece_tokenizer([text for text, _ in _FINETUNE_ROWS], vocab_size=80, min_frequency=1,
                                     show_progress=False)
