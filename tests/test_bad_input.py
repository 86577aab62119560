"""Bad input through the CLI and the Python API: one line naming the allowed range, nothing written.

CLI cases run ``atp_viz.cli.main.main`` in-process (argument parsing and validation are the same code a
real process runs) against a tiny 4-block model; each gets a fresh store path that must stay absent.
"""

from __future__ import annotations

import math
import shlex
import string
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability import record, run_main
from tiny import make_bad_inputs, make_corpus_file, make_tiny_model

from atp_viz.config import CalibConfig, EvalConfig, parse_nm
from atp_viz.experiment.workbench import Setup, Workbench
from atp_viz.models.data import CorpusError
from atp_viz.models.loading import ModelLoadError
from atp_viz.pruning.pruners import PruneConfig
from atp_viz.schedules import published
from atp_viz.schedules.methods import ScheduleSpec, build_schedule
from atp_viz.store import ResultStore

HYPOTHESIS = settings(
    max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad_input")
    return {
        "model": make_tiny_model(root / "tiny4"),
        "corpus": make_corpus_file(root / "corpus.txt"),
        **make_bad_inputs(root),
        "root": root,
    }


SETUP = "--model {model} --corpus {corpus} --calib-samples 4 --seqlen 32 --eval-windows 4"
PRUNE = "prune " + SETUP + " --method uniform --sparsity 0.5"
# (what is wrong, command line, a piece of the one-line message naming what is allowed)
CLI_CASES = [
    ("S = 0", "schedule --layers 8 --method uniform --sparsity 0", "(0, 1)"),
    ("S = 1", "schedule --layers 8 --method uniform --sparsity 1", "(0, 1)"),
    ("S negative", "schedule --layers 8 --method uniform --sparsity -0.5", "(0, 1)"),
    ("S = nan", "schedule --layers 8 --method uniform --sparsity nan", "(0, 1)"),
    ("S = inf", "schedule --layers 8 --method uniform --sparsity inf", "(0, 1)"),
    ("S not a number", "schedule --layers 8 --method uniform --sparsity abc", "invalid float"),
    ("sweep S = 1.5", "sweep " + SETUP + " --sparsity 1.5", "(0, 1)"),
    ("compare S = 1.2 in a list", "compare " + SETUP + " --sparsities 0.5,1.2", "(0, 1)"),
    ("beta negative", "schedule --layers 8 --sparsity 0.5 --beta -0.1", "in [0, beta_max = min(2S, 2(1-S))/(L-1)]"),
    ("beta = nan", "schedule --layers 8 --sparsity 0.5 --beta nan", "in [0, beta_max = min(2S, 2(1-S))/(L-1)]"),
    ("beta = inf", "schedule --layers 8 --sparsity 0.5 --beta inf", "in [0, beta_max = min(2S, 2(1-S))/(L-1)]"),
    ("beta above beta_max", "schedule --layers 8 --sparsity 0.5 --beta 0.5", "[0, 0.1429]"),
    ("beta above beta_max (prune, model's L)", PRUNE.replace("uniform", "atp") + " --beta 0.9", "[0, 0.3333]"),
    ("num_layers = 1, beta > 0", "schedule --layers 1 --sparsity 0.5 --beta 0.1", "[0, 0]"),
    ("num_layers = 2, beta above 1", "schedule --layers 2 --sparsity 0.5 --beta 1.1", "[0, 1]"),
    ("num_layers = 0", "schedule --layers 0 --sparsity 0.5 --beta 0", ">= 1"),
    ("num_layers negative", "schedule --layers -3 --method uniform --sparsity 0.5", ">= 1"),
    ("custom schedule too short", "schedule --layers 4 --method custom --rates 0.1,0.2", "4 rates"),
    (
        "custom schedule too long (model)",
        PRUNE.replace("uniform", "custom") + " --rates 0.1,0.2,0.3,0.4,0.5",
        "4 rates",
    ),
    ("custom rate above 1", "schedule --layers 2 --method custom --rates 0.1,1.2", "[0, 1]"),
    ("custom rate negative", "schedule --layers 2 --method custom --rates=-0.1,0.2", "[0, 1]"),
    ("custom rate nan", "schedule --layers 2 --method custom --rates 0.1,nan", "finite"),
    ("custom schedule without rates", "schedule --layers 2 --method custom", "[0, 1]"),
    ("N:M with N = M", PRUNE + " --nm 4:4", "0 < N < M"),
    ("N:M with N > M", PRUNE + " --nm 5:4", "0 < N < M"),
    ("N:M with N = 0", PRUNE + " --nm 0:4", "0 < N < M"),
    ("N:M malformed", PRUNE + " --nm 2:4:8", "'2:4'"),
    ("calibration samples = 0", PRUNE + " --calib-samples 0", ">= 1"),
    ("calibration samples negative", PRUNE + " --calib-samples -1", ">= 1"),
    ("calibration samples beyond the corpus", PRUNE + " --calib-samples 100000", "allowed: 1.."),
    ("evaluation windows negative", PRUNE + " --eval-windows -1", ">= 0"),
    ("evaluation windows beyond the corpus", PRUNE + " --eval-windows 100000", "allowed: 1.."),
    ("seqlen = 0", PRUNE + " --seqlen 0", ">= 2"),
    ("seqlen above the model's context", PRUNE + " --seqlen 600", "allowed: 2..512"),
    ("eval seqlen above the model's context", PRUNE + " --eval-seqlen 100000", "allowed: 2..512"),
    ("batch size = 0", PRUNE + " --batch-size 0", ">= 1"),
    ("seed negative", PRUNE + " --seed -1", ">= 0"),
    ("sweep step = 0", "sweep " + SETUP + " --sparsity 0.5 --step 0", "(0, 1)"),
    ("sweep step = nan", "sweep " + SETUP + " --sparsity 0.5 --step nan", "(0, 1)"),
    ("unknown compare method", "compare " + SETUP + " --methods foo", "allowed: uniform"),
    ("compare power p out of range", "compare " + SETUP + " --methods power --power 50", "must be in [0.1, 10]"),
    ("compare: a parameter, no sparsity", "compare " + SETUP + " --power 0.5 --sparsities ''", "choose at least"),
    ("unknown device", PRUNE + " --device tpu", "allowed: cpu"),
    ("empty corpus file", PRUNE.replace("{corpus}", "{empty}"), "at least 6"),
    ("corpus file of blank lines", PRUNE.replace("{corpus}", "{blank}"), "at least 6"),
    (
        "OWL lambda above 1 (refused before the store)",
        PRUNE.replace("uniform", "owl") + " --lam 3",
        "owl lam must be in [0, 1]",
    ),
    (
        "AlphaPruning estimator unknown",
        PRUNE.replace("uniform", "alphapruning") + " --estimator best",
        "invalid choice",
    ),
    ("validation windows negative", PRUNE + " --val-windows -1", ">= 0"),
    ("validation windows beyond the corpus", PRUNE + " --val-windows 100000", "allowed: 1.."),
    ("unknown metric", PRUNE + " --metrics ppl", "allowed: perplexity"),
    ("binary corpus file", PRUNE.replace("{corpus}", "{binary}"), "UTF-8"),
    ("corpus file not UTF-8", PRUNE.replace("{corpus}", "{latin1}"), "UTF-8"),
    ("corpus of an unknown kind", PRUNE.replace("{corpus}", "notes.docx"), "allowed:"),
    ("model folder without weights", PRUNE.replace("{model}", "{no-weights}"), "*.safetensors"),
    ("model path that does not exist", PRUNE.replace("{model}", "/nonexistent/model"), "a local Hugging Face folder"),
    ("non-causal model (BERT)", PRUNE.replace("{model}", "{bert}"), "causal"),
]


@pytest.mark.parametrize("what, line, allowed", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input(files, tmp_path: Path, what: str, line: str, allowed: str) -> None:
    store = tmp_path / "store" / "results.sqlite"
    save = tmp_path / "export"
    argv = shlex.split(line.format(**{k: str(v) for k, v in files.items()}))
    if argv[0] in ("prune", "sweep", "compare", "errors"):
        argv += ["--store", str(store)]
    if argv[0] == "prune":
        argv += ["--save", str(save)]
    code, stdout, stderr = run_main(argv)
    errors = [ln for ln in stderr.splitlines() if "error:" in ln]
    assert code == 2, stderr
    assert "Traceback" not in stderr and stdout == ""
    assert len(errors) == 1 and stderr.rstrip().endswith(errors[0]), stderr  # one line, the last one
    assert allowed in errors[0], errors[0]
    written = [p for p in (store.parent, save) if p.exists()]
    assert written == []  # no store opened, no export folder
    record("bad input", f"CLI: {what}", 1, len(written), f"exit 2: `{errors[0].split('error: ', 1)[1][:110]}`")


def test_cli_edge_layers_accepted() -> None:
    """L = 1 admits only beta = 0; L = 2 admits beta up to min(2S, 2(1-S)) = 1 at S = 0.5."""
    code, out, _ = run_main(["schedule", "--layers", "1", "--sparsity", "0.5", "--beta", "0", "--json"])
    assert code == 0 and '"rates": [0.5]' in out and '"beta_max": 0.0' in out
    code, out, _ = run_main(["schedule", "--layers", "2", "--sparsity", "0.5", "--beta", "1", "--json"])
    assert code == 0 and '"rates": [0.0, 1.0]' in out
    record(
        "bad input",
        "CLI: num_layers = 1 and 2 at their limits (accepted)",
        2,
        0,
        "exit 0; L=1 gives [S], L=2 with beta_max gives [0, 1]",
    )


# ------------------------------------------------------------------------------------ Python API

API_CASES = [
    ("S = 0", lambda: published.uniform(4, 0.0), "(0, 1)"),
    ("S = 1", lambda: ScheduleSpec("uniform", 1.0), "(0, 1)"),
    ("S = nan", lambda: published.atp(4, math.nan, 0.0), "(0, 1)"),
    ("beta negative", lambda: published.atp(4, 0.5, -0.01), "[0, 0.3333]"),
    ("beta = nan", lambda: published.atp(4, 0.5, math.nan), "[0, 0.3333]"),
    ("beta above beta_max", lambda: published.atp(4, 0.5, 0.34), "[0, 0.3333]"),
    ("beta negative (spec)", lambda: ScheduleSpec("atp", 0.5, beta=-1.0), "in [0, beta_max"),
    ("OWL lambda above 1 (spec)", lambda: ScheduleSpec("owl", 0.5, lam=3), "in [0, 1]"),
    ("parameter of another method (spec)", lambda: ScheduleSpec("uniform", 0.5, beta=0.1), "allowed: none"),
    ("validation windows negative", lambda: EvalConfig(validation_windows=-1), ">= 0"),
    ("num_layers = 1, beta > 0", lambda: published.atp(1, 0.5, 1e-6), "[0, 0]"),
    ("num_layers = 0", lambda: published.beta_max(0, 0.5), ">= 1"),
    (
        "custom rates of the wrong length",
        lambda: build_schedule(ScheduleSpec("custom", rates=(0.5,) * 3), 4),
        "4 rates",
    ),
    ("custom rate above 1", lambda: published.custom([0.2, 1.5]), "[0, 1]"),
    ("N:M with N >= M", lambda: PruneConfig("wanda", (4, 4)), "0 < N < M"),
    ("N:M text malformed", lambda: parse_nm("2-4"), "'2:4'"),
    ("calibration samples = 0", lambda: CalibConfig(samples=0), ">= 1"),
    ("evaluation windows negative", lambda: EvalConfig(windows=-2), ">= 0"),
    ("calibration seqlen = 1", lambda: CalibConfig(seqlen=1), ">= 2"),
]


@pytest.mark.parametrize("what, call, allowed", API_CASES, ids=[c[0] for c in API_CASES])
def test_api_bad_input(what: str, call, allowed: str) -> None:
    with pytest.raises(ValueError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and allowed in message, message
    record("bad input", f"API: {what}", 1, 0, f"ValueError: `{message[:110]}`")


WORKBENCH_CASES = [
    ("calibration samples beyond the corpus", dict(calib=CalibConfig(100000, 32)), "allowed: 1.."),
    ("evaluation windows beyond the corpus", dict(evaluation=EvalConfig(100000, 32)), "allowed: 1.."),
    ("seqlen above the model's context", dict(calib=CalibConfig(4, 1000)), "allowed: 2..512"),
    ("empty corpus file", dict(corpus="empty"), "at least 6"),
    ("binary corpus file", dict(corpus="binary"), "UTF-8"),
    ("model folder without weights", dict(model="no-weights"), "*.safetensors"),
    ("non-causal model (BERT)", dict(model="bert"), "causal"),
]


@pytest.mark.parametrize("what, change, allowed", WORKBENCH_CASES, ids=[c[0] for c in WORKBENCH_CASES])
def test_workbench_bad_input_writes_nothing(files, tmp_path: Path, what: str, change: dict, allowed: str) -> None:
    change = {k: (str(files[v]) if isinstance(v, str) else v) for k, v in change.items()}
    base = dict(
        model=str(files["model"]), corpus=str(files["corpus"]), calib=CalibConfig(4, 32), evaluation=EvalConfig(4, 32)
    )
    store = ResultStore(tmp_path / "results.sqlite")
    with pytest.raises(ValueError) as info:
        Workbench(Setup(**{**base, **change}), store=store)
    message = str(info.value)
    assert "\n" not in message and allowed in message, message
    assert isinstance(info.value, (CorpusError, ModelLoadError)) or "seqlen" in message
    assert len(store) == 0
    record("bad input", f"API Workbench: {what}", 1, len(store), f"{type(info.value).__name__}: `{message[:100]}`")


# ------------------------------------------------------------------------------------ properties

counted: dict[str, int] = {}


def count(name: str) -> None:
    counted[name] = counted.get(name, 0) + 1


numbers_as_text = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-10, 10).map(str),
    st.sampled_from(["nan", "-inf", "1e309", "0x10", "", " ", "0.5.5", "--", "½", "1,5", "0.5\n0.6"]),
    st.text(string.printable, max_size=8),
)


def assert_clean(code: int, stdout: str, stderr: str) -> None:
    """Exit 0 with output, or exit 2 with exactly one message line; never a traceback."""
    assert "Traceback" not in stderr
    assert code in (0, 2), (code, stderr)
    if code == 2:
        lines = [ln for ln in stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and "error:" in lines[0], stderr
    else:
        assert stdout.strip()


@HYPOTHESIS
@given(sparsity=numbers_as_text, beta=numbers_as_text, layers=numbers_as_text)
def test_property_cli_schedule_numbers(sparsity: str, beta: str, layers: str) -> None:
    code, out, err = run_main(["schedule", f"--layers={layers}", f"--sparsity={sparsity}", f"--beta={beta}", "--json"])
    assert_clean(code, out, err)
    if code == 0:
        import json

        result = json.loads(out)
        assert all(0.0 <= r <= 1.0 for r in result["rates"]) and abs(result["mean"] - float(sparsity)) < 1e-9
    count("CLI schedule: random text for --sparsity/--beta/--layers")


@HYPOTHESIS
@given(
    rates=st.one_of(
        numbers_as_text, st.lists(st.floats(-1, 2), min_size=1, max_size=6).map(lambda v: ",".join(map(repr, v)))
    ),
    layers=st.integers(1, 6),
)
def test_property_cli_custom_rates(rates: str, layers: int) -> None:
    code, out, err = run_main(["schedule", f"--layers={layers}", "--method", "custom", f"--rates={rates}", "--json"])
    assert_clean(code, out, err)
    count("CLI schedule: random text for --rates")


@HYPOTHESIS
@given(
    nm=st.one_of(
        st.text(string.printable, max_size=7),
        st.tuples(st.integers(-3, 9), st.integers(-3, 9)).map(lambda t: f"{t[0]}:{t[1]}"),
    ),
    sparsity=numbers_as_text,
)
def test_property_cli_prune_nm_never_reaches_io(tmp_path: Path, nm: str, sparsity: str) -> None:
    """A model path that does not exist: every run must end in one line, and write nothing."""
    store = tmp_path / "never" / "results.sqlite"
    code, out, err = run_main(
        [
            "prune",
            "--model",
            str(tmp_path / "missing"),
            "--method",
            "uniform",
            f"--nm={nm}",
            f"--sparsity={sparsity}",
            "--store",
            str(store),
        ]
    )
    assert code == 2
    assert_clean(code, out, err)
    assert not store.parent.exists()
    try:
        valid = parse_nm(nm)
    except ValueError:
        valid = "bad"
    if valid == "bad":
        assert "N:M" in err or "error: argument" in err
    count("CLI prune: random text for --nm/--sparsity (missing model)")


@HYPOTHESIS
@given(layers=st.integers(1, 200), sparsity=st.floats(1e-6, 1 - 1e-6), frac=st.floats(0, 1))
def test_property_atp_inside_range(layers: int, sparsity: float, frac: float) -> None:
    """Any beta in [0, beta_max] gives rates in [0, 1] with mean S; beyond it, a ValueError."""
    bound = published.beta_max(layers, sparsity)
    rates = published.atp(layers, sparsity, frac * bound)
    assert rates.shape == (layers,) and np.all((rates >= 0) & (rates <= 1))
    assert abs(rates.mean() - sparsity) < 1e-9
    with pytest.raises(ValueError, match=r"beta must be in \[0, "):
        published.atp(layers, sparsity, bound * (1 + 1e-6) + 1e-9)
    count("API atp/beta_max: random L, S, beta")


def test_property_counts_recorded() -> None:
    """Runs last in this file: the number of generated examples of each property test goes into the report."""
    import reliability

    if not counted:
        pytest.skip("no property test of this file ran in this process (selected alone, or on another worker)")
    for name, n in counted.items():
        key = ("bad input", f"hypothesis: {name}")
        before = reliability._ROWS[key].times if key in reliability._ROWS else 0
        record(*key, n, 0, "exit 0 or exit 2 with one line; never a traceback, nothing written")
        row = reliability._ROWS[key]
        assert n > 0 and row.times == before + n and row.lost == 0, (name, row)
