"""A run directory's record: ``metrics.jsonl`` (one JSON row per logged step), optional TensorBoard scalars, and
``loss.png``. On resume the rows logged after the checkpoint are dropped (they will be logged again)."""

from __future__ import annotations

import json
from pathlib import Path


def plot_curve(metrics_path: Path, out: Path, title: str, key: str = "loss") -> None:
    """``key`` against step from ``metrics.jsonl`` as a PNG (log scale)."""
    import matplotlib  # optional heavy dependency: only needed when a run draws its curve

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in Path(metrics_path).read_text().splitlines() if line.strip()]
    rows = [r for r in rows if isinstance(r.get(key), (int, float)) and r[key] == r[key]]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] for r in rows], [r[key] for r in rows], lw=1)
    if all(r[key] > 0 for r in rows):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(key)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def plot_series(metrics_path: Path, out: Path, title: str, keys: list[str]) -> None:
    """Each of ``keys`` against step, one panel per key (linear scale): e.g. a reward beside held-out quality."""
    import matplotlib  # optional heavy dependency: only needed when a run draws its curve

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in Path(metrics_path).read_text().splitlines() if line.strip()]
    series = {k: [(r["step"], r[k]) for r in rows if isinstance(r.get(k), (int, float)) and r[k] == r[k]] for k in keys}
    series = {k: v for k, v in series.items() if v}
    if not series:
        return
    fig, axes = plt.subplots(len(series), 1, figsize=(6, 2.2 * len(series)), sharex=True, squeeze=False)
    for ax, (k, pts) in zip(axes[:, 0], series.items()):
        ax.plot([s for s, _ in pts], [v for _, v in pts], lw=1, marker="." if len(pts) < 50 else None)
        ax.set_ylabel(k, fontsize=8)
        ax.grid(alpha=0.3)
    axes[0, 0].set_title(title)
    axes[-1, 0].set_xlabel("step")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


class RunLog:
    """``write(row)`` appends to ``<out>/metrics.jsonl`` (and TensorBoard); ``plot()`` redraws ``loss.png``.
    ``resume_step``: keep the rows up to that step (a resumed run); None: start a new file. ``enabled=False``
    (ranks other than 0) writes nothing."""

    def __init__(
        self,
        out: str | Path,
        resume_step: int | None = None,
        enabled: bool = True,
        tensorboard: bool = False,
        title: str = "training",
    ):
        self.out, self.enabled, self.title = Path(out), enabled, title
        self.path = self.out / "metrics.jsonl"
        self._file = self._writer = None
        if not enabled:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.path.unlink(missing_ok=True)
        elif self.path.is_file():
            kept = [
                ln for ln in self.path.read_text().splitlines() if ln and json.loads(ln).get("step", 0) <= resume_step
            ]
            self.path.write_text("".join(ln + "\n" for ln in kept))
        self._file = self.path.open("a")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter  # optional dependency: tensorboard
            except ImportError as e:
                raise RuntimeError(
                    f"tensorboard: true needs the tensorboard package ({e}); pip install tensorboard"
                ) from None
            self._writer = SummaryWriter(self.out / "tensorboard")

    def write(self, row: dict) -> None:
        """One row (it must have ``step``)."""
        if not self.enabled:
            return
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._writer is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self._writer.add_scalar(k, v, row["step"])

    def plot(self) -> None:
        if self.enabled and self.path.is_file():
            plot_curve(self.path, self.out / "loss.png", self.title)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._writer is not None:
            self._writer.close()
