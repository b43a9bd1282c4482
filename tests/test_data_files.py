"""The one data reader (vanilla_transformer.scripts.training.data_files): text lines and tables (.tsv, .csv, .json,
.jsonl, each optionally .gz) as every command reads them; each refusal is a DataError that names the file and the
line."""

import gzip

import datasets
import pytest

from vanilla_transformer.scripts.training.data_files import (
    cached_dataset,
    check_table_file,
    file_sha256,
    flatten,
    load_hub_split,
    table_columns,
    table_rows,
    text_lines,
)
from vanilla_transformer.scripts.training.errors import DataError, DataFileNotFoundError


def write(path, content: bytes | str):
    data = content.encode() if isinstance(content, str) else content
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def rows(path) -> list[tuple[str, int, dict]]:
    return [(row.position, row.number, row.values) for row in table_rows(path)]


def test_text_lines_end_at_newline_only_drop_the_bom_and_read_gzip(tmp_path):
    text = "\ufeffeins\r\nzwei\u2028drei\rvier\n\nfünf"  # a line separator and a stray \r inside sentences
    expected = ["eins", "zwei\u2028drei\rvier", "", "fünf"]
    assert list(text_lines(write(tmp_path / "a.txt", text))) == expected
    assert list(text_lines(write(tmp_path / "a.txt.gz", text))) == expected


TEXT_ERRORS = {
    "not UTF-8": ("a.txt", b"gut\n\xe4rger\n", r"a\.txt, line 2: byte 0xe4 \(byte 1 of the line\) is not UTF-8"),
    "truncated gz": ("a.txt.gz", gzip.compress(b"eins\nzwei\n" * 200)[:-30],
                     r"a\.txt\.gz: cannot decompress it after line \d+ .* truncated or corrupt"),
    "not gzip": ("a.txt.gz", b"plain text\n", r"a\.txt\.gz: cannot decompress it after line 0"),
}


@pytest.mark.parametrize("case", TEXT_ERRORS, ids=list(TEXT_ERRORS))
def test_unreadable_text_names_the_file_and_line(case, tmp_path):
    name, content, message = TEXT_ERRORS[case]
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError, match=message):
        list(text_lines(tmp_path / name))


def test_a_tsv_is_read_verbatim_and_a_blank_line_is_a_row_of_empty_values(tmp_path):
    path = write(tmp_path / "t.tsv", 'sentence\tlabel\n"it \'s fine\t1\n\nsay "no"\t0\n')
    assert table_columns(path) == ["sentence", "label"]
    assert rows(path) == [("line", 2, {"sentence": '"it \'s fine', "label": "1"}),
                          ("line", 3, {"sentence": "", "label": ""}),
                          ("line", 4, {"sentence": 'say "no"', "label": "0"})]


def test_a_csv_is_read_with_quotes_and_line_breaks_and_gzip(tmp_path):
    content = 'text,label\n"a, b",1\n"two\nlines",0\nplain,1\n'
    for name in ("c.csv", "c.csv.gz"):
        assert rows(write(tmp_path / name, content)) == [("line", 2, {"text": "a, b", "label": "1"}),
                                                         ("line", 3, {"text": "two\nlines", "label": "0"}),
                                                         ("line", 5, {"text": "plain", "label": "1"})]


def test_json_lines_and_json_lists_are_flattened(tmp_path):
    lines = write(tmp_path / "j.jsonl", '{"translation": {"de": "Hund", "en": "dog"}, "id": 1}\n\n{"id": 2}\n')
    assert rows(lines) == [("line", 1, {"translation.de": "Hund", "translation.en": "dog", "id": 1}),
                           ("line", 3, {"id": 2})]
    assert table_columns(lines) == ["translation.de", "translation.en", "id"]
    listed = write(tmp_path / "j.json.gz", '[{"a": {"b": {"c": 1}}},\n {"a": null}]')
    assert rows(listed) == [("item", 1, {"a.b.c": 1}), ("item", 2, {"a": None})]
    assert flatten({"x": {"y": 1}, "z": [1, 2]}) == {"x.y": 1, "z": [1, 2]}


