"""Bad requests against `vanilla-transformer serve`, and what it answers: a table of input, status and message.

A server on --model_dir (a translation folder) and one on --bert_dir (a masked-LM folder), each on a free loopback
port; every request below is sent as raw bytes, its status and message recorded; after each, GET /health must still
answer. The table goes to --out (.md and .json); the README of docs/serving.md quotes it.

    python benchmarks/serving_bad_requests.py --model_dir outputs/main/translation/final \\
        --bert_dir outputs/main/bert/final --out benchmarks/serving_bad_requests
"""

import argparse
import http.client
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from serving_load import start_server  # noqa: E402

JSON = {"Content-Type": "application/json"}
TRANSLATE = [  # (what, method, path, body, headers)
    ("not JSON", "POST", "/translate", b'{"q": "Januar', JSON),
    ("a form, not JSON", "POST", "/translate", b"q=Januar&source=de&target=en",
     {"Content-Type": "application/x-www-form-urlencoded"}),
    ("no body", "POST", "/translate", b"", JSON),
    ("no q", "POST", "/translate", b'{"source": "de", "target": "en"}', JSON),
    ("q a number", "POST", "/translate", b'{"q": 5}', JSON),
    ("empty text", "POST", "/translate", b'{"q": "  "}', JSON),
    ("an empty text in a list", "POST", "/translate", b'{"q": ["Januar", ""]}', JSON),
    ("an empty list", "POST", "/translate", b'{"q": []}', JSON),
    ("65 texts", "POST", "/translate", json.dumps({"q": ["Januar"] * 65}).encode(), JSON),
    ("a pair the model does not have", "POST", "/translate", b'{"q": "janvier", "source": "fr", "target": "en"}',
     JSON),
    ("another target", "POST", "/translate", b'{"q": "Januar", "source": "de", "target": "ja"}', JSON),
    ("longer than the model's positions", "POST", "/translate", json.dumps({"q": "Januar " * 1100}).encode(), JSON),
    ("over the body limit", "POST", "/translate", json.dumps({"q": "Januar " * 12000}).encode(), JSON),
    ("JSON nested 30,000 deep", "POST", "/translate", b"[" * 30000 + b"]" * 30000, JSON),
    ("not UTF-8", "POST", "/translate", b'{"q": "J\xe4nner"}', JSON),
    ("beam_size 0", "POST", "/translate", b'{"q": "Januar", "beam_size": 0}', JSON),
    ("beam_size 100", "POST", "/translate", b'{"q": "Januar", "beam_size": 100}', JSON),
    ("beam_size \"4\"", "POST", "/translate", b'{"q": "Januar", "beam_size": "4"}', JSON),
    ("length_penalty NaN", "POST", "/translate", b'{"q": "Januar", "length_penalty": NaN}', JSON),
    ("max_new_tokens 5000", "POST", "/translate", b'{"q": "Januar", "max_new_tokens": 5000}', JSON),
    ("format html", "POST", "/translate", b'{"q": "<b>Januar</b>", "format": "html"}', JSON),
    ("GET /translate", "GET", "/translate", None, {}),
    ("a path it does not have", "POST", "/fill-mask", b'{"text": "a [MASK]"}', JSON),
]
BERT = [
    ("no [MASK]", "POST", "/fill-mask", b'{"text": "Return the value."}', JSON),
    ("two [MASK]", "POST", "/fill-mask", b'{"text": "Return the [MASK] [MASK]."}', JSON),
    ("top_k 0", "POST", "/fill-mask", b'{"text": "Return the [MASK].", "top_k": 0}', JSON),
    ("a misspelt field", "POST", "/fill-mask", b'{"text": "Return the [MASK].", "topk": 3}', JSON),
    ("classify on a masked-LM folder", "POST", "/classify", b'{"text": "fine"}', JSON),
]


def send(port: int, method: str, path: str, body, headers) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request(method, path, body=body, headers=headers)
    response = connection.getresponse()
    raw = response.read()
    connection.close()
    try:
        return response.status, json.loads(raw)["error"]
    except (ValueError, KeyError, TypeError):
        return response.status, raw.decode(errors="replace")[:200]


def run(folder: Path, cases: list) -> list[dict]:
    process, port = start_server(folder)
    rows = []
    try:
        for what, method, path, body, headers in cases:
            status, message = send(port, method, path, body, headers)
            alive = send(port, "GET", "/health", None, {})[0] == 200
            shown = body if body is None or len(body) <= 60 else body[:45] + b"... (%d bytes)" % len(body)
            rows.append({"what": what, "request": f"{method} {path} {shown.decode(errors='backslashreplace') if shown else ''}".strip(),
                         "status": status, "message": message, "alive_after": alive})
            print(f"{status} {what}: {message}", flush=True)
    finally:
        process.terminate()
        process.wait(30)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", required=True)
    parser.add_argument("--bert_dir", required=True)
    parser.add_argument("--out", default="benchmarks/serving_bad_requests")
    args = parser.parse_args()
    rows = run(Path(args.model_dir), TRANSLATE) + run(Path(args.bert_dir), BERT)
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1, ensure_ascii=False) + "\n")
    lines = ["| input | request | status | message | up after |", "|---|---|---:|---|---|"]
    for row in rows:
        cells = [row["what"], f"`{row['request']}`", str(row["status"]), row["message"],
                 "yes" if row["alive_after"] else "NO"]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
