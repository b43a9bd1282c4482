"""The one reader of data files for every command: text files (`text_lines`), tables (`table_rows`: .tsv, .csv,
.json, .jsonl, each optionally .gz), a Hub dataset (`load_hub_split`), and a reader's rows as a `datasets.Dataset`
cached on disk (`cached_dataset`).

A file that cannot be read as it should (missing, not UTF-8, a truncated .gz, a header with empty or repeated
column names, a ragged row, invalid JSON, a JSON row that is no object) is a `DataError` naming the file and the
line, and the fix: `datasets`' generic loaders name neither, so the files are read here.

- A TSV is read verbatim: a tab separates fields, quotes are text (GLUE's TSVs hold unbalanced quotes: `"it 's`).
- A CSV is read by the `csv` module: a quoted field may hold commas and line breaks.
- A .jsonl holds one JSON object per line; a .json that, or one list of objects. Nested objects are flattened:
  {"translation": {"de": ...}} has the column "translation.de", as `datasets.Dataset.flatten` names it.
"""

import csv
import gzip
import hashlib
import json
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import datasets

from vanilla_transformer.scripts.training.errors import DataError, DataFileNotFoundError, DataWarning, hub_unreachable

TABLE_TYPES = (".tsv", ".csv", ".json", ".jsonl")
READER_VERSION = "2"  # bump when a reader here changes what it yields: datasets' cached copies are then not reused


