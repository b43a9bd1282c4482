"""Every command's errors as a user meets them, through its `main(argv)`: an unknown option is argparse's one
`error:` line (exit status 2); Ctrl-C outside the training loop exits with status 130 and one line saying what was
kept and how to go on; the Hugging Face Hub out of reach is named as such; a folder without tokenizer files, an
output path that is a symbolic link to nothing, a split prefix whose `.de` is a folder: one line naming it."""

import importlib
import os
import signal
import json
import sys
from pathlib import Path

import pytest
from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

from vanilla_transformer.modeling import VanillaBertForMaskedLM, VanillaTransformerForConditionalGeneration
from vanilla_transformer.modeling.hub import save_for_hub
from vanilla_transformer.scripts import cli
from vanilla_transformer.tokenization import special_token_ids, train_bpe_tokenizer

# command -> the arguments it requires (values need not exist: nothing is read before the options are parsed)
REQUIRED = {
    "main": [],
    "train-tokenizer": ["--output_dir", "o", "--files", "f.txt"],
    "train-translation": ["--train_split", "t", "--validation_split", "v", "--output_dir", "o", "--max_steps", "1"],
    "evaluate-translation": ["--model_dir", "m", "--split", "s", "--output_file", "o.json"],
    "pretrain-mlm": ["--train_file", "t.txt", "--validation_file", "v.txt", "--output_dir", "o", "--max_steps", "1"],
    "finetune-classification": ["--model_name_or_path", "m", "--output_dir", "o", "--train_file", "t.tsv"],
    "finetune-token-classification": ["--model_name_or_path", "m", "--output_dir", "o", "--train_file", "t.conll"],
    "visualize-attention": ["--model_dir", "m", "--text", "x", "--output_dir", "o"],
    "publish": ["--model_dir", "m", "--output_dir", "o"],
    "demo": ["--model_dir", "m"],
    "export-ctranslate2": ["--model_dir", "m", "--output_dir", "o"],
    "serve": ["--model_dir", "m"],
    "benchmark": [],
    "benchmark-corpus": [],
}
# command -> the function of its module that does the work (a Ctrl-C raised there is one the user gives mid-run)
WORK = {"publish": "publish", "export-ctranslate2": "export_ctranslate2"}
# finetuning.parse_arguments (another engineer's file) still calls parse_args_into_dataclasses directly


def command_module(name: str):
    return importlib.import_module(f"vanilla_transformer.scripts.{cli.COMMANDS[name][0]}")


def exit_status(main, argv: list[str]) -> int:
    """The status `main(argv)` exits with; a KeyboardInterrupt that comes out of it is a failure (a traceback)."""
    try:
        return main(argv) or 0
    except SystemExit as stopped:
        return stopped.code if isinstance(stopped.code, int) else 1
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C came out of the command as a KeyboardInterrupt: the user sees a traceback")


