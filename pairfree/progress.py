"""One progress display for every training loop: a tqdm bar on a terminal, and a plain line every ``every``
seconds when stderr is redirected to a file (a bar redrawn per step would write megabytes of ``\\r`` frames into
a log)."""

from __future__ import annotations

import sys
import time

from tqdm import tqdm


class Progress:
    """``update(n)``, ``set_postfix(dict)``, ``close()`` — tqdm's interface, on a terminal or in a log."""

    def __init__(
        self, total: int, initial: int = 0, desc: str = "", disable: bool = False, every: float = 30.0, file=None
    ):
        self.file = file if file is not None else sys.stderr
        self.total, self.n, self.desc, self.every, self.disable = total, initial, desc, every, disable
        self.tty = hasattr(self.file, "isatty") and self.file.isatty()
        self.bar = (
            tqdm(total=total, initial=initial, desc=desc, disable=disable, dynamic_ncols=True, mininterval=1.0)
            if self.tty
            else None
        )
        self.postfix: dict = {}
        self.t0 = self.last = time.time()
        self.start = initial

    def update(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)
            return
        self.n += n
        now = time.time()
        if not self.disable and (now - self.last >= self.every or self.n >= self.total):
            self.last = now
            self.file.write(self.line(now) + "\n")
            self.file.flush()

    def line(self, now: float) -> str:
        """``desc: 120/1000 (12%) 2.31 it/s, ETA 6m21s | loss=0.0812``."""
        rate = (self.n - self.start) / max(now - self.t0, 1e-9)
        eta = (self.total - self.n) / rate if rate > 0 else float("inf")
        when = f"{int(eta // 60)}m{int(eta % 60):02d}s" if eta != float("inf") else "?"
        post = " ".join(f"{k}={v}" for k, v in self.postfix.items())
        pct = 100 * self.n / max(self.total, 1)
        return f"{self.desc}: {self.n}/{self.total} ({pct:.0f}%) {rate:.2f} it/s, ETA {when}" + (
            f" | {post}" if post else ""
        )

    def set_postfix(self, values: dict | None = None, **kw) -> None:
        values = {**(values or {}), **kw}
        if self.bar is not None:
            self.bar.set_postfix(values)
        else:
            self.postfix = values

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
