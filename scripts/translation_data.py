"""Parallel corpora for the translation scripts: the embedded default (Babel's CLDR display names), local files
(one sentence per line per language, plain or .gz), or a `datasets` Hub id."""

import gzip
from pathlib import Path


def babel_pairs(source_lang: str = "de", target_lang: str = "en") -> list[tuple[str, str]]:
    """The embedded default corpus: CLDR locale display names that ship with Babel (no network), e.g.
    ("Vereinigtes Königreich", "United Kingdom"), ("Japanische Schrift", "Japanese"), ("Januar", "January").
    About 1,500 short human-written pairs: enough to see a model learn, not a real translation corpus."""
    from babel import Locale

    source, target = Locale.parse(source_lang), Locale.parse(target_lang)
    pairs = []
    for table in ("languages", "territories", "scripts", "currencies", "variants"):
        src_names, tgt_names = getattr(source, table), getattr(target, table)
        pairs += [(src_names[key], tgt_names[key]) for key in sorted(src_names) if key in tgt_names]
    for width in ("wide", "abbreviated"):
        for table in ("months", "days"):
            src_names = getattr(source, table)["format"][width]
            tgt_names = getattr(target, table)["format"][width]
            pairs += [(src_names[key], tgt_names[key]) for key in sorted(src_names)]
    return sorted({(s.strip(), t.strip()) for s, t in pairs if s.strip() and t.strip()})


def read_lines(path: str | Path) -> list[str]:
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return [line.rstrip("\n") for line in handle]


def file_pairs(source_file: str | Path, target_file: str | Path) -> list[tuple[str, str]]:
    """One sentence per line in each file, line i of one the translation of line i of the other."""
    sources, targets = read_lines(source_file), read_lines(target_file)
    if len(sources) != len(targets):
        raise ValueError(
            f"{source_file} has {len(sources)} lines but {target_file} has {len(targets)}: parallel files must "
            "be aligned line by line"
        )
    return list(zip(sources, targets))