def one_line(capsys) -> str:
    """What the command said on stderr, checked to be its one line, without a traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines, "nothing on stderr"
    return lines[-1]


def test_every_command_is_covered():
    assert set(REQUIRED) == set(cli.COMMANDS)


# --------------------------------------------------------------------------------- a misspelled option


@pytest.mark.parametrize("command", list(REQUIRED))
def test_a_misspelled_option_is_the_usual_error_line(command, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # cli.main names the command in sys.argv[0], for argparse
    assert exit_status(cli.main, [command, *REQUIRED[command], "--nmu_beams", "4"]) == 2
    assert one_line(capsys).endswith(f"vanilla-transformer {command}: error: unrecognized arguments: --nmu_beams 4")


def test_a_misspelled_option_is_named_before_the_options_are_checked(tmp_path, capsys):
    """Without a stop option, train-translation says to give one: with --max_step (meant --max_steps) that would
    send the user after the wrong problem."""
    from vanilla_transformer.scripts import train_translation

    argv = ["--train_split", "t", "--validation_split", "v", "--output_dir", str(tmp_path), "--max_stpes", "3"]
    assert exit_status(train_translation.main, argv) == 2
    assert one_line(capsys).endswith("error: unrecognized arguments: --max_stpes 3")


# ------------------------------------------------------------------------------------------------ Ctrl-C


def interrupt(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize("command", list(REQUIRED))
def test_ctrl_c_in_any_command_exits_130_with_one_line(command, tmp_path, capsys, monkeypatch):
    module = command_module(command)
    monkeypatch.setattr(module, WORK.get(command, "run"), interrupt)
    monkeypatch.chdir(tmp_path)
    assert exit_status(module.main, REQUIRED[command]) == 130
    assert one_line(capsys).startswith("interrupted (Ctrl-C): ")


@pytest.fixture
def translation_corpus(tmp_path, write_translation_corpus):
    return write_translation_corpus(tmp_path / "corpus")


def test_ctrl_c_while_tokenizing_says_nothing_is_kept_yet(tmp_path, translation_corpus, translation_args, capsys,
                                                         monkeypatch):
    from vanilla_transformer.scripts import train_translation

    monkeypatch.setattr(train_translation, "tokenize_pairs", interrupt)
    argv = translation_args(translation_corpus, tmp_path / "run", "--max_steps", "3")
    assert exit_status(train_translation.main, argv) == 130
    assert one_line(capsys) == (f"interrupted (Ctrl-C): no checkpoint in {tmp_path / 'run'} yet, nothing to resume: "
                                "run the same command again")


def sigint_ignored_in_a_forked_child() -> bool:
    """Whether a process forked now ignores Ctrl-C (SIGINT), as datasets' tokenizing workers are forked."""
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # the child: report and leave at once
        os.write(write, b"1" if signal.getsignal(signal.SIGINT) == signal.SIG_IGN else b"0")
        os._exit(0)
    os.close(write)
    answer = os.read(read, 1)
    os.close(read)
    os.waitpid(child, 0)
    return answer == b"1"


def test_ctrl_c_while_workers_tokenize_is_the_command_s_one_line(tmp_path, translation_corpus, translation_args,
                                                                capsys, monkeypatch):
    """A large corpus is tokenized by worker processes (datasets.map): on Ctrl-C each printed its traceback, and
    datasets, failing to wait for them, raised a TimeoutError: exit status 1. The workers now leave Ctrl-C to the
    command, and an error raised while cleaning up after Ctrl-C is that Ctrl-C."""
    from vanilla_transformer.scripts import train_translation

    ignored = []

    def tokenize_in_workers(pairs, tokenizer):
        ignored.append(sigint_ignored_in_a_forked_child())
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise TimeoutError from None  # datasets' pool, in its `finally`, fails to wait for its workers

    monkeypatch.setattr(train_translation, "tokenize_pairs", tokenize_in_workers)
    argv = translation_args(translation_corpus, tmp_path / "run", "--max_steps", "3")
    assert exit_status(train_translation.main, argv) == 130
    assert one_line(capsys).startswith("interrupted (Ctrl-C): no checkpoint in ")
    # only while a command runs: afterwards a child inherits the process's own disposition (which an earlier test in
    # this pytest worker may have set)
    assert ignored == [True]
    assert sigint_ignored_in_a_forked_child() == (signal.getsignal(signal.SIGINT) == signal.SIG_IGN)


def test_ctrl_c_before_a_resumed_run_trains_names_the_checkpoint_to_resume(tmp_path, translation_corpus,
                                                                          translation_args, run_translation, capsys,
                                                                          monkeypatch):
    from vanilla_transformer.scripts import train_translation

    argv = translation_args(translation_corpus, tmp_path / "run")
    assert not run_translation([*argv, "--max_steps", "6", "--max_steps_this_run", "3"]).completed
    monkeypatch.setattr(train_translation, "tokenize_pairs", interrupt)
    assert exit_status(train_translation.main, [*argv, "--max_steps", "6", "--resume"]) == 130
    assert one_line(capsys) == (f"interrupted (Ctrl-C): the checkpoint {tmp_path / 'run' / 'checkpoints' / 'step-3'} "
                                "is kept: continue with the same command and --resume")


