"""The Hugging Face Space of a published model (`publish --space`, or `--space_dir`): a folder that becomes a Gradio
page trying the model once uploaded with `hf upload <user>/<space> <space_dir> . --repo-type space` (or
`HfApi().upload_folder(repo_id=..., folder_path=..., repo_type="space")`).

    app.py            loads the model, from model/ beside it or else from the Hub repo, and launches the page
    demo_app.py       the page: this package's scripts/serving/demo_app.py, copied as it is
    requirements.txt  what the Space installs: torch, transformers (the range this package declares), gradio, ...
    README.md         the Space's settings in its front matter: sdk gradio at the installed version, app_file app.py
    model/            the files of the Hub-ready model folder publish wrote (--output_dir), less its model card

The Space runs without this package: the model folder carries its own code (loaded with trust_remote_code=True), and
demo_app.py imports gradio, torch, transformers, numpy and matplotlib only.
"""

import importlib.metadata
import json
import shutil
from pathlib import Path

from huggingface_hub import SpaceCard, SpaceCardData
from packaging.requirements import Requirement

from vanilla_transformer.scripts.training.model_folders import (
    ModelFolder,
    ModelFolderError,
    check_not_the_model_folder,
    check_writable_dir,
)

DEMO_APP = Path(__file__).parent / "demo_app.py"
MODEL_SUBFOLDER = "model"
# What the Space needs of this package's own requirements (their declared ranges); numpy and gradio are added
REQUIRED = ("torch", "transformers", "tokenizers", "matplotlib")

APP = '''"""A Gradio page trying a model, written by vanilla-transformer's `publish --space`: the page is
demo_app.py; the model loads from model/ beside this file, else from the Hub (MODEL_ID), with its own code
(trust_remote_code=True), so that vanilla-transformer itself is not needed. It listens on 0.0.0.0:7860 unless
GRADIO_SERVER_NAME / GRADIO_SERVER_PORT say otherwise."""

import os
from pathlib import Path

from demo_app import build_demo

MODEL_ID = {repo_id}  # the Hub model loaded when there is no model/ folder here
HERE = Path(__file__).resolve().parent
MODEL = HERE / "{model}" if (HERE / "{model}" / "config.json").is_file() else MODEL_ID

demo = build_demo(str(MODEL), trust_remote_code=True, title={title})

if __name__ == "__main__":
    demo.launch(server_name=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"),
                server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
'''


def gradio_version() -> str:
    """The installed gradio's version: the Space's sdk_version, so that the Space runs the gradio the page was tried
    with."""
    try:
        return importlib.metadata.version("gradio")
    except importlib.metadata.PackageNotFoundError:
        raise ModelFolderError("--space needs gradio installed (its version is the Space's sdk_version): pip "
                               "install 'vanilla-transformer[demo]'") from None


def space_folder(space: bool, space_dir: str | None, output_dir: Path) -> Path | None:
    """Where `publish` writes the Space: --space_dir, else with --space `<output_dir>-space` beside the model folder
    (never inside it: the Space would be uploaded with the model repo); None for no Space."""
    if space_dir:
        return Path(space_dir)
    return output_dir.with_name(output_dir.name + "-space") if space else None


def check_space_dir(space_dir: Path, output_dir: Path, model: ModelFolder) -> None:
    """New or empty, or an earlier Space of publish (its app_file is app.py, beside demo_app.py); neither the model
    folder nor inside --output_dir or around it: pushing the model repo would upload the Space too."""
    gradio_version()
    check_not_the_model_folder(space_dir, model, "--space_dir")
    space, hub = space_dir.expanduser().resolve(), output_dir.expanduser().resolve()
    if space == hub or hub in space.parents or space in hub.parents:
        raise ModelFolderError(f"--space_dir {space_dir} and --output_dir {output_dir} are one inside the other: the "
                               "model repo and the Space are uploaded separately; choose a folder beside --output_dir")
    if space_dir.is_dir() and any(space_dir.iterdir()):
        card = space_dir / "README.md"
        ours = (space_dir / "demo_app.py").is_file() and card.is_file() and (
            SpaceCard.load(card).data.get("app_file") == "app.py")
        if not ours:
            raise ModelFolderError(f"--space_dir {space_dir} is not empty and not an earlier Space of publish.py: "
                                   "choose a new or empty folder")
    check_writable_dir(space_dir, "--space_dir")


def requirements() -> list[str]:
    """The Space's requirements.txt lines: this package's ranges for what the page and the model's code import."""
    declared = {}
    for line in importlib.metadata.requires("vanilla-transformer") or []:
        requirement = Requirement(line)
        if requirement.marker is None and requirement.name in REQUIRED:
            declared[requirement.name] = str(requirement)
    return [*(declared.get(name, name) for name in REQUIRED), "numpy", f"gradio=={gradio_version()}"]


def write_space(space_dir: Path, hub_folder: Path, title: str, repo_id: str | None = None,
                license: str = "apache-2.0") -> Path:
    """Write the Space folder for the Hub-ready `hub_folder`, whose files (not its model card, nor the subfolders:
    a CTranslate2 export) are copied into model/; `repo_id`: the model's Hub repo (publish's --push_to_hub), which
    app.py loads when model/ is not there."""
    model_id = repo_id or f"<user>/{title}"
    space_dir.mkdir(parents=True, exist_ok=True)
    app = APP.format(repo_id=json.dumps(model_id), model=MODEL_SUBFOLDER, title=json.dumps(title))  # as literals
    (space_dir / "app.py").write_text(app, encoding="utf-8")
    shutil.copyfile(DEMO_APP, space_dir / "demo_app.py")
    (space_dir / "requirements.txt").write_text("\n".join(requirements()) + "\n", encoding="utf-8")
    model_dir = space_dir / MODEL_SUBFOLDER
    shutil.rmtree(model_dir, ignore_errors=True)  # an earlier run's model: replaced, not merged
    model_dir.mkdir()
    for file in hub_folder.iterdir():
        if file.is_file() and file.name != "README.md":
            shutil.copy2(file, model_dir / file.name)
    settings = SpaceCardData(title=title, sdk="gradio", sdk_version=gradio_version(), app_file="app.py",
                             license=license, models=[repo_id] if repo_id else None, emoji="🔤",
                             colorFrom="indigo", colorTo="blue", pinned=False)
    model = f"[{repo_id}](https://huggingface.co/{repo_id})" if repo_id else f"`{title}`"
    SpaceCard(f"---\n{settings.to_yaml()}\n---\n\n# {title}\n\nTry the model {model} in the browser: it answers "
              "its task's input, and a translation model shows the cross-attention of its last decoder layer as a "
              "heatmap. The page is `demo_app.py`; the model and its code are in `model/`. Written by "
              "vanilla-transformer's `publish --space_dir`.\n").save(space_dir / "README.md")
    return space_dir
