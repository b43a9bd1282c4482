"""The README's main job (scripts/main.py): the commands' own runs on the embedded corpora (named data sources), both
families from text to a Hub-ready folder that reloads with the Auto classes and answers in its pipeline. Run here on
small files and models for speed."""

import json
import re

import pytest
import torch
from transformers import AutoTokenizer

from vanilla_transformer.modeling import VanillaBertForMaskedLM
from vanilla_transformer.scripts import main as main_job
from vanilla_transformer.scripts.training import mlm_arguments
from vanilla_transformer.scripts.training.embedded_corpora import embedded_split, stdlib_docstrings
from vanilla_transformer.scripts.training.errors import ArgumentError
from vanilla_transformer.scripts.training.translation_data import babel_pairs


def test_the_embedded_english_text_is_prose_and_the_same_every_time():
    documents = stdlib_docstrings()
    assert len(documents) > 3000 and sum(len(d.split()) for d in documents) > 50_000
    assert len(set(documents)) == len(documents)
    assert not any(d.startswith(">>>") for d in documents)
    assert all(len(d.split()) >= 6 and "\n" not in d for d in documents)
    assert stdlib_docstrings(max_documents=50) == documents[:50]


def test_the_embedded_corpora_are_named_data_sources_with_a_fixed_held_out_split():
    validation, train = (embedded_split(f"embedded:cldr-de-en:{split}") for split in ("validation", "train"))
    assert len(validation) == 100 and not set(validation) & set(train)
    assert sorted(validation + train) == sorted(babel_pairs("de", "en"))
    assert embedded_split("embedded:cldr-de-en:validation") == validation  # the same split every time
    documents = embedded_split("embedded:stdlib-docstrings:validation")
    assert len(documents) == 400 and isinstance(documents[0], str)
    with pytest.raises(FileNotFoundError, match="no such embedded corpus; there are embedded:stdlib-docstrings"):
        embedded_split("embedded:wikipedia:train")