def test_ctrl_c_while_reading_the_text_of_pretraining(tmp_path, write_mlm_corpus, mlm_args, capsys, monkeypatch):
    from vanilla_transformer.scripts import pretrain_mlm

    monkeypatch.setattr(pretrain_mlm, "load_texts", interrupt)
    argv = mlm_args(write_mlm_corpus(tmp_path / "corpus"), tmp_path / "run", "--max_steps", "1")
    assert exit_status(pretrain_mlm.main, argv) == 130
    assert one_line(capsys).endswith(f"no checkpoint in {tmp_path / 'run'} yet, nothing to resume: run the same "
                                     "command again")


@pytest.fixture
def translation_folder(tmp_path, tiny_transformer_config):
    tokenizer = train_bpe_tokenizer(["ein Hund läuft.", "a dog runs."] * 10, vocab_size=60, show_progress=False)
    model = VanillaTransformerForConditionalGeneration(tiny_transformer_config(**special_token_ids(tokenizer)))
    return save_for_hub(model.eval(), tmp_path / "model", tokenizer)


def write_split(prefix: Path) -> Path:
    prefix.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{prefix}.de").write_text("ein Hund läuft.\n")
    Path(f"{prefix}.en").write_text("a dog runs.\n")
    return prefix


def test_ctrl_c_while_translating_the_test_set(tmp_path, translation_folder, capsys, monkeypatch):
    from vanilla_transformer.scripts import evaluate_translation

    monkeypatch.setattr(evaluate_translation, "translate", interrupt)
    output = tmp_path / "scores.json"
    argv = ["--model_dir", str(translation_folder), "--split", str(write_split(tmp_path / "test")),
            "--output_file", str(output)]
    assert exit_status(evaluate_translation.main, argv) == 130
    assert one_line(capsys) == (f"interrupted (Ctrl-C): nothing was written (--output_file {output} is written at the "
                                "end): run the same command again")
    assert not output.exists()


def test_ctrl_c_while_reading_fine_tuning_data(tmp_path, finetune_tokenizer, tiny_bert_config, capsys, monkeypatch):
    from vanilla_transformer.scripts import finetune_classification

    folder = save_for_hub(VanillaBertForMaskedLM(tiny_bert_config(vocab_size=len(finetune_tokenizer))),
                          tmp_path / "bert", finetune_tokenizer)
    monkeypatch.setattr(finetune_classification, "load_data", interrupt)
    argv = ["--model_name_or_path", str(folder), "--output_dir", str(tmp_path / "run"), "--train_file", "t.tsv"]
    assert exit_status(finetune_classification.main, argv) == 130
    assert one_line(capsys).endswith(f"no checkpoint in {tmp_path / 'run'} yet, nothing to resume: run the same "
                                     "command again")


