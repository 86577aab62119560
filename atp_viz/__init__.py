"""atp-viz: see and tune layer-wise sparsity of large language models.

Implements ATP (arXiv 2502.14770): per-block sparsity rising with depth as an arithmetic progression
whose mean is the target, beside uniform, OWL and AlphaPruning schedules and the magnitude, Wanda and
SparseGPT pruners.
"""

__version__ = "0.1.0"
