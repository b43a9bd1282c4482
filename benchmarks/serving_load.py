"""Load on `vanilla-transformer serve`, over loopback: throughput and latency with server-side batching against one
request at a time, on the PyTorch model and on its CTranslate2 export, then a 4x overload.

For each back end (pytorch; ctranslate2, float32 export made here) and each mode (batching: --max_batch_size 32
--batch_window_ms 5, the default; batching without a window: --batch_window_ms 0, a batch is what waited while the
last one ran; one at a time: --max_batch_size 1), a fresh server; then closed-loop clients (each sends its next
request when the last is answered), 1, 8 and 32 of them, each level bounded by --requests_per_client requests per
client and --level_seconds seconds. One request = one sentence (LibreTranslate's `q` a string), beam size and length
as the folder's generation config says. Sentences: the German side of the embedded CLDR corpus (names of countries,
languages, months), which the main job's model translates.

Overload: the batching server of each back end, with its default queue (256 texts) and timeout (30 s), gets requests
at 4x the throughput measured with 32 clients (open loop: arrivals on a fixed schedule, however slowly they are
answered) for --overload_seconds. Every request must be answered, 200 or 503 (with Retry-After); the server's resident
memory is sampled every 0.2 s; it must be alive afterwards.

The client runs in this process (asyncio, one connection per request), the server in a child process: on a 2-core
machine they share the cores, as a proxy and a server on one host would. Results: --out (.json and .md).

    python benchmarks/serving_load.py --model_dir outputs/main/translation/final --out benchmarks/serving_load
"""

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from vanilla_transformer.scripts.benchmarking.common import machine
from vanilla_transformer.scripts.training.translation_data import babel_pairs

LEVELS = (1, 8, 32)


def start_server(model_dir: Path, *options: str) -> tuple[subprocess.Popen, int]:
    command = [sys.executable, "-m", "vanilla_transformer.scripts", "serve", "--model_dir", str(model_dir),
               "--port", "0", "--no_access_log", *options]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "HF_HUB_OFFLINE": "1"})
    lines = []
    for line in process.stdout:
        lines.append(line)
        match = re.search(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", line)
        if match:
            threading.Thread(target=lambda: [None for _ in process.stdout], daemon=True).start()  # keep draining
            return process, int(match.group(1))
    raise SystemExit("the server did not start:\n" + "".join(lines[-30:]))


async def post(port: int, path: str, body: dict, timeout: float = 120) -> tuple[int, float, dict]:
    """(status, seconds, headers) of one POST on a fresh connection."""
    started = time.perf_counter()
    payload = json.dumps(body).encode()
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    writer.write(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode() + payload)
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), timeout)
    writer.close()
    head = raw.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in head[1:] if ":" in line)}
    return int(head[0].split()[1]), time.perf_counter() - started, headers


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def closed_loop(port: int, sentences: list[str], clients: int, per_client: int, seconds: float) -> dict:
    latencies, statuses = [], []
    deadline = time.perf_counter() + seconds

    async def client(index: int):
        for k in range(per_client):
            if time.perf_counter() > deadline:
                return
            text = sentences[(index * per_client + k) % len(sentences)]
            status, took, _ = await post(port, "/translate", {"q": text, "source": "auto"})
            statuses.append(status)
            latencies.append(took)

    started = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    elapsed = time.perf_counter() - started
    return {"clients": clients, "requests": len(latencies), "ok": statuses.count(200), "seconds": round(elapsed, 2),
            "throughput_rps": round(statuses.count(200) / elapsed, 2),
            "p50_ms": round(1000 * statistics.median(latencies), 1), "p99_ms": round(1000 * percentile(latencies, .99), 1)}


async def open_loop(port: int, sentences: list[str], rate: float, seconds: float, pid: int) -> dict:
    """Requests at `rate` per second for `seconds`, whether or not the earlier ones were answered."""
    process = psutil.Process(pid)
    memory = [process.memory_info().rss]
    sampling = True

    async def sample():
        while sampling:
            memory.append(process.memory_info().rss)
            await asyncio.sleep(0.2)

    async def one(k: int):
        try:
            return await post(port, "/translate", {"q": sentences[k % len(sentences)], "source": "auto"}, timeout=90)
        except (OSError, TimeoutError) as failure:  # refused or cut: not an answer
            return type(failure).__name__, 0.0, {}

    sampler = asyncio.create_task(sample())
    count = int(rate * seconds)
    started = time.perf_counter()
    tasks = []
    for k in range(count):
        await asyncio.sleep(max(0.0, started + k / rate - time.perf_counter()))
        tasks.append(asyncio.create_task(one(k)))
    answers = await asyncio.gather(*tasks)
    sampling = False
    await sampler
    statuses = [status for status, _, _ in answers]
    ok = [took for status, took, _ in answers if status == 200]
    busy = [headers for status, _, headers in answers if status == 503]
    return {"rate_rps": round(rate, 1), "sent": count, "answered_200": len(ok), "answered_503": len(busy),
            "other": sorted({str(s) for s in statuses if s not in (200, 503)}),
            "503_with_retry_after": sum("retry-after" in h for h in busy),  # ours; the rest: uvicorn's backstop
            "p99_ms_of_200": round(1000 * percentile(ok, .99), 1) if ok else None,
            "rss_mb_before": round(memory[0] / 2**20, 1), "rss_mb_max": round(max(memory) / 2**20, 1),
            "rss_mb_after": round(process.memory_info().rss / 2**20, 1)}


