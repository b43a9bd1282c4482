"""The training log: one JSON object per line (`log.jsonl`: every logged step and evaluation), and its plot."""

import json
from pathlib import Path


class JsonLinesLog:
    """One JSON object per line: every logged step and evaluation. Written by the main process."""

    def __init__(self, path: str | Path, enabled: bool):
        self.path = Path(path)
        self.enabled = enabled

    def start(self, resumed_at_step: int | None) -> None:
        """A fresh run empties the log; a resumed one drops what the interrupted run logged after its checkpoint."""
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = [r for r in self.records() if resumed_at_step is not None and r["step"] <= resumed_at_step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def write(self, record: dict) -> None:
        if self.enabled:
            with self.path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")

    def records(self) -> list[dict]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


def plot_log(log_path: str | Path, png_path: str | Path) -> Path:
    """Loss curves (training and validation), the validation metrics and the learning rate, against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = JsonLinesLog(log_path, enabled=False).records()

    def series(key):
        points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
        return [p[0] for p in points], [p[1] for p in points]

    keys = sorted({k for r in records for k, v in r.items() if isinstance(v, (int, float))})
    panels = [
        ("loss", [k for k in keys if k.endswith("loss")]),
        ("validation metrics", [k for k in keys if k.startswith("val_") and not k.endswith("loss")]),
        ("learning rate", ["lr"] if "lr" in keys else []),
    ]
    panels = [(title, names) for title, names in panels if names]
    figure, axes = plt.subplots(1, max(len(panels), 1), figsize=(5 * max(len(panels), 1), 3.8), squeeze=False)
    for axis, (title, names) in zip(axes[0], panels):
        for name in names:
            steps, values = series(name)
            axis.plot(steps, values, marker="o" if len(steps) < 30 else None, label=name)
        axis.set_title(title)
        axis.set_xlabel("step")
        axis.legend()
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(png_path, dpi=100)
    plt.close(figure)
    return Path(png_path)
