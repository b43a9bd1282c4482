"""Shared test setup: offline Hugging Face caches in a temporary folder, tiny seeded configs, shared data path.

The HF_* variables are read when transformers is imported, so they are set here, before any test imports it.
"""

import os
import sys
import tempfile
from pathlib import Path

_CACHE = tempfile.mkdtemp(prefix="vt-hf-")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HOME"] = _CACHE
os.environ["HF_MODULES_CACHE"] = os.path.join(_CACHE, "modules")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"reference corpora not found at {SHARED_DATA} (they live beside the project checkout)")
    return SHARED_DATA


def tiny_transformer_config(**overrides):
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
def tiny_config():
    return tiny_transformer_config()
