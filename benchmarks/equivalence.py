"""Old code and new code give the same results: three tiny seeded runs through the commands' own entry points
(translation, MLM, classification fine-tune), with a fingerprint of each final folder's weights and every logged
loss. Run it once under each version of the code and compare the JSON files:

    python benchmarks/equivalence.py --data_dir ../shared/data --work_dir /tmp/eq-new --out new.json \
        --mlm_tokenizer /tmp/eq-wordpiece
    python benchmarks/equivalence.py --data_dir ../shared/data --work_dir /tmp/eq-old --out old.json \
        --mlm_tokenizer /tmp/eq-wordpiece   # old code
    diff old.json new.json

The entry points are called as `python -m vanilla_transformer.scripts.<name>`, which both versions provide.
equivalence-before.json (the code at 24da5a2) and equivalence-after.json (after the redesign of issue 24) were made
this way with one shared WordPiece; the MLM and classification digests hold for that tokenizer only.
"""

import argparse
import gzip
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path


def weights_digest(folder: Path) -> str:
    from safetensors.torch import load_file

    tensors = load_file(str(folder / "model.safetensors"))
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].contiguous().view(-1).float().numpy().tobytes())
    return digest.hexdigest()[:16]


def losses(log: Path) -> list:
    return [record.get("loss") for record in map(json.loads, log.read_text().splitlines()) if "loss" in record]


def command(name: str, *argv: str) -> None:
    subprocess.run([sys.executable, "-m", f"vanilla_transformer.scripts.{name}", *argv], check=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", required=True, help="the folder with multi30k/, wikitext2/ and sst2/")
    parser.add_argument("--work_dir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--mlm_tokenizer", required=True,
                        help="a WordPiece folder shared by the runs compared, made here if missing: before 12-2026 the "
                             "WordPiece trainer numbered pieces in hash-map order, so two trainings differ")
    args = parser.parse_args()
    data, work = Path(args.data_dir), Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", 400), ("val", 60)):  # the first pairs of Multi30k, as plain files
        for lang in ("de", "en"):
            lines = gzip.open(data / "multi30k" / f"{split}.{lang}.gz", "rt").read().splitlines()[:count]
            (work / f"{split}.{lang}").write_text("\n".join(lines) + "\n")
    wiki = [line for line in (data / "wikitext2" / "valid.txt").read_text().splitlines() if len(line.split()) > 8]
    (work / "mlm_train.txt").write_text("\n".join(wiki[:300]) + "\n")
    (work / "mlm_valid.txt").write_text("\n".join(wiki[300:340]) + "\n")
    sst = (data / "sst2" / "train.tsv").read_text().splitlines()
    (work / "cls_train.tsv").write_text("\n".join(sst[:257]) + "\n")
    (work / "cls_dev.tsv").write_text("\n".join([sst[0]] + sst[257:321]) + "\n")

    if not Path(args.mlm_tokenizer, "tokenizer.json").is_file():
        command("train_tokenizer", "--kind", "wordpiece", "--vocab_size", "400", "--files",
                str(work / "mlm_train.txt"), "--output_dir", args.mlm_tokenizer)
    results = {}
    command("train_translation", "--train_split", str(work / "train"), "--validation_split", str(work / "val"),
            "--output_dir", str(work / "translation"), "--vocab_size", "300", "--d_model", "32", "--encoder_layers",
            "1", "--decoder_layers", "1", "--attention_heads", "2", "--ffn_dim", "64", "--max_tokens", "600",
            "--max_steps", "12", "--warmup_steps", "4", "--logging_steps", "2", "--eval_steps", "6",
            "--save_steps", "6", "--num_beams", "2", "--eval_batch_size", "32", "--seed", "3")
    results["translation"] = {"weights": weights_digest(work / "translation" / "final"),
                              "losses": losses(work / "translation" / "log.jsonl")}
    command("pretrain_mlm", "--train_file", str(work / "mlm_train.txt"), "--validation_file",
            str(work / "mlm_valid.txt"), "--output_dir", str(work / "mlm"), "--tokenizer_name", args.mlm_tokenizer,
            "--hidden_size",
            "32", "--num_hidden_layers", "1", "--num_attention_heads", "2", "--intermediate_size", "64",
            "--block_size", "32", "--batch_size", "8", "--max_steps", "12", "--warmup_steps", "4",
            "--logging_steps", "2", "--eval_steps", "6", "--save_steps", "6", "--seed", "3")
    results["mlm"] = {"weights": weights_digest(work / "mlm" / "final"), "losses": losses(work / "mlm" / "log.jsonl")}
    command("finetune_classification", "--model_name_or_path", str(work / "mlm" / "final"), "--train_file",
            str(work / "cls_train.tsv"), "--validation_file", str(work / "cls_dev.tsv"), "--output_dir",
            str(work / "cls"), "--per_device_train_batch_size", "16", "--logging_steps", "2", "--seed", "3")
    scores = json.loads((work / "cls" / "results.json").read_text())
    results["classification"] = {"weights": weights_digest(work / "cls"), "train_loss": scores["train"]["train_loss"],
                                 "validation_accuracy": scores["validation"].get("validation_accuracy")}
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