def measure(model_dir: Path, engine: str, args, sentences: list[str]) -> dict:
    modes = {"batching": ["--max_batch_size", "32", "--batch_window_ms", "5"],
             "batching, no window": ["--max_batch_size", "32", "--batch_window_ms", "0"],
             "one at a time": ["--max_batch_size", "1"]}
    results = {}
    for mode, options in modes.items():
        process, port = start_server(model_dir, *options, *args.server_options)
        try:
            asyncio.run(closed_loop(port, sentences, 4, 2, 30))  # warm-up
            levels = [asyncio.run(closed_loop(port, sentences, clients, args.requests_per_client, args.level_seconds))
                      for clients in LEVELS]
            for level in levels:
                print(f"  {engine:11} {mode:19} {level}", flush=True)
            results[mode] = levels
            if mode == "batching":
                rate = 4 * levels[-1]["throughput_rps"]
                overload = asyncio.run(open_loop(port, sentences, rate, args.overload_seconds, process.pid))
                overload["alive_after"] = process.poll() is None and asyncio.run(
                    post(port, "/translate", {"q": sentences[0]}))[0] == 200
                print(f"  {engine:11} overload x4   {overload}", flush=True)
                results["overload"] = overload
        finally:
            process.terminate()
            process.wait(30)
    return results


def write_markdown(report: dict, path: Path) -> None:
    lines = [f"# Serving load: {report['model_dir']}", "", f"Machine: {report['machine']}. {report['note']}", "",
             "| engine | mode | clients | requests | throughput (req/s) | p50 (ms) | p99 (ms) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for engine, results in report["engines"].items():
        for mode in ("batching", "batching, no window", "one at a time"):
            for level in results[mode]:
                lines.append(f"| {engine} | {mode} | {level['clients']} | {level['requests']} | "
                             f"{level['throughput_rps']} | {level['p50_ms']} | {level['p99_ms']} |")
    lines += ["", "Overload (open loop, 4x the batching throughput at 32 clients, default queue 256 texts, "
              "timeout 30 s):", "",
              "| engine | rate (req/s) | sent | 200 | 503 (of them with Retry-After) | other | p99 of 200 (ms) | "
              "RSS before / max / after (MB) | alive after |", "|---|---:|---:|---:|---:|---|---:|---|---|"]
    for engine, results in report["engines"].items():
        o = results["overload"]
        lines.append(f"| {engine} | {o['rate_rps']} | {o['sent']} | {o['answered_200']} | {o['answered_503']} "
                     f"({o['503_with_retry_after']}) | {', '.join(o['other']) or 'none'} | {o['p99_ms_of_200']} | "
                     f"{o['rss_mb_before']} / {o['rss_mb_max']} / {o['rss_mb_after']} | {o['alive_after']} |")
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", required=True, help="a translation folder with training_args.json")
    parser.add_argument("--out", default="benchmarks/serving_load", help="results: <out>.json and <out>.md")
    parser.add_argument("--requests_per_client", type=int, default=12)
    parser.add_argument("--level_seconds", type=float, default=20.0)
    parser.add_argument("--overload_seconds", type=float, default=10.0)
    parser.add_argument("--engines", default="pytorch,ctranslate2")
    parser.add_argument("--server_options", nargs=argparse.REMAINDER, default=[], help="passed to serve")
    args = parser.parse_args()
    model_dir = Path(args.model_dir)
    sentences = [source for source, _ in babel_pairs("de", "en")]
    report = {"model_dir": str(model_dir), "machine": machine(), "engines": {},
              "note": "Client and server share the machine's cores; one request = one sentence; closed loop per "
                      f"level: at most {args.requests_per_client} requests per client and {args.level_seconds:g} s."}
    with tempfile.TemporaryDirectory() as scratch:
        for engine in args.engines.split(","):
            folder = model_dir
            if engine == "ctranslate2":
                from vanilla_transformer.modeling.convert_ctranslate2 import export_ctranslate2

                folder = export_ctranslate2(model_dir, Path(scratch) / "ct2")
                (folder / "training_args.json").write_bytes((model_dir / "training_args.json").read_bytes())
            report["engines"][engine] = measure(folder, engine, args, sentences)
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    write_markdown(report, out.with_suffix(".md"))
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
