"""What a saved folder carries: the code of its own family and nothing else. A Hub user reads a remote-code repo before
trusting it (`trust_remote_code=True` runs every file the model imports), so a BERT repo holds no encoder-decoder,
beam search or translation pipeline, and a translation repo no BERT. The folder then loads and runs from that code
alone, through every Auto class its auto_map names, in a process without this package."""

import ast
import json
from pathlib import Path

import pytest
import torch

from vanilla_transformer.modeling import VanillaBertForMaskedLM, VanillaTransformerForConditionalGeneration

# The layers both families are built from, and the Hub mixin both mix in
SHARED = {
    "attention.py",
    "config_checks.py",
    "embeddings.py",
    "fast_dropout.py",
    "fast_inference.py",
    "hub.py",
    "inputs.py",
    "layers.py",
    "losses.py",
    "token_layout.py",
}
OWN = {
    "bert": {
        "configuration_vanilla_bert.py",
        "modeling_vanilla_bert.py",
        "bert_layers.py",  # BERT's embeddings, pooler and MLM head
        "fast_loss.py",
    },
    "translation": {
        "configuration_vanilla_transformer.py",
        "modeling_vanilla_transformer.py",
        "transformer_stacks.py",  # the encoder and decoder stacks
        "beam_cache.py",  # beam search's cross-attention cache
        "compat.py",  # the cache argument's rename between transformers releases
        "pipeline_translation.py",  # custom_pipelines' translation and text2text-generation
    },
}
SOURCE = [[5, 17, 42, 8, 2, 0, 0], [11, 12, 13, 14, 15, 16, 2]]
MASK = [[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1]]


@pytest.fixture
def folders(tiny_bert_config, tiny_transformer_config, tmp_path) -> dict[str, Path]:
    models = {
        "bert": VanillaBertForMaskedLM(tiny_bert_config()),
        "translation": VanillaTransformerForConditionalGeneration(tiny_transformer_config()),
    }
    for family, model in models.items():
        model.eval().save_pretrained(tmp_path / family)
    return {family: tmp_path / family for family in models}


def relative_imports(path: Path) -> set[str]:
    """The modules a file imports from its own folder (`from .x import y`, anywhere in the file)."""
    return {
        node.module
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module
    }


@pytest.mark.parametrize("family", ["bert", "translation"])
def test_a_folder_carries_its_own_family_code_only(family, folders):
    folder = folders[family]
    files = {path.name for path in folder.glob("*.py")}
    other = next(name for name in OWN if name != family)
    assert not files & OWN[other], f"{family} folder carries the other family's {sorted(files & OWN[other])}"
    assert files == SHARED | OWN[family]
    for path in folder.glob("*.py"):  # every module the folder's code imports is in the folder
        assert {f"{module}.py" for module in relative_imports(path)} <= files, path.name
    config = json.loads((folder / "config.json").read_text())
    references = list(config["auto_map"].values())
    references += [pipeline["impl"] for pipeline in config.get("custom_pipelines", {}).values()]
    for reference in references:  # "<file stem>.<class>": a class defined in that file of the folder
        module, name = reference.split(".")
        classes = {node.name for node in ast.parse((folder / f"{module}.py").read_text()).body
                   if isinstance(node, ast.ClassDef)}
        assert name in classes, reference


def test_each_folder_loads_through_every_auto_class_without_the_package(folders, run_without_package, tmp_path):
    source, mask = torch.tensor(SOURCE), torch.tensor(MASK)
    with torch.no_grad():
        bert = VanillaBertForMaskedLM.from_pretrained(folders["bert"]).eval()
        translation = VanillaTransformerForConditionalGeneration.from_pretrained(folders["translation"]).eval()
        expected = {
            "bert": bert(input_ids=source, attention_mask=mask).logits[mask.bool()].tolist(),
            "translation": translation.generate(input_ids=source, attention_mask=mask, num_beams=3, max_new_tokens=6,
                                                min_new_tokens=6).tolist(),
        }
    result = run_without_package(
        f"""
        import json, torch, transformers
        folders = {({family: str(folder) for family, folder in folders.items()})!r}
        source, mask = torch.tensor({SOURCE!r}), torch.tensor({MASK!r})
        classes = {{}}
        for family, folder in folders.items():
            auto_map = json.load(open(folder + "/config.json"))["auto_map"]
            for auto, reference in auto_map.items():
                loaded = getattr(transformers, auto).from_pretrained(folder, trust_remote_code=True)
                assert type(loaded).__module__.startswith("transformers_modules."), type(loaded).__module__
                classes[auto + " " + family] = [type(loaded).__name__, reference.split(".")[1]]
        with torch.no_grad():
            bert = transformers.AutoModelForMaskedLM.from_pretrained(folders["bert"], trust_remote_code=True).eval()
            translation = transformers.AutoModelForSeq2SeqLM.from_pretrained(folders["translation"],
                                                                             trust_remote_code=True).eval()
            outputs = {{
                "bert": bert(input_ids=source, attention_mask=mask).logits[mask.bool()].tolist(),
                "translation": translation.generate(input_ids=source, attention_mask=mask, num_beams=3,
                                                    max_new_tokens=6, min_new_tokens=6).tolist(),
            }}
        print(json.dumps({{"classes": classes, "outputs": outputs}}))
        """,
        cwd=str(tmp_path),
    )
    assert len(result["classes"]) == 5 + 3  # BERT's five Auto classes, the encoder-decoder's three
    for auto, (loaded, named) in result["classes"].items():
        assert loaded == named, auto
    torch.testing.assert_close(torch.tensor(result["outputs"]["bert"]), torch.tensor(expected["bert"]))
    assert result["outputs"]["translation"] == expected["translation"]
