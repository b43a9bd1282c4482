"""The recipes behind --preset (training/presets.py): what each preset sets, that options given beside it win, that an
unknown name is refused naming the known ones. And fine-tuning's time budget (--max_train_minutes), which keeps a
recipe within its minutes on a slower CPU: a learning-rate decay that follows the clock, and a run stopped by the
clock that ends as a finished run; with several epochs, no second validation pass after the last."""

import json

import pytest
import torch

from vanilla_transformer.modeling import VanillaBertForMaskedLM
from vanilla_transformer.scripts import finetune_classification, train_translation
from vanilla_transformer.scripts.training.optimization import make_schedule
from vanilla_transformer.scripts.training.finetuning import parse_arguments
from vanilla_transformer.scripts.training.presets import FINETUNE_PRESETS, MULTI30K_PRESET, SST2_PRESET

SPLITS = ["--train_split", "train", "--validation_split", "val", "--source_lang", "de", "--target_lang", "en"]


def test_multi30k_preset_sets_the_recipe_and_options_given_win(tmp_path):
    output = ["--output_dir", str(tmp_path / "run")]
    args, _, loop = train_translation.parse_args(["--preset", "multi30k", *SPLITS, *output])
    chosen = {**vars(args), **vars(loop)}
    assert {name: chosen[name] for name in MULTI30K_PRESET} == MULTI30K_PRESET
    assert loop.mixed_precision == "no" and loop.lr_schedule == "one_cycle" and loop.max_train_minutes == 45
    # without the preset, the script's own defaults (the paper's base model) are untouched
    plain, _, plain_loop = train_translation.parse_args([*SPLITS, *output, "--max_steps", "1"])
    assert (plain.d_model, plain.encoder_layers, plain_loop.lr_schedule) == (512, 6, "inverse_sqrt")
    # an option given beside the preset wins, wherever it stands
    args, _, loop = train_translation.parse_args(["--max_tokens", "2000", "--preset", "multi30k", *SPLITS, *output,
                                                  "--max_train_minutes", "10"])
    assert (args.max_tokens, loop.max_train_minutes, args.d_model) == (2000, 10, MULTI30K_PRESET["d_model"])
    with pytest.raises(ValueError, match="--preset wmt: choose from multi30k"):
        train_translation.parse_args(["--preset", "wmt", *SPLITS, *output])


def test_sst2_preset_sets_the_recipe_and_options_given_win(tmp_path):
    def parse(*argv):
        return parse_arguments(finetune_classification.FinetuneArguments, "", [
            "--model_name_or_path", "m", "--output_dir", str(tmp_path / "run"), "--train_file", "t.tsv", *argv],
            FINETUNE_PRESETS)

    args = parse("--preset", "sst2")
    assert {name: getattr(args, name) for name in SST2_PRESET} == SST2_PRESET
    assert args.classifier_pooling == "mean" and args.max_train_minutes <= 30
    plain = parse()  # without the preset, the script's own defaults
    assert (plain.per_device_train_batch_size, plain.classifier_pooling, plain.max_train_minutes) == (64, None, None)
    args = parse("--per_device_train_batch_size", "16", "--preset", "sst2", "--classifier_pooling", "cls")
    assert (args.per_device_train_batch_size, args.classifier_pooling, args.max_train_minutes) == (16, "cls", 27)
    with pytest.raises(ValueError, match="--preset glue: choose from sst2"):
        parse("--preset", "glue")


def _rates(schedule, optimizer, clock=None) -> list[float]:
    rates = []
    for step in range(10):
        if clock is not None:
            schedule.clock_fraction = clock[step]
        rates.append(schedule.get_last_lr()[0])
        optimizer.step()
        schedule.step()
    return rates


