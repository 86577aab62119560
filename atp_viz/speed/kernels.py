"""Inference speed and storage of a pruned model: dense kernels vs sparse ones, measured, not assumed.

- CPU: the pruned linears are swapped for ``SparseLinear`` holding the weight in a PyTorch sparse
  layout (``KERNELS``: CSR or COO), ``y = (W_sparse @ x^T)^T + b`` through ``torch.sparse.addmm``.
  Unstructured sparsity pays an index per non-zero, so whether it beats a dense GEMM depends on the
  sparsity, the shape and the CPU: ``crossover_sweep`` times one linear shape at rising sparsity.
- GPU: 2:4 semi-structured kernels (``torch.sparse.to_sparse_semi_structured``, cuSPARSELt/CUTLASS)
  on bf16/fp16 weights pruned 2:4; ``semi_structured_linear_speed`` and ``semi_structured_model``
  run only when CUDA is present (``cuda_unavailable_reason`` says why not).
- Storage: ``storage_bytes`` counts the bytes of the dense, sparse-bitmask (compressed-tensors) and
  CSR forms of the pruned linears.

Times are the fastest of ``repeats`` calls after ``warmup`` calls; these machines are shared and noisy,
so a speedup is a ratio measured in one run, never a constant.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from atp_viz.config import check_choice
from atp_viz.errors import first_line
from atp_viz.models.loading import find_blocks
from atp_viz.pruning.layer_stats import prunable_linears
from atp_viz.pruning.pruners import magnitude, prune_count

BITS_PER_BYTE = 8
INDEX_BYTES = 8  # torch sparse indices (CSR crow/col, COO) and bitmask row offsets are int64
SHAPE_BYTES = 2 * INDEX_BYTES  # the stored (rows, cols) of a bitmask weight
SEMI_STRUCTURED = (2, 4)  # the only N:M pattern the GPU sparse tensor cores run
SEMI_STRUCTURED_RATE = SEMI_STRUCTURED[0] / SEMI_STRUCTURED[1]  # pruners prune nothing at rate 0, N:M or not
SEMI_STRUCTURED_DTYPES = (torch.float16, torch.bfloat16)
SEMI_STRUCTURED_MIN_CAPABILITY = (8, 0)  # Ampere or newer
SWEEP_SPARSITIES = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
# LLaMA-2-7B block linears as (out_features, in_features): q, k, v, o; gate, up; down.
LLAMA2_7B_LINEARS = {"attn (q/k/v/o)": (4096, 4096), "mlp gate/up": (11008, 4096), "mlp down": (4096, 11008)}


# wall: elapsed time (what a user waits for on an idle machine); cpu: this process's CPU time, which
# other processes on a shared machine do not inflate (single-threaded runs: equal to wall when idle).
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


@dataclass(frozen=True)
class SpeedConfig:
    """Shapes and repetitions of one speed measurement."""

    prefill_tokens: int = 512  # prompt length of the prefill shape (batch 1)
    decode_context: int = 512  # KV-cache length before the one new token of the decode shape
    batch: int = 1  # sequences per forward
    repeats: int = 5  # timed calls; the fastest is reported
    warmup: int = 2  # untimed calls first (allocator, kernel selection)
    clock: str = "wall"  # "wall" or "cpu" (CLOCKS)

    def __post_init__(self) -> None:
        check_choice("clock", self.clock, tuple(CLOCKS))
        for name in ("prefill_tokens", "decode_context", "batch", "repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")


# --- sparse CPU kernels ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SparseKernel:
    """One way to store a pruned weight and multiply by it."""

    name: str
    label: str
    to_sparse: Callable[[torch.Tensor], torch.Tensor]  # dense (out, in) -> stored form


def _csr(weight: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)
        return weight.to_sparse_csr()


def _coo(weight: torch.Tensor) -> torch.Tensor:
    return weight.to_sparse_coo().coalesce()


KERNELS: dict[str, SparseKernel] = {
    "csr": SparseKernel("csr", "PyTorch CSR (torch.sparse.addmm)", _csr),
    "coo": SparseKernel("coo", "PyTorch COO (torch.sparse.addmm)", _coo),
}


class SparseLinear(nn.Module):
    """``nn.Linear`` with its weight in a PyTorch sparse layout: y = x W^T + b = (W x^T)^T + b."""

    def __init__(self, linear: nn.Linear, kernel: str = "csr") -> None:
        super().__init__()
        if kernel not in KERNELS:
            raise ValueError(f"unknown sparse kernel {kernel!r}; allowed: {', '.join(KERNELS)}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.kernel = kernel
        self.weight_sparse = KERNELS[kernel].to_sparse(linear.weight.detach())  # (out, in)
        bias = linear.bias.detach() if linear.bias is not None else torch.zeros(self.out_features)
        self.bias_column = bias.to(linear.weight.dtype).reshape(-1, 1)  # (out, 1), broadcast over tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.reshape(-1, self.in_features)  # (T, in)
        y = torch.sparse.addmm(self.bias_column, self.weight_sparse, tokens.t())  # (out, T)
        return y.t().reshape(*x.shape[:-1], self.out_features)


@contextlib.contextmanager
def sparse_linears(blocks: Iterable[nn.Module], kernel: str = "csr") -> Iterator[int]:
    """Swap every linear of ``blocks`` for a ``SparseLinear`` inside the context; restored in ``finally``.

    Yields the number of linears swapped.
    """
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    try:
        for block in blocks:
            for name, linear in prunable_linears(block).items():
                parent_name, _, child = name.rpartition(".")
                parent = block.get_submodule(parent_name) if parent_name else block
                setattr(parent, child, SparseLinear(linear, kernel))
                swapped.append((parent, child, linear))
        yield len(swapped)
    finally:
        for parent, child, original in reversed(swapped):
            setattr(parent, child, original)


# --- pruning for the benchmark (magnitude: no calibration needed) ---------------------------------


@torch.no_grad()
def magnitude_prune_(
    blocks: Iterable[nn.Module], rates: float | Sequence[float], nm: tuple[int, int] | None = None
) -> None:
    """Zero the lowest-|W| weights of each row of every block linear (rate per block). With ``nm`` the
    N:M pattern replaces the rate, but a rate of 0 still prunes nothing (``pruners.row_prune_mask``)."""
    blocks = list(blocks)
    per_block = [float(rates)] * len(blocks) if isinstance(rates, (int, float)) else [float(r) for r in rates]
    if len(per_block) != len(blocks):
        raise ValueError(f"need one rate per block ({len(blocks)}), got {len(per_block)}")
    for block, rate in zip(blocks, per_block):
        for linear in prunable_linears(block).values():
            linear.weight[magnitude(linear.weight, rate, nm)] = 0


# --- timing ---------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_seconds(
    fn: Callable[[], object], repeats: int, warmup: int, device: torch.device, clock: str = "wall"
) -> float:
    """Fastest time of ``fn()`` on ``clock`` over ``repeats`` calls after ``warmup`` untimed ones: on a
    shared machine the fastest call is the one least disturbed by other processes (``timeit``'s choice)."""
    check_choice("clock", clock, tuple(CLOCKS))
    if clock == "cpu" and device.type != "cpu":
        raise ValueError(f"clock 'cpu' measures host CPU time and cannot time work on {device}; use clock 'wall'")
    now = CLOCKS[clock]
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = now()
        fn()
        _sync(device)
        times.append(now() - start)
    return min(times)


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def forward_times(model: nn.Module, config: SpeedConfig, vocab: int, seed: int = 0) -> dict[str, float]:
    """Seconds of one prefill forward (batch x prefill_tokens) and of one decode step (1 new token
    per sequence after a KV cache of decode_context tokens), fastest of ``config.repeats``."""
    device = _model_device(model)
    generator = torch.Generator().manual_seed(seed)
    prompt = torch.randint(vocab, (config.batch, config.prefill_tokens), generator=generator).to(device)
    context = torch.randint(vocab, (config.batch, config.decode_context + 1), generator=generator).to(device)
    prefill_s = best_seconds(
        lambda: model(prompt, use_cache=False), config.repeats, config.warmup, device, config.clock
    )
    cache = model(context[:, :-1], use_cache=True).past_key_values
    step = context[:, -1:]

    def decode() -> None:
        model(step, past_key_values=cache, use_cache=True)
        cache.crop(-1)  # drop the new token: every timed step sees the same cache length

    decode_s = best_seconds(decode, config.repeats, config.warmup, device, config.clock)
    return {"prefill_s": prefill_s, "decode_s": decode_s}


def tokens_per_second(times: dict[str, float], config: SpeedConfig) -> dict[str, float]:
    return {
        "prefill_tok_s": config.batch * config.prefill_tokens / times["prefill_s"],
        "decode_tok_s": config.batch / times["decode_s"],
    }


def measure_speed(
    model: nn.Module, blocks: Iterable[nn.Module], kernel: str, config: SpeedConfig, vocab: int
) -> dict[str, float]:
    """Dense vs sparse-kernel forward of an (already pruned) model at the prefill and decode shapes.

    Returns seconds, tokens/s and speedups (dense time / sparse time; > 1 means the sparse kernel is
    faster). The dense run uses the same pruned weights, so only the kernel differs.
    """
    dense = forward_times(model, config, vocab)
    with sparse_linears(blocks, kernel):
        sparse = forward_times(model, config, vocab)
    out = {f"dense_{k}": v for k, v in {**dense, **tokens_per_second(dense, config)}.items()}
    out.update({f"sparse_{k}": v for k, v in {**sparse, **tokens_per_second(sparse, config)}.items()})
    out["prefill_speedup"] = dense["prefill_s"] / sparse["prefill_s"]
    out["decode_speedup"] = dense["decode_s"] / sparse["decode_s"]
    return out


@torch.inference_mode()
def linear_speed(
    weight: torch.Tensor,
    tokens: int,
    kernel: str,
    repeats: int = 5,
    warmup: int = 2,
    seed: int = 0,
    clock: str = "wall",
) -> dict[str, float]:
    """One pruned linear: dense ``F.linear`` vs ``SparseLinear`` on ``tokens`` input rows."""
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False, dtype=weight.dtype, device=weight.device)
    linear.weight.copy_(weight)
    sparse = SparseLinear(linear, kernel)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, weight.shape[1], generator=generator, dtype=weight.dtype).to(weight.device)
    dense_s = best_seconds(lambda: F.linear(x, weight), repeats, warmup, weight.device, clock)
    sparse_s = best_seconds(lambda: sparse(x), repeats, warmup, weight.device, clock)
    return {"dense_s": dense_s, "sparse_s": sparse_s, "speedup": dense_s / sparse_s}


