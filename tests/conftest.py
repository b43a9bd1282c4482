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


@pytest.fixture
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


@pytest.fixture
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


@pytest.fixture
def run_without_package():
    """run_without_package(code, cwd, timeout=600, python=None) -> dict: run `code` (which prints one JSON object as
    its last line) in a fresh Python process in which `vanilla_transformer` cannot be imported, as on a machine that
    only has transformers (a Hub user with trust_remote_code=True); `python`: another interpreter (another
    environment, another transformers release). Returns that object."""
    return _run_without_package