def text_lines(path: str | Path) -> Iterator[str]:
    """The lines of a UTF-8 text file, gzip-compressed if it ends in .gz, without their line ends. Lines end at "\\n"
    only: a stray "\\r" or Unicode line separator inside a sentence must not split it (that would misalign a
    parallel corpus). A byte-order mark opening the file is dropped. Bytes that are not UTF-8, or a truncated or
    corrupt .gz: a `DataError` naming the file and the line."""
    path = Path(path)
    if not path.is_file():
        raise DataFileNotFoundError(f"{path}: " + ("it is a folder, not a file" if path.is_dir() else "no such file"))
    number = 0
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as handle:
            for number, raw in enumerate(handle, start=1):  # binary lines end at b"\n" only
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as error:
                    raise DataError(
                        f"{path}, line {number}: byte 0x{raw[error.start]:02x} (byte {error.start + 1} of the line) "
                        "is not UTF-8. The file must be UTF-8 text: convert it (e.g. iconv -f latin1 -t utf-8)"
                    ) from None
                yield (line.removeprefix("\ufeff") if number == 1 else line).rstrip("\r\n")
    except (EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise DataError(
            f"{path}: cannot decompress it after line {number} ({type(error).__name__}: {error}): the .gz is "
            "truncated or corrupt, or not gzip at all. Compress it again (or download it again), or drop the .gz suffix"
        ) from None


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes (as stored: a .gz is not decompressed)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


# ------------------------------------------------------------------------------------------------------ tables


class TableRow(NamedTuple):
    """One row of a table file: its values by column name, and where it is (a line of the file, the header is
    line 1; or an item of a JSON list, from 1)."""

    path: Path
    position: str  # "line" or "item"
    number: int
    values: dict

    @property
    def where(self) -> str:
        return f"{self.path}, {self.position} {self.number}"


def table_type(path: str | Path) -> str | None:
    """".tsv", ".csv", ".json" or ".jsonl" (a .gz suffix aside), None for another file."""
    name = str(path).lower().removesuffix(".gz")
    return next((kind for kind in TABLE_TYPES if name.endswith(kind)), None)


def check_data_file(path: str | Path, option: str) -> Path:
    """`path` as a Path, when it is a file; else a `DataFileNotFoundError` naming `option`."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataFileNotFoundError(f"{option} {path}: " + ("it is a folder, not a file" if path.is_dir()
                                                            else "no such file"))
    return path


def check_table_file(path: str | Path, option: str) -> Path:
    """`path` as a Path, when it is a file that `table_rows` reads; else a `DataError` naming `option`."""
    path = check_data_file(path, option)
    if table_type(path) is None:
        raise DataError(f"{path}: unsupported data file type {path.suffix!r}; use .csv, .tsv, .json or .jsonl "
                        "(each may be .gz)")
    return path


def table_columns(path: str | Path) -> list[str]:
    """The column names of a table file: its header (.tsv, .csv), or the keys of its first row (.json, .jsonl)."""
    path = Path(path)
    if table_type(path) in (".tsv", ".csv"):
        records = _records(path)
        try:
            return _header(path, records)[1]
        finally:
            records.close()
    first = next(_json_rows(path), None)
    return list(first.values) if first is not None else []


def table_rows(path: str | Path) -> Iterator[TableRow]:
    """The rows of a .tsv, .csv, .json or .jsonl file (.gz too), streamed. A blank line of a TSV or CSV is a row of
    empty values (the caller skips it, or counts it); a blank line of a JSON lines file is skipped."""
    path = Path(path)
    kind = table_type(path)
    if kind is None:
        raise DataError(f"{path}: unsupported data file type {path.suffix!r}; use .csv, .tsv, .json or .jsonl")
    if kind in (".json", ".jsonl"):
        yield from _json_rows(path)
        return
    records = _records(path)
    header, names = _header(path, records)
    for number, fields in records:
        if len(fields) != len(names):
            if any(field.strip() for field in fields):
                _ragged(path, header, names, number, fields, records)
            fields = [""] * len(names)
        yield TableRow(path, "line", number, dict(zip(names, fields)))


def _records(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of a TSV (fields split at tabs, verbatim) or a CSV (the csv module's rows: a quoted
    field may span lines; the number is the row's first line)."""
    if table_type(path) == ".tsv":
        for number, line in enumerate(text_lines(path), start=1):
            yield number, line.split("\t") if line.strip() else []
        return
    reader = csv.reader(line + "\n" for line in text_lines(path))
    start = 1
    try:
        for fields in reader:
            yield start, fields
            start = reader.line_num + 1
    except csv.Error as error:
        raise DataError(f"{path}, line {reader.line_num}: not valid CSV ({error}); quote a field that holds a "
                        'comma, a quote ("") or a line break') from None


def _header(path: Path, records: Iterator[tuple[int, list[str]]]) -> tuple[int, list[str]]:
    separated = "tab-separated" if table_type(path) == ".tsv" else "comma-separated"
    number, names = next(records, (0, []))
    while number and not names:  # blank lines before the header
        number, names = next(records, (0, []))
    if not number:
        raise DataError(f"{path} is empty: expected a header line naming its {separated} columns (e.g. "
                        f"sentence{chr(9) if separated[0] == 't' else ','}label), then a row per example")
    if len(set(names)) != len(names) or not all(name.strip() for name in names):
        raise DataError(f"{path}, line {number} (the header): the column names {names} must be distinct and not "
                        f"empty: the first line names each {separated} column once")
    return number, names


def _ragged(path: Path, header: int, names: list[str], number: int, fields: list[str], records) -> None:
    """A row with another number of fields than the header: a `DataError` naming it, and the next few such rows
    (the rest of the file is read for them: one message shows whether a few rows are broken or all)."""
    tab = table_type(path) == ".tsv"
    ragged = [(number, len(fields))]
    ragged += [(n, len(f)) for n, f in records if len(f) != len(names) and any(x.strip() for x in f)]
    others = ", ".join(f"line {n} has {count}" for n, count in ragged[:5]) + (", ..." if len(ragged) > 5 else "")
    raise DataError(
        f"{path}, line {number}: {len(fields)} {'tab' if tab else 'comma'}-separated field{'s' * (len(fields) != 1)}, "
        f"but the header (line {header}) names {len(names)} columns {names}"
        + (f"; {len(ragged)} such rows: {others}" if len(ragged) > 1 else "")
        + (" (a field of several lines: a quote opened there and never closed?)" if any("\n" in f for f in fields)
           else "")
        + (". A tab inside a text, or a missing field? Replace the tab by a space, or fix the row" if tab else
           ". A comma inside a text, or a missing field? Quote the field, or fix the row")
        + " (an empty field is allowed)"
    )


def _json_rows(path: Path) -> Iterator[TableRow]:
    lines = text_lines(path)
    peek = text_lines(path)
    first = next((line for line in peek if line.strip()), None)
    peek.close()
    if first is None:
        raise DataError(f"{path} is empty: expected one JSON object per line (a .json file: that, or one list of "
                        'objects), e.g. {"sentence": "a fine film", "label": 1}')
    if table_type(path) == ".json" and first.lstrip().startswith("["):  # one list of objects
        try:
            items = json.loads("\n".join(lines))
        except json.JSONDecodeError as error:
            raise DataError(f"{path}, line {error.lineno}: not valid JSON ({error.msg} at column {error.colno})"
                            ) from None
        if not isinstance(items, list):
            raise DataError(f"{path}: a JSON {type(items).__name__}, not a list of objects")
        numbered, position = enumerate(items, start=1), "item"
    else:
        numbered, position = ((n, line) for n, line in enumerate(lines, start=1) if line.strip()), "line"
    for number, item in numbered:
        if position == "line":
            try:
                item = json.loads(item)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}, line {number}: not valid JSON ({error.msg} at column {error.colno}); a "
                                ".jsonl file holds one JSON object per line (a .json file: that, or one list of "
                                "objects)") from None
        if not isinstance(item, dict):
            raise DataError(f"{path}, {position} {number}: a JSON {type(item).__name__}, not an object "
                            f"({json.dumps(item)[:60]}); each row is one object of named values")
        yield TableRow(path, position, number, flatten(item))