def test_the_decay_follows_the_clock_when_it_is_further_along_than_the_steps():
    weight = torch.nn.Parameter(torch.zeros(2, 2))
    optimizer = torch.optim.SGD([weight], lr=1.0)
    linear = _rates(make_schedule(optimizer, 2, total_steps=10), optimizer)
    assert linear == pytest.approx([0.5, 1, 1, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8])
    # a clock behind the steps: the same schedule
    optimizer = torch.optim.SGD([weight], lr=1.0)
    slow = [step / 20 for step in range(10)]
    assert _rates(make_schedule(optimizer, 2, total_steps=10, clock=True), optimizer, slow) == pytest.approx(linear)
    # a clock twice as fast as the steps: the decay reaches 0 by the clock, halfway through the steps. The factor
    # read before step k was set with the clock of step k - 1 (the schedule steps after the optimizer)
    optimizer = torch.optim.SGD([weight], lr=1.0)
    fast = [min(1.0, step / 5) for step in range(10)]
    rates = _rates(make_schedule(optimizer, 2, total_steps=10, clock=True), optimizer, fast)
    by_clock = [max(0.0, (1 - fraction) * 10 / 8) for fraction in fast]
    expected = [min(step_rate, by_clock[k - 1] if k else 1.0) for k, step_rate in enumerate(linear)]
    assert rates == pytest.approx(expected)
    assert rates[-4:] == [0.0] * 4 and rates[3] < linear[3]


def test_a_time_budget_ends_the_run_as_finished(tmp_path, finetune_tokenizer, finetune_args, finetune_rows,
                                                tiny_bert_config):
    lines = ["sentence\tlabel"] + [f"{text}\t{label}" for text, label in finetune_rows]
    (tmp_path / "train.tsv").write_text("\n".join(lines) + "\n")
    checkpoint = tmp_path / "mlm"
    VanillaBertForMaskedLM(tiny_bert_config(vocab_size=len(finetune_tokenizer))).save_pretrained(checkpoint)
    finetune_tokenizer.save_pretrained(checkpoint)
    output = tmp_path / "out"
    argv = [*finetune_args(output, train_file=tmp_path / "train.tsv"), "--model_name_or_path", str(checkpoint),
            "--num_train_epochs", "100000", "--max_train_minutes", "0.02", "--save_steps", "100000"]
    results = finetune_classification.run(argv)
    assert "interrupted_at_step" not in results and 0 < results["train"]["epoch"] < 100000
    assert (output / "model.safetensors").is_file()
    assert json.loads((output / "results.json").read_text())["train"] == results["train"]


def test_several_epochs_score_the_validation_set_after_each_but_the_last(monkeypatch, tmp_path, finetune_tokenizer,
                                                                        finetune_args, finetune_rows, tiny_bert_config):
    """The command scores the validation set right after training: the Trainer does not score it a second time."""
    lines = ["sentence\tlabel"] + [f"{text}\t{label}" for text, label in finetune_rows]
    for split in ("train", "dev"):
        (tmp_path / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    checkpoint = tmp_path / "mlm"
    VanillaBertForMaskedLM(tiny_bert_config(vocab_size=len(finetune_tokenizer))).save_pretrained(checkpoint)
    finetune_tokenizer.save_pretrained(checkpoint)
    build_trainer, trainers = finetune_classification.build_trainer, []
    monkeypatch.setattr(finetune_classification, "build_trainer",
                        lambda *args, **kwargs: trainers.append(build_trainer(*args, **kwargs)) or trainers[-1])
    argv = [*finetune_args(tmp_path / "out", train_file=tmp_path / "train.tsv", validation_file=tmp_path / "dev.tsv"),
            "--model_name_or_path", str(checkpoint), "--num_train_epochs", "3"]
    results = finetune_classification.run(argv)
    scored = [entry["epoch"] for entry in trainers[0].state.log_history if "eval_loss" in entry]
    assert scored == [1.0, 2.0] and results["train"]["epoch"] == 3.0
    assert results["validation"]["validation_scored"] == len(finetune_rows)
