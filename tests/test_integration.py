"""The real embedded model (SmolLM2-135M, 30 blocks) with small settings: the paper's claims hold."""

from __future__ import annotations

import json

import numpy as np
import pytest

from atp_viz.cli.main import main

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # the embedded model

SMALL = ["--calib-samples", "4", "--seqlen", "128", "--eval-windows", "4"]


@pytest.fixture(scope="module")
def errors(tmp_path_factory) -> dict:
    """Uniform vs ATP (beta 0.012) at S = 0.7 with Wanda, measured once for this module."""
    store = tmp_path_factory.mktemp("store") / "r.sqlite"
    argv = [
        "errors",
        "--model",
        "smollm2-135m",
        "--pruner",
        "wanda",
        "--sparsity",
        "0.7",
        "--beta",
        "0.012",
        *SMALL,
        "--store",
        str(store),
        "--json",
    ]
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(argv) == 0
    return {s["method"]: s for s in json.loads(out.getvalue())["schedules"]}


def test_atp_beats_uniform_at_70_percent(errors: dict) -> None:
    assert errors["atp"]["perplexity"] < errors["uniform"]["perplexity"]


def test_error_explodes_with_depth_and_atp_tames_it(errors: dict) -> None:
    uniform = np.asarray(errors["uniform"]["cumulative_error"])
    atp = np.asarray(errors["atp"]["cumulative_error"])
    assert len(uniform) == 30
    assert uniform[-1] > 3 * uniform[0]  # reconstruction error grows with depth
    assert atp[-1] < uniform[-1]  # ATP prunes early blocks less, so less error reaches the end
    assert atp[0] < uniform[0]


def test_prune_json_keys_on_the_embedded_model(capsys, tmp_path) -> None:
    code = main(
        [
            "prune",
            "--model",
            "smollm2-135m",
            "--method",
            "atp",
            "--sparsity",
            "0.5",
            "--beta",
            "0.01",
            "--pruner",
            "magnitude",
            *SMALL,
            "--store",
            str(tmp_path / "r.sqlite"),
            "--json",
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    # magnitude pruning at 50 % costs a 135M model much more than Wanda does, but stays finite
    assert out["dense_perplexity"] < out["perplexity"] < float("inf")
    assert np.allclose(out["layer_sparsity"], out["rates"], atol=1 / 576)