def flatten(row: dict, prefix: str = "") -> dict:
    """{"translation": {"de": ...}} -> {"translation.de": ...}, as `datasets.Dataset.flatten` names the fields."""
    flat = {}
    for key, value in row.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


# ------------------------------------------------------------------------------------- datasets on disk, Hub


def cached_dataset(generator, files: list[Path], features: datasets.Features, **gen_kwargs) -> datasets.Dataset:
    """Run a reader (a generator of row dicts) through `datasets` (an Arrow table cached on disk), keyed by the
    files' paths, sizes and modification times and the reader's arguments: an edited file is read again, an
    unchanged one is not read at all. The reader's own `DataError` comes out as it is, not wrapped in datasets'
    generic message."""
    stamp = json.dumps([[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files]
                       + [generator.__name__, repr(sorted(gen_kwargs.items())), READER_VERSION])
    try:
        return datasets.Dataset.from_generator(
            generator, gen_kwargs=gen_kwargs, features=features,
            fingerprint=hashlib.sha256(stamp.encode()).hexdigest()[:32],
        )
    except datasets.exceptions.DatasetGenerationError as error:
        if isinstance(error.__cause__, DataError):  # our own message, not datasets' generic one
            raise error.__cause__ from None
        raise


def hub_splits(name: str, config: str | None) -> dict[str, datasets.Dataset]:
    """The train, validation and test splits of a Hub dataset (those it has); a warning names the others."""
    data = load_hub_split(name, config)
    found = {split: data[split] for split in ("train", "validation", "test") if split in data}
    if not found:
        raise DataError(f"--dataset_name {name} has no train, validation or test split; its splits are {list(data)}")
    unused = [split for split in data if split not in found]
    if unused:
        warnings.warn(f"--dataset_name {name}: using the splits {list(found)}; not used: {unused}", DataWarning,
                      stacklevel=2)
    return found


def load_hub_split(name: str, config: str | None, split: str | None = None):
    """`datasets.load_dataset(name, config, split=split)` (every split, a DatasetDict, when `split` is None), its
    failures (no such dataset, split or configuration; the Hub out of reach, named as such) as a `DataError` naming
    what was asked for."""
    try:
        return datasets.load_dataset(name, config, **({"split": split} if split is not None else {}))
    except Exception as error:  # DatasetNotFoundError is a FileNotFoundError; httpx's errors are no OSError
        asked = (f"--dataset_name {name}{f' ({config})' if config else ''}"
                 + (f", split {split!r}" if split is not None else ""))
        unreachable = hub_unreachable(error)
        if unreachable:
            raise DataError(f"{asked}: {unreachable}: check the network or HF_HUB_OFFLINE (offline, only datasets "
                            "already in the cache load), or give local files") from None
        if not isinstance(error, (FileNotFoundError, ValueError, ConnectionError)):
            raise
        first_line = (str(error).strip().splitlines() or [""])[0]
        raise DataError(f"{asked}: cannot load it ({type(error).__name__}: {first_line})") from None