TABLE_ERRORS = {
    "empty TSV": ("e.tsv", "", r"e\.tsv is empty: expected a header line naming its tab-separated columns"),
    "blank CSV": ("e.csv", "\n\n", r"e\.csv is empty: expected a header line naming its comma-separated columns"),
    "empty column name": ("h.tsv", "a\t\tb\n1\t2\t3\n", r"h\.tsv, line 1 \(the header\): the column names \['a', '', "
                                                         r"'b'\] must be distinct and not empty"),
    "repeated column name": ("h.csv", "a,b,a\n1,2,3\n", r"h\.csv, line 1 \(the header\): the column names .* must be "
                                                        r"distinct"),
    "ragged TSV": ("r.tsv", "a\tb\n1\t2\n3\n4\t5\t6\n7\t8\n", r"r\.tsv, line 3: 1 tab-separated field, but the header "
                                                              r"\(line 1\) names 2 columns \['a', 'b'\]; 2 such rows: "
                                                              r"line 3 has 1, line 4 has 3\. A tab inside a text"),
    "ragged CSV, an unclosed quote": ("r.csv", 'a,b\n1,2\n"3,4\n5,6\n', r"r\.csv, line 3: 1 comma-separated field, .*"
                                                                        r"a quote opened there and never closed"),
    "CSV field too large": ("big.csv", "a,b\n" + "x" * 200_000 + ",1\n", r"big\.csv, line 2: not valid CSV \(field "
                                                                         r"larger than field limit"),
    "invalid JSON line": ("j.jsonl", '{"a": 1}\n\n{"a": \n', r"j\.jsonl, line 3: not valid JSON \(Expecting value at "
                                                              r"column 7\)"),
    "invalid JSON list": ("j.json", '[{"a": 1},\n {"a": }]', r"j\.json, line 2: not valid JSON"),
    "a JSON row that is no object": ("j.jsonl", '{"a": 1}\n[1, 2]\n', r"j\.jsonl, line 2: a JSON list, not an object "
                                                                      r"\(\[1, 2\]\)"),
    "a JSON list item that is no object": ("j.json", '[{"a": 1}, "b"]', r"j\.json, item 2: a JSON str, not an object"),
    "empty JSON lines": ("j.jsonl", "\n \n", r"j\.jsonl is empty: expected one JSON object per line"),
    "not UTF-8 in a gzipped table": ("u.tsv.gz", b"a\tb\n\xff\t1\n", r"u\.tsv\.gz, line 2: byte 0xff"),
    "another type": ("t.txt", "a\tb\n", r"t\.txt: unsupported data file type '\.txt'"),
}


@pytest.mark.parametrize("case", TABLE_ERRORS, ids=list(TABLE_ERRORS))
def test_a_bad_table_names_the_file_and_line(case, tmp_path):
    name, content, message = TABLE_ERRORS[case]
    path = write(tmp_path / name, content)
    with pytest.raises(DataError, match=message):
        rows(path)


def test_a_missing_or_unsupported_file_is_named_with_its_option(tmp_path):
    with pytest.raises(DataFileNotFoundError, match=r"--train_file .*nope\.tsv: no such file"):
        check_table_file(tmp_path / "nope.tsv", "--train_file")
    with pytest.raises(DataFileNotFoundError, match=r"--test_file .*: it is a folder"):
        check_table_file(tmp_path, "--test_file")
    with pytest.raises(DataError, match=r"data\.parquet: unsupported data file type '\.parquet'; use \.csv"):
        check_table_file(write(tmp_path / "data.parquet", "x"), "--train_file")
    assert check_table_file(write(tmp_path / "ok.JSONL", "{}"), "--train_file").name == "ok.JSONL"


def _numbers(path: str, calls: str):
    with open(calls, "a") as handle:  # each read of the file leaves a line
        handle.write("read\n")
    for row in table_rows(path):
        yield {"n": int(row.values["n"])}


def test_cached_dataset_reads_a_file_once_and_passes_the_readers_error_through(tmp_path):
    path, calls = write(tmp_path / "n.tsv", "n\n1\n2\n"), str(tmp_path / "calls.txt")
    features = datasets.Features({"n": datasets.Value("int64")})
    assert cached_dataset(_numbers, [path], features, path=str(path), calls=calls)["n"] == [1, 2]
    assert cached_dataset(_numbers, [path], features, path=str(path), calls=calls)["n"] == [1, 2]
    assert (tmp_path / "calls.txt").read_text() == "read\n"  # the second time from the cache
    write(path, "n\n3\n")  # an edited file is read again
    assert cached_dataset(_numbers, [path], features, path=str(path), calls=calls)["n"] == [3]
    bad = write(tmp_path / "bad.tsv", "n\n1\n2\t3\n")
    with pytest.raises(DataError, match=r"bad\.tsv, line 3: 2 tab-separated fields"):
        cached_dataset(_numbers, [bad], features, path=str(bad), calls=calls)


def test_a_hub_dataset_that_cannot_be_loaded_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match=r"--dataset_name .*nothing \(cfg\), split 'train': cannot load it"):
        load_hub_split(str(tmp_path / "nothing"), "cfg", "train")


def test_file_sha256_is_of_the_bytes_as_stored(tmp_path):
    import hashlib

    path = write(tmp_path / "a.tsv.gz", "a\tb\n")
    assert file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()
