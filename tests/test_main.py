"""The README's main job (scripts/main.py): both families from text to a Hub-ready folder that reloads with the
Auto classes and answers in its pipeline. Run here on small slices of the embedded corpora for speed."""

import json
import math
import re

import pytest
import torch
from transformers import AutoTokenizer

from vanilla_transformer.modeling import VanillaBertForMaskedLM
from vanilla_transformer.scripts import main as main_job
from vanilla_transformer.scripts.training.text_data import stdlib_docstrings
from vanilla_transformer.scripts.training.translation_data import babel_pairs


def test_the_embedded_english_text_is_prose_and_the_same_every_time():
    documents = stdlib_docstrings()
    assert len(documents) > 3000 and sum(len(d.split()) for d in documents) > 50_000
    assert len(set(documents)) == len(documents)
    assert not any(d.startswith(">>>") for d in documents)
    assert all(len(d.split()) >= 6 and "\n" not in d for d in documents)
    assert stdlib_docstrings(max_documents=50) == documents[:50]


def test_main_job_trains_both_families_and_their_folders_answer_in_pipelines(tmp_path, capsys):
    pairs = babel_pairs("de", "en")[:300]
    (tmp_path / "train.de").write_text("\n".join(s for s, _ in pairs) + "\n")
    (tmp_path / "train.en").write_text("\n".join(t for _, t in pairs) + "\n")
    text = stdlib_docstrings(max_documents=400)
    (tmp_path / "text.txt").write_text("\n".join(text) + "\n")
    args = main_job.MainArguments(
        output_dir=str(tmp_path / "out"), source_file=str(tmp_path / "train.de"), target_file=str(tmp_path / "train.en"),
        text_file=str(tmp_path / "text.txt"), vocab_size=300, d_model=32, heads=2, ffn_dim=64, epochs=2,
        bert_vocab_size=500, bert_hidden_size=32, bert_heads=2, bert_intermediate_size=64,
        bert_max_steps=10, bert_warmup_steps=2,
        bert_held_out=40, held_out=10,
    )
    folders = main_job.run(args)
    out = capsys.readouterr().out

    assert set(folders) == {"translation", "bert"}
    for name, folder in folders.items():
        config = json.loads((folder / "config.json").read_text())
        assert config["auto_map"] and (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    assert "reloaded with AutoModelForSeq2SeqLM: VanillaTransformerForConditionalGeneration" in out
    assert "reloaded with AutoModelForMaskedLM: VanillaBertForMaskedLM" in out
    # the held-out scores: accuracy beside the frequency baseline's, and perplexity
    scores = re.search(r"held-out documents \((\d+) masked tokens, 15%\): top-1 accuracy ([\d.]+)%, against "
                       r"([\d.]+)% for always guessing the most frequent token \('.+'\); perplexity ([\d.]+)", out)
    assert scores and int(scores[1]) > 50 and 0 < float(scores[3]) < 100 and 0 <= float(scores[2]) <= 100
    # the BERT part trained with the MLM script's budget recipe: one cycle, no dropout, pre-LN
    config = json.loads((folders["bert"] / "config.json").read_text())
    assert config["hidden_dropout_prob"] == config["attention_probs_dropout_prob"] == 0.0 and config["normalize_before"]
    rates = [json.loads(line).get("lr") for line in (tmp_path / "out" / "training" / "bert" / "log.jsonl").open()]
    assert rates[-1] == pytest.approx(args.bert_learning_rate / 10)  # step 10 of 10: the cycle's last rate
    # and the next steps, with the commands
    next_steps = out.split("What next", 1)[1]
    for command in ("vanilla-transformer-pretrain-mlm --preset budget --train_file",
                    "vanilla-transformer-train-translation --train_split",
                    f"vanilla-transformer-finetune-classification --model_name_or_path {folders['bert']}",
                    "vanilla-transformer-publish --model_dir"):
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
    assert [a.rsplit(" (", 1)[0] for a in answer_lines[0].split("-> ", 1)[1].split(", ")] == expected


def test_mlm_training_of_the_main_job_lowers_held_out_perplexity(tmp_path):
    torch.manual_seed(0)
    documents = stdlib_docstrings(max_documents=600)
    from vanilla_transformer.tokenization import train_wordpiece_tokenizer
    from vanilla_transformer.modeling import VanillaBertConfig

    tokenizer = train_wordpiece_tokenizer(documents[100:], vocab_size=600, show_progress=False)
    train, held_out = (main_job.mlm_blocks(part, tokenizer, 32) for part in (documents[100:], documents[:100]))
    model = VanillaBertForMaskedLM(VanillaBertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64, sparse_prediction=True))
    frequent = main_job.most_frequent_token([b["input_ids"] for b in train], [b["special_tokens_mask"] for b in train])
    assert tokenizer.convert_ids_to_tokens(frequent) in (".", "the")
    before = main_job.held_out_scores(model.eval(), held_out, tokenizer, 0, frequent)
    collate = main_job.DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
    args = main_job.MainArguments(output_dir=str(tmp_path))
    seconds = main_job.fit(model, train, [len(b["input_ids"]) for b in train], collate, args, "bert", batch_size=32,
                           schedule=dict(num_epochs=8, learning_rate=3e-3, warmup_steps=20))
    after = main_job.held_out_scores(model, held_out, tokenizer, 0, frequent)
    assert after["masked"] == before["masked"] > 100  # the same positions, masked with the seed
    assert after["val_frequency_baseline"] == before["val_frequency_baseline"] > 0
    before, after = before["val_perplexity"], after["val_perplexity"]
    # it went through the one training loop: its log and checkpoint are in the run folder
    records = [json.loads(line) for line in (tmp_path / "training" / "bert" / "log.jsonl").read_text().splitlines()]
    steps = 8 * math.ceil(len(train) / 32)
    assert [r["step"] for r in records] == list(range(10, steps + 1, 10))  # logged every 10 steps
    assert (tmp_path / "training" / "bert" / "checkpoints" / f"step-{steps}").is_dir()  # saved at the end
    assert seconds > 0 and not model.training
    print(f"held-out perplexity {before:.0f} -> {after:.0f}")
    assert before > 300 and after < 0.6 * before, (before, after)


@pytest.mark.parametrize("argv, message", [
    (["--families", "gpt"], "choose from translation, bert"),
    (["--source_file", "x.de"], "pass both --source_file and --target_file"),
])
def test_main_job_arguments_are_checked(argv, message):
    with pytest.raises(ValueError, match=message):
        main_job.HfArgumentParser(main_job.MainArguments).parse_args_into_dataclasses(args=argv)