def test_ctrl_c_while_publishing_says_what_the_folder_holds(tmp_path, translation_folder, capsys, monkeypatch):
    from vanilla_transformer.scripts import publish

    def half_written(model, folder, tokenizer):
        (Path(folder) / "config.json").parent.mkdir(parents=True, exist_ok=True)
        (Path(folder) / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(publish, "save_for_hub", half_written)
    argv = ["--model_dir", str(translation_folder), "--output_dir", str(tmp_path / "hub")]
    assert exit_status(publish.main, argv) == 130
    assert one_line(capsys) == (f"interrupted (Ctrl-C): {tmp_path / 'hub'} is incomplete: delete it, then run the same "
                                "command again")


# ------------------------------------------------------------------------------------------------ the network


class UnreachableHub:
    """Stands in for huggingface_hub.HfApi on a machine without network: its first call fails as the client does."""

    error = ConnectionError("[Errno -2] Name or service not known")

    def __init__(self, token=None):
        pass

    def create_repo(self, *args, **kwargs):
        raise self.error


class OfflineHub(UnreachableHub):
    error = OfflineModeIsEnabled("Cannot reach https://huggingface.co/api/repos/create: offline mode is enabled.")


class RefusingHub(UnreachableHub):
    class Unauthorized(Exception):
        response = type("Response", (), {"status_code": 401})()

    error = Unauthorized("401 Client Error: Unauthorized for url: https://huggingface.co/api/repos/create")


@pytest.mark.parametrize("hub, said", [
    (UnreachableHub, "cannot reach the Hugging Face Hub (ConnectionError: [Errno -2] Name or service not known): "
                     "check the network or HF_HUB_OFFLINE"),
    (OfflineHub, "cannot reach the Hugging Face Hub (offline mode: HF_HUB_OFFLINE is set): check the network or "
                 "HF_HUB_OFFLINE"),
    (RefusingHub, "the Hugging Face Hub refused to create or write someone/tiny (401 Client Error: Unauthorized for "
                  "url: https://huggingface.co/api/repos/create): log in (`hf auth login`) or pass --token"),
], ids=["no network", "offline mode", "refused"])
def test_publish_that_cannot_push_says_why_and_keeps_the_folder(hub, said, tmp_path, translation_folder, capsys,
                                                               monkeypatch):
    from vanilla_transformer.scripts import publish

    monkeypatch.delenv("HF_HUB_OFFLINE")  # the tests run offline; the Hub stand-in decides here
    monkeypatch.setattr(publish, "HfApi", hub)
    output = tmp_path / "hub"
    argv = ["--model_dir", str(translation_folder), "--output_dir", str(output), "--push_to_hub", "someone/tiny"]
    assert exit_status(publish.main, argv) == 1
    line = one_line(capsys)
    assert line.startswith(f"error: {said}")
    assert line.endswith(f"the folder is ready in {output} to push later with `hf upload someone/tiny {output} .` "
                         "(or this command again)")
    assert (output / "README.md").is_file() and (output / "model.safetensors").is_file()


def test_a_hub_model_id_without_network_names_the_network(tmp_path, capsys, monkeypatch):
    import huggingface_hub

    def no_network(*args, **kwargs):
        try:
            raise ConnectionError("[Errno -2] Name or service not known")
        except ConnectionError as error:
            raise LocalEntryNotFoundError("An error happened while trying to locate the file on the Hub") from error

    from vanilla_transformer.scripts import evaluate_translation

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    argv = ["--model_dir", "someone/model", "--split", "s", "--output_file", str(tmp_path / "scores.json")]
    assert exit_status(evaluate_translation.main, argv) == 1
    assert one_line(capsys).endswith("and not loadable as a Hub model id: cannot reach the Hugging Face Hub "
                                     "(ConnectionError: [Errno -2] Name or service not known): check the network, or "
                                     "give a local folder")


def test_a_hub_model_id_in_offline_mode_says_how_to_download_it(tmp_path, capsys):
    from vanilla_transformer.scripts import visualize_attention

    argv = ["--model_dir", "someone/model", "--text", "x", "--output_dir", str(tmp_path)]
    assert exit_status(visualize_attention.main, argv) == 1
    assert one_line(capsys).endswith("(HF_HUB_OFFLINE is set: only models already in the cache load): it is not in "
                                     "the cache: unset HF_HUB_OFFLINE to download it from the Hugging Face Hub over "
                                     "the network, or give a local folder")


def test_a_hub_dataset_in_offline_mode_names_the_network(tmp_path, capsys):
    from vanilla_transformer.scripts import train_translation

    argv = ["--dataset_name", "someone/data", "--train_split", "train", "--validation_split", "validation",
            "--output_dir", str(tmp_path / "run"), "--max_steps", "1"]
    assert exit_status(train_translation.main, argv) == 1
    assert one_line(capsys) == ("error: --dataset_name someone/data, split 'train': cannot reach the Hugging Face Hub "
                                "(offline mode: HF_HUB_OFFLINE is set): check the network or HF_HUB_OFFLINE (offline, "
                                "only datasets already in the cache load), or give local files")


# ----------------------------------------------------------------------- folders and paths that are not what they seem


def without_tokenizer_files(folder: Path) -> Path:
    """A model folder whose tokenizer.json is gone: tokenizer_config.json alone, the settings without the vocabulary."""
    (folder / "tokenizer.json").unlink()
    return folder


NO_TOKENIZER_FILES = ("has no tokenizer files (none of tokenizer.json, vocab.txt, vocab.json, spiece.model; its "
                      "tokenizer_config.json holds the settings, not the vocabulary)")


@pytest.mark.parametrize("command", ["evaluate-translation", "publish", "visualize-attention"])
def test_a_model_folder_without_tokenizer_files_says_so(command, tmp_path, translation_folder, capsys):
    folder = without_tokenizer_files(translation_folder)
    argv = {"evaluate-translation": ["--split", str(write_split(tmp_path / "test")), "--output_file",
                                     str(tmp_path / "scores.json")],
            "publish": ["--output_dir", str(tmp_path / "hub")],
            "visualize-attention": ["--text", "ein Hund", "--output_dir", str(tmp_path / "maps")]}[command]
    assert exit_status(command_module(command).main, ["--model_dir", str(folder), *argv]) == 1
    assert one_line(capsys) == (f"error: --model_dir {folder} {NO_TOKENIZER_FILES}: save the tokenizer beside the "
                                "model (tokenizer.save_pretrained(folder)); the scripts' final folders hold both")


def test_a_tokenizer_folder_without_tokenizer_files_says_so(tmp_path, translation_folder, translation_corpus,
                                                           translation_args, capsys):
    from vanilla_transformer.scripts import train_translation

    folder = without_tokenizer_files(translation_folder)
    argv = translation_args(translation_corpus, tmp_path / "run", "--max_steps", "1", "--tokenizer", str(folder))
    assert exit_status(train_translation.main, argv) == 1
    assert one_line(capsys) == (f"error: --tokenizer {folder} {NO_TOKENIZER_FILES}: give a folder a tokenizer was "
                                "saved in (scripts/train_tokenizer.py --kind bpe), or leave out --tokenizer to train "
                                "one")


def test_a_bert_tokenizer_without_its_vocabulary_is_refused(tmp_path, write_mlm_corpus, mlm_args, capsys):
    """transformers would make a BertTokenizer of 5 tokens from the settings alone: every word [UNK]."""
    from vanilla_transformer.scripts import pretrain_mlm

    (tmp_path / "tokenizer").mkdir()
    (tmp_path / "tokenizer" / "tokenizer_config.json").write_text('{"tokenizer_class": "BertTokenizer"}')
    argv = mlm_args(write_mlm_corpus(tmp_path / "corpus"), tmp_path / "run", "--max_steps", "1", "--tokenizer_name",
                    str(tmp_path / "tokenizer"))
    assert exit_status(pretrain_mlm.main, argv) == 1
    assert one_line(capsys).startswith(f"error: --tokenizer_name {tmp_path / 'tokenizer'} has no tokenizer files")


OUTPUTS = {  # command -> its arguments around the output path (None: where it goes)
    "train-translation": ["--train_split", "T", "--validation_split", "T", "--output_dir", None, "--max_steps", "1"],
    "pretrain-mlm": ["--train_file", "T.de", "--validation_file", "T.de", "--output_dir", None, "--max_steps", "1"],
    "evaluate-translation": ["--model_dir", "M", "--split", "T", "--output_file", None],
    "publish": ["--model_dir", "M", "--output_dir", None],
    "visualize-attention": ["--model_dir", "M", "--text", "ein Hund", "--output_dir", None],
    "export-ctranslate2": ["--model_dir", "M", "--output_dir", None],
}


@pytest.mark.parametrize("command", list(OUTPUTS))
def test_an_output_that_is_a_link_to_nothing_is_refused(command, tmp_path, translation_folder, capsys):
    link = tmp_path / "out"
    link.symlink_to(tmp_path / "gone" / "away")
    split = write_split(tmp_path / "data" / "test")
    values = {"T": str(split), "T.de": f"{split}.de", "M": str(translation_folder), None: str(link)}
    option = OUTPUTS[command][OUTPUTS[command].index(None) - 1]
    assert exit_status(command_module(command).main, [values.get(a, a) for a in OUTPUTS[command]]) == 1
    assert one_line(capsys) == (f"error: {option} {link} is a symbolic link to {tmp_path / 'gone' / 'away'}, which "
                                f"does not exist: create what it points to, or give another {option}")
    assert not (tmp_path / "gone").exists()


@pytest.mark.parametrize("command", ["train-translation", "evaluate-translation"])
def test_a_split_whose_language_file_is_a_folder_says_it_is_a_folder(command, tmp_path, translation_folder, capsys):
    split = write_split(tmp_path / "data" / "train")
    Path(f"{split}.de").unlink()
    Path(f"{split}.de").mkdir()
    (Path(f"{split}.de") / "train.de").write_text("ein Hund läuft.\n")
    argv = {"train-translation": ["--train_split", str(split), "--validation_split", str(split), "--output_dir",
                                  str(tmp_path / "run"), "--max_steps", "1"],
            "evaluate-translation": ["--model_dir", str(translation_folder), "--split", str(split), "--output_file",
                                     str(tmp_path / "scores.json")]}[command]
    assert exit_status(command_module(command).main, argv) == 1
    assert one_line(capsys).startswith(f"error: {split}.de is a folder (it holds train.de), not a file of sentences: "
                                       f"a split is a prefix of one file per language ({split}.de, {split}.en")


def test_a_model_saved_without_a_beam_size_is_evaluated_greedily(tmp_path, tiny_transformer_config, capsys):
    """save_pretrained of a model built by hand leaves num_beams out of generation_config.json: generate() then
    failed with a TypeError comparing an int and None."""
    from vanilla_transformer.scripts import evaluate_translation

    tokenizer = train_bpe_tokenizer(["ein Hund läuft.", "a dog runs."] * 10, vocab_size=60, show_progress=False)
    model = VanillaTransformerForConditionalGeneration(tiny_transformer_config(**special_token_ids(tokenizer)))
    model.generation_config.max_new_tokens = 4
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    assert "num_beams" not in (tmp_path / "model" / "generation_config.json").read_text()
    argv = ["--model_dir", str(tmp_path / "model"), "--split", str(write_split(tmp_path / "test")), "--output_file",
            str(tmp_path / "scores.json")]
    assert exit_status(evaluate_translation.main, argv) == 0
    assert '"num_beams": 1' in (tmp_path / "scores.json").read_text()


def test_a_config_the_models_refuse_is_one_error_line(tmp_path, capsys):
    """A model folder whose config.json asks for more than this machine has: the models' own refusal (ConfigError),
    said as the commands' usual one line, not a traceback."""
    from vanilla_transformer.modeling import VanillaTransformerConfig, VanillaTransformerForConditionalGeneration
    from vanilla_transformer.tokenization import train_bpe_tokenizer

    folder = tmp_path / "huge"
    VanillaTransformerForConditionalGeneration(VanillaTransformerConfig(
        vocab_size=50, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32)).save_pretrained(folder)
    train_bpe_tokenizer(["ein Hund läuft", "a dog runs"] * 20, vocab_size=50).save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 10**10}))
    status = exit_status(cli.main, ["evaluate-translation", "--model_dir", str(folder), "--split", str(tmp_path / "t"),
                                    "--output_file", str(tmp_path / "scores.json")])
    line = one_line(capsys)
    assert status == 1 and line.startswith("error:") and "max_position_embeddings" in line, line