def test_main_job_runs_the_commands_and_their_folders_answer_in_pipelines(tmp_path, capsys):
    pairs = babel_pairs("de", "en")[:300]
    (tmp_path / "train.de").write_text("\n".join(s for s, _ in pairs) + "\n")
    (tmp_path / "train.en").write_text("\n".join(t for _, t in pairs) + "\n")
    text = stdlib_docstrings(max_documents=400)
    (tmp_path / "text.txt").write_text("\n".join(text) + "\n")
    args = main_job.MainArguments(output_dir=str(tmp_path / "out"), source_file=str(tmp_path / "train.de"),
                                  target_file=str(tmp_path / "train.en"), text_file=str(tmp_path / "text.txt"),
                                  held_out=40, bert_max_steps=10)
    folders = main_job.run(
        args,
        translation_overrides={"vocab_size": 300, "d_model": 32, "attention_heads": 2, "ffn_dim": 64, "num_epochs": 2},
        bert_overrides={"vocab_size": 500, "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64,
                        "warmup_steps": 2, "logging_steps": 5},
    )
    out = capsys.readouterr().out

    assert set(folders) == {"translation", "bert"}
    for name, folder in folders.items():
        assert folder == tmp_path / "out" / name / "final"  # the commands' own run folders
        config = json.loads((folder / "config.json").read_text())
        assert config["auto_map"] and (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
        assert json.loads((folder.parent / "training_args.json").read_text())["seed"] == args.seed
    assert "reloaded with AutoModelForSeq2SeqLM: VanillaTransformerForConditionalGeneration" in out
    assert "reloaded with AutoModelForMaskedLM: VanillaBertForMaskedLM" in out
    # your files are split by the job: 40 held out, the rest trained on
    assert len((tmp_path / "out" / "data" / "validation.src").read_text().splitlines()) == 40
    # the held-out scores: accuracy beside the frequency baseline's, and perplexity
    scores = re.search(r"held-out masked tokens: top-1 accuracy ([\d.]+)%, against ([\d.]+)% for always guessing "
                       r"the most frequent token; perplexity ([\d.]+)", out)
    assert scores and 0 < float(scores[2]) < 100 and 0 <= float(scores[1]) <= 100
    # the BERT part is pretrain-mlm's budget recipe: one cycle, no dropout, pre-LN
    config = json.loads((folders["bert"] / "config.json").read_text())
    assert config["hidden_dropout_prob"] == config["attention_probs_dropout_prob"] == 0.0 and config["normalize_before"]
    records = [json.loads(line) for line in (tmp_path / "out" / "bert" / "log.jsonl").open()]
    rates = [record["lr"] for record in records if "lr" in record]
    assert rates[-1] == pytest.approx(mlm_arguments.BUDGET_PRESET["learning_rate"] / 10)  # step 10 of 10
    # and the next steps, with the one command
    next_steps = out.split("What next", 1)[1]
    for command in ("vanilla-transformer pretrain-mlm --preset budget --train_file",
                    "vanilla-transformer train-translation --train_split",
                    f"vanilla-transformer finetune-classification --model_name_or_path {folders['bert']}",
                    f"vanilla-transformer finetune-token-classification --model_name_or_path {folders['bert']}",
                    "vanilla-transformer publish --model_dir"):
        assert command in next_steps
    assert len(re.findall(r"^  '.*' +-> '.*' +\(reference ", out, flags=re.M)) == 15  # 10 held out + 5 seen
    # fill-mask: 3 answers per probe, and they are our model's own top 3 at [MASK]
    answer_lines = [line for line in out.splitlines() if line.startswith("  '") and "[MASK]" in line]
    assert len(answer_lines) == len(main_job.FILL_MASK_PROBES)
    tokenizer = AutoTokenizer.from_pretrained(folders["bert"])
    model = VanillaBertForMaskedLM.from_pretrained(folders["bert"]).eval()
    probe = main_job.FILL_MASK_PROBES[0]
    batch = tokenizer(probe, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits[0, batch["input_ids"][0].tolist().index(tokenizer.mask_token_id)]
    expected = [tokenizer.decode([i]).strip() for i in logits.topk(3).indices.tolist()]
    # "token (0.30), token (0.01), ...": a token may itself be "," so split on the scores, not on commas
    answers = re.findall(r"(.+?) \((\d\.\d\d)\)(?:, |$)", answer_lines[0].split("-> ", 1)[1])
    assert [token for token, _ in answers] == expected
    # a second run starts over in its own folders; a folder that is not one of its runs is left alone
    (tmp_path / "other" / "bert").mkdir(parents=True)
    (tmp_path / "other" / "bert" / "notes.txt").write_text("mine")
    with pytest.raises(ArgumentError, match="is not a run folder of the main job"):
        main_job.run(main_job.MainArguments(output_dir=str(tmp_path / "other"), families=["bert"]))
    assert (tmp_path / "other" / "bert" / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("argv, message", [
    (["--families", "gpt"], "choose from translation, bert"),
    (["--source_file", "x.de"], "pass both --source_file and --target_file"),
])
def test_main_job_arguments_are_checked(argv, message):
    with pytest.raises(ValueError, match=message):
        main_job.HfArgumentParser(main_job.MainArguments).parse_args_into_dataclasses(args=argv)
    with pytest.raises(SystemExit) as stopped:  # through main: one line, no traceback
        main_job.main(argv)
    assert stopped.value.code == 1


def test_a_slow_machine_is_told_the_minutes_the_bert_recipe_needs():
    args = main_job.MainArguments()
    plateau = {"val_accuracy": 0.06, "val_frequency_baseline": 0.046}
    advice = main_job.budget_advice(800, 300.0, plateau, args)  # 800 steps in the 5 minutes: a third of the steps
    assert "still on the masked-LM plateau" in advice and "--bert_minutes 15" in advice  # 2,400 steps at 800 per 5 min
    fine = main_job.budget_advice(main_job.BERT_STEPS_NEEDED + 1, 300.0, {"val_accuracy": 0.3, **plateau}, args)
    assert "enough for this recipe" in fine and "--bert_minutes" not in fine
