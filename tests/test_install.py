"""The package as a user gets it from `pip install .` (not editable), without the clone: a wheel built from a copy of
the sources, installed into a fresh virtual environment that sees the test environment's dependencies (torch,
transformers...) but not our editable install; every command's `--help`, a tiny translation training and a tiny
masked-LM pretraining run through the installed commands, in a folder outside the clone. Offline: the wheel is built
without build isolation and installed without an index."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = pytest.mark.packaging  # .ci/run's steps on the newest and the lowest versions leave these out
ROOT = Path(__file__).resolve().parents[1]
# Every command module of scripts/ (all but the package's own files and the dispatcher), and its older console name,
# vanilla-transformer-<name with dashes>, an alias of `vanilla-transformer <name with dashes>`
SCRIPTS = sorted(path.stem for path in (ROOT / "scripts").glob("*.py") if path.stem not in ("__init__", "__main__",
                                                                                             "cli"))
COMMANDS = [f"vanilla-transformer-{name.replace('_', '-')}" for name in SCRIPTS]


def _run(command: list[str], cwd: Path, env: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"{command}:\nSTDOUT:\n{result.stdout[-3000:]}\nSTDERR:\n{result.stderr[-5000:]}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """{"venv": the fresh environment, "env": the environment variables to run it with, "work": a folder outside the
    clone}: the wheel of a copy of pyproject.toml, README.md, modeling/, tokenization/ and scripts/, installed there."""
    pytest.importorskip("setuptools")  # the build backend (a test extra), used without build isolation: offline
    root = tmp_path_factory.mktemp("install")
    source = root / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).is_file():
            shutil.copy(ROOT / name, source / name)
    for name in ("modeling", "tokenization", "scripts"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME")}
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "--quiet",
          "--disable-pip-version-check", "-w", str(root / "wheel"), str(source)], cwd=root, env=env)
    (wheel,) = (root / "wheel").glob("vanilla_transformer-*.whl")

    # A fresh environment whose only view of the test environment is its site-packages folder as a plain path: the
    # dependencies import, but the .pth of our editable install there is not processed (a plain path, not a site
    # folder), so `vanilla_transformer` can only come from the wheel.
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=root, env=env)
    python = venv / "bin" / "python"
    venv_site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          cwd=root, env=env).stdout.strip())
    (venv_site / "test-environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "--quiet",
          "--disable-pip-version-check", str(wheel)], cwd=root, env=env)
    work = root / "work"
    work.mkdir()
    return {"venv": venv, "env": env, "work": work, "site": venv_site}


HELP_OF_EVERY_COMMAND = """
import contextlib, io, json, sys
from importlib.metadata import distribution

import vanilla_transformer.modeling, vanilla_transformer.tokenization, vanilla_transformer.scripts.training.loop
from vanilla_transformer.scripts.training.translation_eval import METRICS_DIR

package = distribution("vanilla-transformer")  # the first on sys.path: the wheel's
answers = {"metadata": str(package.locate_file("")), "metrics": sorted(p.name for p in METRICS_DIR.glob("*/*.py")),
           "modules": [m.__file__ for m in (vanilla_transformer.modeling, vanilla_transformer.tokenization,
                                            vanilla_transformer.scripts.training.loop)] + [str(METRICS_DIR)]}
def ask(main, argv):
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        try:
            status = main(argv)
        except SystemExit as stop:
            status = stop.code
    return status, output.getvalue()

for command in package.entry_points.select(group="console_scripts"):
    sys.argv = [command.name]  # as the command's wrapper has it: the usage line names the command
    status, output = ask(command.load(), ["--help"])
    answers[command.name] = {"value": command.value, "status": status, "output": output,
                             "file": sys.modules[command.module].__file__}
from vanilla_transformer.scripts import cli
for name in cli.COMMANDS:  # the one command's subcommands: vanilla-transformer <name> --help
    sys.argv = ["vanilla-transformer"]
    status, output = ask(cli.main, [name, "--help"])
    answers[f"vanilla-transformer {name}"] = {"status": status, "output": output}