def crossover_sweep(
    shape: tuple[int, int],
    tokens: int,
    kernel: str = "csr",
    sparsities: Sequence[float] = SWEEP_SPARSITIES,
    repeats: int = 5,
    seed: int = 0,
    clock: str = "wall",
) -> dict[str, object]:
    """Per-linear speedup of ``kernel`` over dense at each sparsity (random weight, magnitude-pruned
    per row) and the crossover: the lowest swept sparsity from which every higher one is faster
    (None when the sparse kernel never wins in the sweep)."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=generator)
    rows = []
    for sparsity in sparsities:
        weight = base.masked_fill(magnitude(base, sparsity), 0.0)
        rows.append({"sparsity": sparsity, **linear_speed(weight, tokens, kernel, repeats, seed=seed, clock=clock)})
    crossover = None
    for row in reversed(rows):
        if row["speedup"] <= 1.0:
            break
        crossover = row["sparsity"]
    return {
        "shape": list(shape),
        "tokens": tokens,
        "kernel": kernel,
        "clock": clock,
        "rows": rows,
        "crossover": crossover,
    }


# --- storage --------------------------------------------------------------------------------------


def weight_storage(rows: int, cols: int, nnz: int, element_bytes: int) -> dict[str, int]:
    """Bytes of one (rows x cols) weight with ``nnz`` non-zeros stored three ways:
    dense = rows*cols*e; bitmask = nnz*e + rows*ceil(cols/8) + rows*8 (row offsets) + 16 (shape);
    CSR = nnz*e + nnz*8 (column indices) + (rows+1)*8 (row pointers)."""
    return {
        "dense": rows * cols * element_bytes,
        "bitmask": nnz * element_bytes + rows * math.ceil(cols / BITS_PER_BYTE) + rows * INDEX_BYTES + SHAPE_BYTES,
        "csr": nnz * element_bytes + nnz * INDEX_BYTES + (rows + 1) * INDEX_BYTES,
    }


def storage_bytes(model: nn.Module | Iterable[nn.Module]) -> dict[str, int]:
    """Bytes of the decoder-block linears' weights dense, as sparse-bitmask and as CSR, with the counts
    (``numel``, ``nnz``). ``model`` is a causal LM (its blocks are found) or the blocks themselves.
    Everything outside the blocks (embeddings, norms, head) is not counted."""
    blocks = find_blocks(model) if isinstance(model, nn.Module) and not isinstance(model, nn.ModuleList) else model
    total = {"dense": 0, "bitmask": 0, "csr": 0, "numel": 0, "nnz": 0}
    for block in blocks:
        for linear in prunable_linears(block).values():
            weight = linear.weight
            nnz = int(torch.count_nonzero(weight))
            for key, value in weight_storage(weight.shape[0], weight.shape[1], nnz, weight.element_size()).items():
                total[key] += value
            total["numel"] += weight.numel()
            total["nnz"] += nnz
    return total


def schedule_storage_bytes(
    shapes: Sequence[Sequence[tuple[int, int]]], rates: Sequence[float], element_bytes: int
) -> dict[str, int]:
    """``storage_bytes`` predicted for a schedule before pruning: ``shapes[i]`` are block i's linear
    (out, in) shapes and each row keeps cols - floor(cols * rate_i) weights (per-row pruning)."""
    if len(shapes) != len(rates):
        raise ValueError(f"need one rate per block ({len(shapes)}), got {len(rates)}")
    total = {"dense": 0, "bitmask": 0, "csr": 0, "numel": 0, "nnz": 0}
    for block_shapes, rate in zip(shapes, rates):
        for rows, cols in block_shapes:
            nnz = rows * (cols - prune_count(cols, float(rate)))
            for key, value in weight_storage(rows, cols, nnz, element_bytes).items():
                total[key] += value
            total["numel"] += rows * cols
            total["nnz"] += nnz
    return total


# --- GPU: 2:4 semi-structured ---------------------------------------------------------------------


def cuda_unavailable_reason(dtype: torch.dtype = torch.bfloat16) -> str | None:
    """Why the 2:4 semi-structured GPU path cannot run here (None when it can)."""
    if dtype not in SEMI_STRUCTURED_DTYPES:
        return f"2:4 semi-structured kernels take float16 or bfloat16 weights, not {dtype}"
    if not torch.cuda.is_available():
        return "no CUDA GPU: 2:4 semi-structured (sparse tensor core) kernels need one; run --gpu on a GPU machine"
    if torch.cuda.get_device_capability() < SEMI_STRUCTURED_MIN_CAPABILITY:
        return f"GPU {torch.cuda.get_device_name()} has no sparse tensor cores (compute capability < 8.0)"
    return None


def _require_cuda(dtype: torch.dtype) -> None:
    reason = cuda_unavailable_reason(dtype)
    if reason:
        raise RuntimeError(reason)


@torch.inference_mode()
def semi_structured_linear_speed(
    shapes: dict[str, tuple[int, int]],
    tokens: Sequence[int],
    dtype: torch.dtype = torch.bfloat16,
    repeats: int = 20,
    warmup: int = 5,
    seed: int = 0,
) -> list[dict[str, object]]:
    """Per-linear dense vs 2:4 semi-structured ``F.linear`` time on the GPU, for each shape and token count."""
    from torch.sparse import to_sparse_semi_structured

    _require_cuda(dtype)
    device = torch.device("cuda")
    generator = torch.Generator(device=device).manual_seed(seed)
    rows: list[dict[str, object]] = []
    for name, (out_f, in_f) in shapes.items():
        weight = torch.randn(out_f, in_f, generator=generator, device=device, dtype=dtype)
        weight.masked_fill_(magnitude(weight, SEMI_STRUCTURED_RATE, SEMI_STRUCTURED), 0.0)
        sparse = to_sparse_semi_structured(weight)
        for count in tokens:
            x = torch.randn(count, in_f, generator=generator, device=device, dtype=dtype)
            row: dict[str, object] = {"linear": name, "shape": [out_f, in_f], "tokens": count}
            rows.append({**row, **_dense_vs(x, weight, sparse, repeats, warmup)})
    return rows


def _dense_vs(
    x: torch.Tensor, weight: torch.Tensor, sparse: torch.Tensor, repeats: int, warmup: int
) -> dict[str, object]:
    """Fastest ``F.linear`` time with the dense and the sparse weight; a kernel refusal is reported."""
    dense_s = best_seconds(lambda: F.linear(x, weight), repeats, warmup, x.device)
    try:
        sparse_s = best_seconds(lambda: F.linear(x, sparse), repeats, warmup, x.device)
    except (RuntimeError, NotImplementedError) as exc:
        return {"dense_s": dense_s, "error": first_line(exc)}
    return {"dense_s": dense_s, "sparse_s": sparse_s, "speedup": dense_s / sparse_s}


@torch.no_grad()
def semi_structured_model(blocks: Iterable[nn.Module]) -> int:
    """Replace every block linear's (2:4-pruned, fp16/bf16, CUDA) weight by its semi-structured form."""
    from torch.sparse import to_sparse_semi_structured

    count = 0
    for block in blocks:
        for linear in prunable_linears(block).values():
            _require_cuda(linear.weight.dtype)
            linear.weight = nn.Parameter(to_sparse_semi_structured(linear.weight), requires_grad=False)
            count += 1
    return count
