"""What a saved folder of each family carries, and that it loads and runs where our package is not installed: a tiny
model of each family saved with `save_pretrained`, its .py files listed, then loaded with the Auto classes and
trust_remote_code=True, run (a forward pass; beam search for translation), in a process where `vanilla_transformer`
cannot be imported, under each Python given (e.g. environments with the lowest and the newest transformers).

    python benchmarks/hub_folders.py --out_dir /tmp/folders --python .venv/bin/python /tmp/vt-lowest/bin/python

Run it under an older checkout (PYTHONPATH pointing at it) to list that version's folders for comparison.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

NO_PACKAGE = """
import importlib.abc, sys
class NoPackage(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "vanilla_transformer":
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, NoPackage())
"""
LOAD = NO_PACKAGE + """
import json, torch, transformers
from transformers import AutoModelForMaskedLM, AutoModelForSeq2SeqLM
folder, family = sys.argv[1], sys.argv[2]
ids = torch.tensor([[5, 6, 7, 8, 2]])
if family == "vanilla_bert":
    model = AutoModelForMaskedLM.from_pretrained(folder, trust_remote_code=True).eval()
    result = {"logits_sum": round(float(model(input_ids=ids).logits.sum()), 4)}
else:
    model = AutoModelForSeq2SeqLM.from_pretrained(folder, trust_remote_code=True).eval()
    result = {"beam": model.generate(ids, num_beams=3, max_new_tokens=6, do_sample=False)[0].tolist()}
print(json.dumps({"transformers": transformers.__version__, "class": type(model).__module__, **result}))
"""


def save_tiny_models(out_dir: Path) -> dict[str, Path]:
    import torch

    from vanilla_transformer.modeling import (
        VanillaBertConfig,
        VanillaBertForMaskedLM,
        VanillaTransformerConfig,
        VanillaTransformerForConditionalGeneration,
    )

    torch.manual_seed(0)
    models = {
        "vanilla_bert": VanillaBertForMaskedLM(VanillaBertConfig(
            vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)),
        "vanilla_transformer": VanillaTransformerForConditionalGeneration(VanillaTransformerConfig(
            vocab_size=50, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
            decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32)),
    }
    folders = {}
    for family, model in models.items():
        folders[family] = out_dir / family
        model.save_pretrained(folders[family])
    return folders


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out_dir", required=True)
    parser.add_argument("--python", nargs="*", default=[], help="interpreters to load the folders with")
    args = parser.parse_args()
    report = {}
    for family, folder in save_tiny_models(Path(args.out_dir)).items():
        report[family] = {"files": sorted(p.name for p in folder.glob("*.py")), "loads": []}
        for python in args.python:
            result = subprocess.run([python, "-c", LOAD, str(folder), family], capture_output=True, text=True)
            loaded = (json.loads(result.stdout.strip().splitlines()[-1]) if result.returncode == 0
                      else {"error": result.stderr.strip().splitlines()[-1]})
            report[family]["loads"].append({"python": python, **loaded})
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    sys.exit(main())
