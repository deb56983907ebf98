"""What every kernel file shares: the optional Triton import and the tile sizes, chosen in one place.

``triton`` / ``tl`` are None where Triton is not installed (macOS, CPU-only wheels); the other backends still run.
Under ``TRITON_INTERPRET=1`` (CPU tests) tiles are small, so the interpreter's Python loops stay short.
"""

from __future__ import annotations

from pairfree.kernels import dispatch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - no triton: the other backends still work
    triton = tl = None


def next_power_of_2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def row_block(d: int, low: int = 16, high: int = 1 << 16) -> int:
    """One program per row of length ``d``: the whole row in one tile (a power of two in [low, high])."""
    return min(high, max(low, next_power_of_2(d)))


def elementwise_block(n: int | None = None) -> int:
    """Tile of an elementwise kernel over ``n`` values (64–256 under the interpreter, up to 4096 on a GPU)."""
    if dispatch.triton_interpreter():
        return 64 if n is not None else 256
    return 2048 if n is None else min(4096, row_block(n))


def num_warps(block: int) -> int:
    """Warps for a one-row tile of ``block`` elements: one per 256, between 1 and 16."""
    return min(16, max(1, block // 256))
