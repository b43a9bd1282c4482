"""A folder saved under one transformers release loads and generates the same ids under another, without this
package: what a Hub user meets when the uploader's release and theirs differ.

The other release lives in another environment; `VT_OTHER_PYTHON` names its interpreter (`.ci/run` sets it when it
runs the suite in the lowest-declared environment, pointing at the README's environment with the newest release).
"""

import json
import os
import subprocess
import textwrap

import pytest
import torch
import transformers

from vanilla_transformer.modeling import VanillaTransformerForConditionalGeneration

OTHER_PYTHON = os.environ.get("VT_OTHER_PYTHON")
pytestmark = pytest.mark.skipif(
    not OTHER_PYTHON,
    reason="needs VT_OTHER_PYTHON, a Python with another transformers release (.ci/run sets it for its second run)",
)

SOURCE = [[5, 17, 42, 8, 2, 0, 0], [11, 12, 13, 14, 15, 16, 2]]
MASK = [[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1]]

# Build a seeded tiny model from the config the test passes (its JSON), save it, print its greedy and beam ids (run
# with the package importable)
SAVE = """
import json, torch
from vanilla_transformer.modeling import VanillaTransformerConfig, VanillaTransformerForConditionalGeneration
torch.manual_seed(0)
config = VanillaTransformerConfig.from_dict(json.loads({config!r}))
model = VanillaTransformerForConditionalGeneration(config).eval()
model.save_pretrained({folder!r})
source, mask = torch.tensor({source!r}), torch.tensor({mask!r})
ids = {{str(beams): model.generate(input_ids=source, attention_mask=mask, num_beams=beams, max_new_tokens=8,
                                  min_new_tokens=8).tolist() for beams in (1, 3)}}
import transformers
print(json.dumps({{"ids": ids, "release": transformers.__version__}}))
"""

# Load the folder with trust_remote_code (run where the package cannot be imported) and print the same ids
LOAD = """
import json, torch, transformers
from transformers import AutoModelForSeq2SeqLM
model = AutoModelForSeq2SeqLM.from_pretrained({folder!r}, trust_remote_code=True).eval()
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
source, mask = torch.tensor({source!r}), torch.tensor({mask!r})
ids = {{str(beams): model.generate(input_ids=source, attention_mask=mask, num_beams=beams, max_new_tokens=8,
                                  min_new_tokens=8).tolist() for beams in (1, 3)}}
print(json.dumps({{"ids": ids, "release": transformers.__version__}}))
"""


def other_release() -> str:
    return subprocess.run([OTHER_PYTHON, "-c", "import transformers; print(transformers.__version__)"],
                          capture_output=True, text=True, check=True).stdout.strip()


def test_the_other_environment_has_another_release():
    assert other_release() != transformers.__version__


def test_saved_under_this_release_generates_the_same_ids_under_the_other(
    tiny_transformer_config, run_without_package, tmp_path
):
    torch.manual_seed(0)
    model = VanillaTransformerForConditionalGeneration(tiny_transformer_config()).eval()
    model.save_pretrained(tmp_path / "model")
    source, mask = torch.tensor(SOURCE), torch.tensor(MASK)
    expected = {str(beams): model.generate(input_ids=source, attention_mask=mask, num_beams=beams, max_new_tokens=8,
                                           min_new_tokens=8).tolist() for beams in (1, 3)}
    loaded = run_without_package(LOAD.format(folder=str(tmp_path / "model"), source=SOURCE, mask=MASK),
                                 cwd=str(tmp_path), python=OTHER_PYTHON)
    assert loaded["release"] == other_release()
    assert loaded["ids"] == expected


def test_saved_under_the_other_release_generates_the_same_ids_under_this_one(
    tiny_transformer_config, run_without_package, tmp_path
):
    folder = str(tmp_path / "model")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = textwrap.dedent(SAVE).format(
        config=tiny_transformer_config().to_json_string(), folder=folder, source=SOURCE, mask=MASK
    )
    saved = subprocess.run([OTHER_PYTHON, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert saved.returncode == 0, saved.stderr[-3000:]
    saved = json.loads(saved.stdout.strip().splitlines()[-1])
    assert saved["release"] == other_release()
    loaded = run_without_package(LOAD.format(folder=folder, source=SOURCE, mask=MASK), cwd=str(tmp_path))
    assert loaded["release"] == transformers.__version__
    assert loaded["ids"] == saved["ids"]