print(json.dumps(answers))
"""


def test_every_command_is_installed_from_the_wheel_and_explains_itself(installed):
    """Each command's --help: the wrappers in bin/, one run as a process; the main() they call, all in one process
    (each --help is mostly the import of torch and transformers: ten processes take minutes on a busy machine). The
    package, its commands and its metric modules come from the wheel's install, not from the clone."""
    bin_dir = installed["venv"] / "bin"
    assert sorted(p.name for p in bin_dir.glob("vanilla-transformer-*")) == sorted(COMMANDS)
    for command, name in zip(COMMANDS, SCRIPTS):
        assert f"from vanilla_transformer.scripts.{name} import main" in (bin_dir / command).read_text()
    result = _run([str(bin_dir / "python"), "-c", HELP_OF_EVERY_COMMAND], cwd=installed["work"], env=installed["env"])
    answers = json.loads(result.stdout.strip().splitlines()[-1])
    assert Path(answers.pop("metadata")).resolve() == installed["site"].resolve()
    assert answers.pop("metrics") == ["accuracy_f1.py", "chrf.py", "sacrebleu.py", "seqeval_f1.py"]
    for module in answers.pop("modules"):
        assert Path(module).is_relative_to(installed["site"] / "vanilla_transformer"), module  # not the clone
    one = answers.pop("vanilla-transformer")  # the one command: its help lists every subcommand
    assert one["value"] == "vanilla_transformer.scripts.cli:main" and one["output"].startswith(
        "usage: vanilla-transformer <command>")
    for name in SCRIPTS:
        subcommand = name.replace("_", "-")
        assert f"\n  {subcommand} " in one["output"], subcommand
        answer = answers.pop(f"vanilla-transformer {subcommand}")
        assert answer["status"] == 0 and answer["output"].startswith(f"usage: vanilla-transformer {subcommand} ")
        assert "--help" in answer["output"] and len(answer["output"].splitlines()) > 5, subcommand
    assert sorted(answers) == sorted(COMMANDS)
    for command, name in zip(COMMANDS, SCRIPTS):
        answer = answers[command]
        assert answer["value"] == f"vanilla_transformer.scripts.{name}:main"
        assert Path(answer["file"]) == installed["site"] / "vanilla_transformer" / "scripts" / f"{name}.py"
        assert answer["status"] == 0 and answer["output"].startswith(f"usage: {command} "), (command, answer)
        assert "--help" in answer["output"] and len(answer["output"].splitlines()) > 5
    # a wrapper as a process, and a script as a module
    result = _run([str(bin_dir / "vanilla-transformer-main"), "--help"], cwd=installed["work"], env=installed["env"])
    assert result.stdout.startswith("usage: vanilla-transformer-main ") and "--families" in result.stdout
    result = _run([str(bin_dir / "vanilla-transformer"), "main", "--help"], cwd=installed["work"], env=installed["env"])
    assert result.stdout.startswith("usage: vanilla-transformer main ") and "--families" in result.stdout
    result = _run([str(bin_dir / "python"), "-m", "vanilla_transformer.scripts", "--help"], cwd=installed["work"],
                  env=installed["env"])
    assert "train-translation" in result.stdout and "finetune-token-classification" in result.stdout
    result = _run([str(bin_dir / "python"), "-m", "vanilla_transformer.scripts.train_tokenizer", "--help"],
                  cwd=installed["work"], env=installed["env"])
    assert "--vocab_size" in result.stdout


def test_tiny_translation_and_mlm_runs_and_a_model_card_through_the_installed_commands(
        installed, write_translation_corpus, translation_args, write_mlm_corpus, mlm_args, tiny_model_args,
        finetune_rows, finetune_args):
    work, bin_dir = installed["work"], installed["venv"] / "bin"
    translation = _run([str(bin_dir / "vanilla-transformer"), "train-translation",
                        *translation_args(write_translation_corpus(work / "parallel"), work / "translation",
                                          "--max_steps", "2", "--length_penalties", "1.0")],
                       cwd=work, env=installed["env"])
    assert "training stopped at step 2" in translation.stdout
    final = work / "translation" / "final"
    assert (final / "model.safetensors").is_file() and (final / "config.json").is_file()
    assert (work / "translation" / "validation_scores.json").is_file()  # BLEU through the installed metric modules
    _run([str(bin_dir / "vanilla-transformer"), "publish", "--model_dir", str(final), "--output_dir", str(work / "hub")],
         cwd=work, env=installed["env"])
    card = (work / "hub" / "README.md").read_text()  # rendered from the installed template
    assert card.startswith("---") and 'pipe = pipeline("translation", model=' in card and "{{" not in card

    mlm = _run([str(bin_dir / "vanilla-transformer"), "pretrain-mlm",
                *mlm_args(write_mlm_corpus(work / "text"), work / "mlm", "--max_steps", "2", *tiny_model_args())],
               cwd=work, env=installed["env"])
    assert "training stopped at step 2" in mlm.stdout
    assert (work / "mlm" / "final" / "model.safetensors").is_file()

    # the two fine-tuning commands, on the MLM's final folder, through the one command
    (work / "rows.tsv").write_text("sentence\tlabel\n" + "".join(f"{text}\t{label}\n" for text, label in finetune_rows))
    classified = _run([str(bin_dir / "vanilla-transformer"), "finetune-classification", "--model_name_or_path",
                       str(work / "mlm" / "final"), *finetune_args(work / "classifier", train_file=work / "rows.tsv")],
                      cwd=work, env=installed["env"])
    assert (work / "classifier" / "results.json").is_file(), classified.stdout[-2000:]
    sentences = ["the cat eats grass in the garden .", "the dog eats meat in the house ."] * 6
    (work / "tags.conll").write_text("".join(
        "".join(f"{word}\t{'B-ANIMAL' if word in ('cat', 'dog') else 'O'}\n" for word in sentence.split()) + "\n"
        for sentence in sentences))
    tagged = _run([str(bin_dir / "vanilla-transformer"), "finetune-token-classification", "--model_name_or_path",
                   str(work / "mlm" / "final"), *finetune_args(work / "tagger", train_file=work / "tags.conll")],
                  cwd=work, env=installed["env"])
    assert (work / "tagger" / "results.json").is_file(), tagged.stdout[-2000:]
    assert json.loads((work / "tagger" / "config.json").read_text())["architectures"] == [
        "VanillaBertForTokenClassification"]
