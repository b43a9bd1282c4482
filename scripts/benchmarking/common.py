"""What both benchmark commands share: the folder of the reference corpora (--data_dir) and its files, reading a
text file's lines, and the line that names the machine in a results file."""

import os
import platform
from itertools import islice
from pathlib import Path

from vanilla_transformer.scripts.training.errors import ArgumentError
from vanilla_transformer.scripts.training.translation_data import text_lines

DATA_DIR_HELP = ("the folder of the reference corpora (multi30k/, sst2/, wikitext2/); default: $VT_DATA_DIR if set, "
                 "else ../shared/data from the current folder")


def default_data_dir() -> str:
    """--data_dir's default, read when the arguments are parsed: $VT_DATA_DIR, else ../shared/data from the current
    folder (the reference corpora sit beside a clone)."""
    return os.environ.get("VT_DATA_DIR") or str(Path("..") / "shared" / "data")


def data_file(data_dir: str | Path, name: str, reader: str) -> Path:
    """data_dir/name; an `ArgumentError` naming the folder and --data_dir where it is not there."""
    path = Path(data_dir) / name
    if not path.is_file():
        raise ArgumentError(f"--data_dir {data_dir} ({Path(data_dir).resolve()}): no {name} there ({reader}); pass "
                            "--data_dir, or set VT_DATA_DIR, to the folder holding multi30k/, sst2/ and wikitext2/")
    return path


def read_lines(path: Path, limit: int | None = None) -> list[str]:
    """The first `limit` lines of a UTF-8 text file (gzip-compressed if it ends in .gz), or all of them."""
    return list(islice(text_lines(path), limit or None))


def machine(*details: str) -> str:
    """One line for a results file: the processor and its cores, then `details` (the GPU, the memory, versions)."""
    return ", ".join([platform.processor() or platform.machine(), f"{os.cpu_count()} CPU cores", *details])
