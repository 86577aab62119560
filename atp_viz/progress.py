"""The callbacks long jobs report through: one type each for a fraction, a count and a status line."""

from __future__ import annotations

from collections.abc import Callable

# (fraction of the whole job done in [0, 1], what is happening now): what callers pass to long jobs
Progress = Callable[[float, str], None]
# (items done, items in all) of one loop: windows measured, blocks pruned, zero-shot requests scored
Counter = Callable[[int, int], None]
# one line saying which step runs now (loading a model: reading, converting, caching)
Status = Callable[[str], None]
