"""The callbacks long jobs report through: one type each for a fraction, a count and a status line."""

from __future__ import annotations

from collections.abc import Callable

# (fraction of the whole job done in [0, 1], what is happening now): what callers pass to long jobs
Progress = Callable[[float, str], None]
# (items done, items in all) of one loop: windows measured, blocks pruned, zero-shot requests scored
Counter = Callable[[int, int], None]
# one line saying which step runs now (loading a model: reading, converting, caching)
Status = Callable[[str], None]


def scaled(progress: Progress | None, start: float, width: float) -> Progress | None:
    """A progress callback for a sub-task occupying [start, start + width] of the whole job."""
    if progress is None:
        return None
    return lambda fraction, message: progress(start + width * min(max(fraction, 0.0), 1.0), message)


def counted(progress: Progress | None, what: str, start: float = 0.0, width: float = 1.0) -> Counter | None:
    """Adapt a (done, total) counter of blocks or windows to ``progress`` over [start, start + width]."""
    sub = scaled(progress, start, width)
    return (lambda done, total: sub(done / total, f"{what} {done}/{total}")) if sub else None


def labelled(progress: Progress | None, label: str) -> Progress | None:
    """``progress`` with every message prefixed by ``label``."""
    if progress is None:
        return None
    return lambda fraction, message: progress(fraction, f"{label}: {message}")
