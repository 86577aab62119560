"""Speed module: sparse wrappers compute what dense linears compute, storage counts are exact, the
benchmark runs; no timing is asserted (shared machines are noisy)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from tiny import shared_tiny_model

from atp_viz.models.loading import load_model
from atp_viz.pruning.layer_stats import prunable_linears
from atp_viz.speed import kernels

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-5
SPARSITY = 0.7


@pytest.mark.parametrize("kernel", list(kernels.KERNELS))
def test_sparse_linear_matches_dense(kernel: str) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(48, 40)
    with torch.no_grad():
        linear.weight.masked_fill_(torch.rand_like(linear.weight) < SPARSITY, 0)
    x = torch.randn(2, 7, 48)  # (B, T, in)
    sparse = kernels.SparseLinear(linear, kernel)
    assert sparse.weight_sparse.layout != torch.strided
    torch.testing.assert_close(sparse(x), F.linear(x, linear.weight, linear.bias), atol=TOL, rtol=TOL)


def test_sparse_linears_swap_and_restore_a_model() -> None:
    loaded = load_model(str(shared_tiny_model()))
    kernels.magnitude_prune_(loaded.blocks, SPARSITY)
    originals = [dict(prunable_linears(block)) for block in loaded.blocks]
    ids = torch.arange(5, 37).reshape(1, 32)
    with torch.no_grad():
        dense = loaded.model(ids).logits
        with kernels.sparse_linears(loaded.blocks, "csr") as swapped:
            assert swapped == sum(len(o) for o in originals)
            assert not prunable_linears(loaded.blocks[0])  # every linear is a SparseLinear now
            sparse = loaded.model(ids).logits
    torch.testing.assert_close(sparse, dense, atol=TOL, rtol=TOL)
    assert [dict(prunable_linears(block)) for block in loaded.blocks] == originals


def test_magnitude_prune_reaches_the_rate_and_two_four() -> None:
    loaded = load_model(str(shared_tiny_model()))
    kernels.magnitude_prune_(loaded.blocks, [0.25, 0.5, 0.75, 0.5])
    for rate, block in zip([0.25, 0.5, 0.75, 0.5], loaded.blocks):
        for linear in prunable_linears(block).values():
            assert (linear.weight == 0).float().mean().item() == pytest.approx(rate)
    kernels.magnitude_prune_(loaded.blocks, kernels.SEMI_STRUCTURED_RATE, kernels.SEMI_STRUCTURED)
    weight = prunable_linears(loaded.blocks[0])["mlp.up_proj"].weight
    assert ((weight != 0).reshape(-1, 4).sum(dim=1) <= 2).all()
    with pytest.raises(ValueError, match="one rate per block"):
        kernels.magnitude_prune_(loaded.blocks, [0.5])


def test_storage_bytes_of_a_known_matrix() -> None:
    linear = nn.Linear(20, 3, bias=False)  # 3 rows x 20 cols, fp32
    with torch.no_grad():
        linear.weight.zero_()
        linear.weight[0, :5] = 1.0  # 5 + 0 + 2 = 7 non-zeros
        linear.weight[2, [3, 19]] = 2.0
    block = nn.Sequential(linear)
    got = kernels.storage_bytes([block])
    assert got == {
        "dense": 3 * 20 * 4,
        "bitmask": 7 * 4 + 3 * math.ceil(20 / 8) + 3 * 8 + 16,  # values, packed mask, row offsets, shape
        "csr": 7 * 4 + 7 * 8 + (3 + 1) * 8,  # values, column indices, row pointers
        "numel": 60,
        "nnz": 7,
    }
    # the bitmask count is what export.bitmask_compress actually stores
    from atp_viz.speed.export import bitmask_compress

    parts = bitmask_compress(linear.weight.detach())
    assert sum(t.numel() * t.element_size() for t in parts.values()) == got["bitmask"]


def test_schedule_storage_matches_pruned_model() -> None:
    loaded = load_model(str(shared_tiny_model()))
    rates = [0.3, 0.5, 0.6, 0.8]
    shapes = [[(lin.out_features, lin.in_features) for lin in prunable_linears(b).values()] for b in loaded.blocks]
    predicted = kernels.schedule_storage_bytes(shapes, rates, element_bytes=4)
    kernels.magnitude_prune_(loaded.blocks, rates)
    assert predicted == kernels.storage_bytes(loaded.blocks) == kernels.storage_bytes(loaded.model)


def test_crossover_sweep_reports_every_point() -> None:
    sweep = kernels.crossover_sweep((16, 32), tokens=4, kernel="csr", sparsities=(0.5, 0.9), repeats=1)
    rows = sweep["rows"]
    assert isinstance(rows, list) and [row["sparsity"] for row in rows] == [0.5, 0.9]
    assert all(row["dense_s"] > 0 and row["sparse_s"] > 0 for row in rows)
    assert sweep["crossover"] in (None, 0.5, 0.9)


def test_clock_choices_are_validated() -> None:
    with pytest.raises(ValueError, match="allowed: wall, cpu"):
        kernels.SpeedConfig(clock="gpu")
    with pytest.raises(ValueError, match="use clock 'wall'"):
        kernels.best_seconds(lambda: None, repeats=1, warmup=0, device=torch.device("cuda"), clock="cpu")


def test_best_seconds_is_the_fastest_timed_call_after_the_warmup(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fake clock: the warm-up calls are not timed, each timed call reads the clock twice, the fastest wins."""
    ticks = iter([0.0, 5.0, 10.0, 12.0, 20.0, 23.0])  # timed calls of 5, 2 and 3 "seconds"
    monkeypatch.setitem(kernels.CLOCKS, "cpu", lambda: next(ticks))
    calls: list[int] = []
    best = kernels.best_seconds(lambda: calls.append(1), repeats=3, warmup=2, device=torch.device("cpu"), clock="cpu")
    assert best == 2.0 and len(calls) == 5


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without a GPU")
def test_gpu_path_says_why_it_cannot_run_on_cpu() -> None:
    reason = kernels.cuda_unavailable_reason()
    assert reason is not None and "no CUDA GPU" in reason
    assert "float16 or bfloat16" in (kernels.cuda_unavailable_reason(torch.float32) or "")
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        kernels.semi_structured_linear_speed({"tiny": (8, 8)}, [1])
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "inference.py"), "--gpu"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 2 and "no CUDA GPU" in done.stderr


@pytest.mark.slow
def test_inference_bench_tiny_runs(tmp_path: Path) -> None:
    out = tmp_path / "inference.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "inference.py"), "--tiny", "--out", str(out)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    import json

    report = json.loads(out.read_text())
    assert set(report["patterns"]) == {"uniform 0.5", "uniform 0.7", "2:4"}
    assert report["patterns"]["uniform 0.7"]["storage"]["nnz"] < report["dense_storage"]["nnz"]
    assert len(report["linear_sweeps"]) == len(kernels.KERNELS) * 2
