"""The screenshots of docs/demo.md: `vanilla-transformer demo` started on a model folder, opened in a headless
Chromium (playwright), a text typed in, the action clicked (Translate, Fill the mask, Classify, Tag), its answer (and
for translation the attention heatmap) waited for, and the whole page saved as a PNG; the answer is printed.

    python benchmarks/demo_screenshot.py --model_dir outputs/main/translation/final --text "Vereinigtes Königreich" \\
        --output docs/figures/demo-translation.png
    python benchmarks/demo_screenshot.py --model_dir outputs/main/bert/final \\
        --text "Return the [MASK] of the list." --output docs/figures/demo-fill-mask.png

Needs playwright and a Chromium: `apt-get install -y chromium && pip install playwright`.
"""

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from transformers import AutoConfig

import vanilla_transformer.modeling  # noqa: F401  (registers our models with AutoConfig)
from vanilla_transformer.scripts.serving.demo_app import task_of

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# task -> (the button to click, the element that shows the answer); the elem_ids of demo_app's pages
PAGES = {
    "translation": ("#translate", "#translation textarea"),
    "fill-mask": ("#fill_mask", "#answers"),
    "text-classification": ("#classify", "#classes"),
    "token-classification": ("#tag", "#tagged"),
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_demo(model_dir: str, port: int, title: str | None, deadline: float = 180) -> subprocess.Popen:
    """The demo's server, once it answers on `port`."""
    command = [sys.executable, "-m", "vanilla_transformer.scripts.demo", "--model_dir", model_dir, "--port", str(port)]
    process = subprocess.Popen(command + (["--title", title] if title else []), stdin=subprocess.DEVNULL,
                               env=dict(os.environ, GRADIO_ANALYTICS_ENABLED="False"))
    started = time.monotonic()
    while time.monotonic() - started < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2):
                return process
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise SystemExit(f"the demo did not start within {deadline} s (its output is above)")


def screenshot(url: str, task: str, text: str, output: Path, width: int) -> str:
    """Type `text`, click the page's button, wait for the answer (and a heatmap), save the page; the answer."""
    from playwright.sync_api import expect, sync_playwright

    button, answer = PAGES[task]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": width, "height": 700}, device_scale_factor=1)
        page.goto(url)
        page.locator("#source textarea").fill(text)
        page.locator(button).click()
        if task == "translation":
            expect(page.locator(answer)).not_to_have_value("", timeout=120_000)
            page.locator("#attention img").wait_for(timeout=120_000)
            page.wait_for_function("document.querySelector('#attention img').complete")
            shown = page.locator(answer).input_value()
        else:
            page.wait_for_function(f"document.querySelector('{answer}').innerText.includes('%')", timeout=120_000)
            shown = page.locator(answer).inner_text()
        page.wait_for_timeout(500)  # the last layout step after the answer
        output.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=output, full_page=True)
        browser.close()
    return shown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", required=True, help="a saved model folder the demo takes")
    parser.add_argument("--text", required=True, help="what to type into the page")
    parser.add_argument("--output", type=Path, default=Path("docs/figures/demo-translation.png"))
    parser.add_argument("--title", help="the page's heading (default: --model_dir)")
    parser.add_argument("--width", type=int, default=1100, help="the browser window's width in pixels")
    args = parser.parse_args(argv)
    if shutil.which("chromium") is None:
        raise SystemExit("no chromium on PATH: apt-get install -y chromium && pip install playwright")
    task = task_of(AutoConfig.from_pretrained(args.model_dir))
    port = free_port()
    server = start_demo(args.model_dir, port, args.title)
    try:
        shown = screenshot(f"http://127.0.0.1:{port}/", task, args.text, args.output, args.width)
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"{args.text!r} -> {shown!r}\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
