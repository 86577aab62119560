"""Dashboard faults: bad values in every control, a browser tab closed mid-sweep, paths read.

1. AppTest (one page per run, in this process) feeds each sidebar and page control a bad value and
   checks for a one-line ``st.error`` naming the allowed range, no exception, the rest of the page
   still drawn, and no new store row. Widgets that cannot hold a bad value (sliders, number inputs
   with a minimum, a fixed-row table) are checked by their bounds instead.
2. A real ``streamlit run app.py`` server and headless Chromium: Run sweep on Beta tuning, close
   the tab once a point is stored, then reopen: the finished points are there and are not redone.
3. A child process runs every page with ``HOME`` pointing at an empty folder and records every
   path it opens (``sys.addaudithook``): only the model, the corpus, the store and the cache (plus
   code and system files) are read, and nothing is created anywhere else.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from browser_support import CHROMIUM, CHROMIUM_FLAGS, NO_CHROMIUM, ROOT, dashboard_server
from reliability import TMP_PATH, integrity, point_rows, record
from streamlit.testing.v1 import AppTest
from tiny import make_bad_inputs, make_corpus_file, shared_corpus_file, shared_tiny_model

from atp_viz.schedules import published
from atp_viz.store import ResultStore

pytestmark = pytest.mark.slow  # AppTest pages, fault tests

TIMEOUT = 120
CONTEXT = 512  # the tiny models' max_position_embeddings
LOAD_ERROR = "Cannot load the model with these settings: "  # ui.load_workbench's prefix (shortened in the report)


@pytest.fixture(scope="module")
def bad(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Files a user could type into the sidebar that cannot be used."""
    return make_bad_inputs(tmp_path_factory.mktemp("dash_bad"))


@pytest.fixture(scope="module")
def store(tiny_assets: dict[str, Path], tmp_path_factory: pytest.TempPathFactory, settle_jobs: None):
    """The tiny 4-block model and corpus as dashboard defaults, with this module's own store and cache."""
    root = tmp_path_factory.mktemp("dash_faults")
    env = {
        "ATP_VIZ_DEFAULT_MODEL": str(tiny_assets["model"]),
        "ATP_VIZ_DEFAULT_CORPUS": str(tiny_assets["corpus"]),
        "ATP_VIZ_DEFAULT_WINDOWS": "4x32",
        "ATP_VIZ_STORE": str(root / "results.sqlite"),
        "ATP_VIZ_CACHE": str(root / "cache"),
    }
    with pytest.MonkeyPatch.context() as mp:
        for name, value in env.items():
            mp.setenv(name, value)
        yield root / "results.sqlite"


def rows(path: Path) -> int:
    return ResultStore(path).count() if path.exists() else 0


def page(name: str, **state) -> AppTest:
    at = AppTest.from_file(str(ROOT / name), default_timeout=TIMEOUT)
    for key, value in state.items():
        at.session_state[key] = value
    return at.run()


def charts(at: AppTest) -> int:
    return len(at.get("plotly_chart"))


def refused(at: AppTest, allowed: str, store: Path, before: int, what: str, still: str) -> str:
    """The bad value gave one st.error line naming ``allowed``; the page still draws; nothing stored."""
    assert not at.exception, [e.value for e in at.exception]
    errors = [e.value for e in at.error]
    hits = [e for e in errors if allowed in e]
    assert hits, errors
    assert all("\n" not in e for e in errors), errors
    assert at.title and at.sidebar.text_input(key="model"), "page stopped drawing"
    assert still in " ".join([*(t.value for t in at.title), *(s.value for s in at.subheader)]), "page stopped drawing"
    assert rows(store) == before, "a bad value wrote to the store"
    shown = TMP_PATH.sub("<tmp>/", hits[0]).replace(LOAD_ERROR, "Cannot load the model...: ")
    record("bad input", f"dashboard: {what}", 1, rows(store) - before, f"st.error: `{shown[:120]}`")
    return hits[0]


def bounded(what: str, widget, low: float | None = None, high: float | None = None, outcome: str = "") -> None:
    """A widget that cannot take the bad value: its bounds exclude it (the frontend clamps)."""
    if low is not None:
        assert widget.min == pytest.approx(low), (what, widget.min)
    if high is not None:
        assert widget.max == pytest.approx(high), (what, widget.max)
    span = f"[{widget.min:g}, {widget.max:g}]" if high is not None else f">= {widget.min:g}"
    record(
        "bad input",
        f"dashboard: {what}",
        1,
        0,
        outcome or f"widget accepts only {span}; the bad value cannot be entered",
    )


# ------------------------------------------------------------------------------------ 1. sidebar

SIDEBAR_TEXT = [  # (what, widget key, value or bad-file name, a piece of the message)
    ("model path that does not exist", "model", "/no/such/model", "does not exist"),
    ("model folder without weights", "model", "no-weights", "*.safetensors"),
    ("non-causal model folder (BERT)", "model", "bert", "causal"),
    ("binary corpus file", "corpus", "binary", "UTF-8"),
    ("empty corpus file", "corpus", "empty", "at least 6"),
    ("empty model field", "model", "   ", "must not be empty"),
]
SIDEBAR_NUMBERS = [
    ("calibration windows beyond the corpus", "calib_samples", 100000, "allowed: 1.."),
    ("evaluation windows beyond the corpus", "eval_windows", 100000, "allowed: 1.."),
    ("calibration tokens above the model's context", "calib_seqlen", CONTEXT + 88, f"allowed: 2..{CONTEXT}"),
    ("evaluation tokens above the model's context", "eval_seqlen", CONTEXT + 88, f"allowed: 2..{CONTEXT}"),
]


@pytest.fixture(scope="module")
def home(store: Path) -> int:
    """Run Home once with good settings (loads the model, stores the dense perplexity)."""
    at = page("app.py")
    assert not at.exception and charts(at) == 1
    return rows(store)


@pytest.mark.parametrize("what, key, value, allowed", SIDEBAR_TEXT, ids=[c[0] for c in SIDEBAR_TEXT])
def test_sidebar_bad_paths(
    store: Path, home: int, bad: dict[str, Path], what: str, key: str, value: str, allowed: str
) -> None:
    at = page("app.py")
    before = rows(store)
    at.sidebar.text_input(key=key).input(str(bad.get(value, value))).run()
    refused(at, allowed, store, before, what, "Pages")
    assert charts(at) == 0  # no schedule without a model, but the page links are still there
    assert any("Fix the settings" in c.value or "not loaded" in c.value for c in at.sidebar.caption)


@pytest.mark.parametrize("what, key, value, allowed", SIDEBAR_NUMBERS, ids=[c[0] for c in SIDEBAR_NUMBERS])
def test_sidebar_bad_numbers(store: Path, home: int, what: str, key: str, value: int, allowed: str) -> None:
    at = page("app.py")
    before = rows(store)
    at.sidebar.number_input(key=key).set_value(value).run()
    refused(at, allowed, store, before, what, "Pages")


def test_sidebar_widget_bounds(store: Path) -> None:
    at = page("pages/5_Theory_sandbox.py")  # same sidebar, no model needed
    assert not at.exception
    before = rows(store)
    bounded("target sparsity S = 0, 1 or outside [0.05, 0.95]", at.sidebar.slider(key="sparsity"), 0.05, 0.95)
    for key, label, low in (
        ("calib_samples", "calibration windows", 1),
        ("eval_windows", "evaluation windows", 1),
        ("calib_seqlen", "calibration tokens", 2),
        ("eval_seqlen", "evaluation tokens", 2),
        ("seed", "seed", 0),
    ):
        at.sidebar.number_input(key=key).set_value(low - 5).run()  # what a user could type
        widget = at.sidebar.number_input(key=key)
        assert not at.exception and widget.value == low, (key, widget.value)
        what = f"{label} = 0 or negative" if low else f"{label} negative"
        bounded(what, widget, low, outcome=f"widget minimum {low}: a typed {low - 5} is clamped to {low}")
    assert rows(store) == before
    assert at.sidebar.selectbox(key="device").options == ["cpu", "auto", "cuda"]


# ------------------------------------------------------------------------------------ 1. pages


def editor_run(at: AppTest, key: str, edits: dict) -> AppTest:
    """Rerun as if the user had edited the table ``key`` (AppTest cannot edit a data_editor itself).

    The browser sends a data_editor's edits as a JSON string widget value; this sends the same one.
    """
    (editor,) = [d for d in at.data_editor if d.key == key]
    states = at._tree.get_widget_states()
    state = states.widgets.add()
    state.id = editor.proto.id
    state.string_value = json.dumps(edits)
    return at._run(states)


def test_schedules_page_controls(store: Path, home: int) -> None:
    at = page("pages/1_Schedules.py")
    assert not at.exception and charts(at) == 1
    before = rows(store)
    L, S = 4, 0.7
    bound = published.beta_max(L, S)
    bounded("Schedules: ATP beta negative or above beta_max", at.slider(key="sched_atp_beta"), 0.0, bound)
    for key, value, allowed, what in (
        ("sched_owl_lam", -0.1, "lam must be in [0, 1]", "Schedules: OWL lambda negative"),
        ("sched_owl_lam", 3.0, "lam must be in [0, 1]", "Schedules: OWL lambda above 1"),
        ("sched_owl_m", -1.0, ">= 0", "Schedules: OWL M negative"),
        ("sched_alphapruning_eps", -0.2, "eps must be in [0, 1]", "Schedules: AlphaPruning eps negative"),
        ("sched_alphapruning_eps", 1.5, "eps must be in [0, 1]", "Schedules: AlphaPruning eps above 1"),
    ):
        at = page("pages/1_Schedules.py", **{"_" + key: value})
        refused(at, allowed, store, before, what, "Schedules")
        assert charts(at) == 1  # the other schedules are still drawn
    at = page("pages/1_Schedules.py")
    (editor,) = at.data_editor
    assert editor.editing_mode == "fixed" and len(editor.value) == L  # no rows can be added or removed
    record(
        "bad input",
        "dashboard: Schedules: custom schedule of the wrong length",
        1,
        0,
        f"table has exactly one row per block ({L}); rows cannot be added or deleted",
    )
    key = editor.key
    for edits, what in (
        ({"edited_rows": {"1": {"sparsity": 1.5}}}, "custom rate above 1"),
        ({"edited_rows": {"2": {"sparsity": -0.3}}}, "custom rate negative"),
        ({"edited_rows": {"0": {"sparsity": None}}}, "custom rate cleared"),
    ):
        at = editor_run(page("pages/1_Schedules.py"), key, edits)
        refused(at, "each be in [0, 1]", store, before, f"Schedules: {what}", "Schedules")
        assert charts(at) == 1


def test_error_explosion_controls(store: Path, home: int) -> None:
    at = page("pages/2_Error_explosion.py")
    assert not at.exception
    bounded(
        "Error explosion: ATP beta negative or above beta_max",
        at.slider(key="err_atp_beta"),
        0.0,
        published.beta_max(4, 0.7),
    )
    before = rows(store)
    at.multiselect(key="err_show").set_value([]).run()
    refused(at, "allowed: uniform, ATP", store, before, "Error explosion: no schedule chosen", "Error explosion")


def test_beta_tuning_controls(store: Path, home: int) -> None:
    at = page("pages/3_Beta_tuning.py")
    assert not at.exception
    bounded("Beta tuning: grid step negative", at.number_input(key="tune_step"), 0.0)
    before = rows(store)
    bound = published.beta_max(4, 0.7)
    at.number_input(key="tune_step").set_value(0.0).run()
    refused(at, "0 < step <=", store, before, "Beta tuning: grid step = 0", "Beta tuning")
    at.number_input(key="tune_step").set_value(0.5).run()
    message = refused(
        at, f"0 < step <= {bound:.5g}", store, before, "Beta tuning: grid step above beta_max", "Beta tuning"
    )
    assert "0.5" in message


def test_compare_controls(store: Path, home: int) -> None:
    at = page("pages/4_Compare_strategies.py", _cmp_sparsities=[0.5, 0.7])
    assert not at.exception
    bounded("Compare: ATP grid step negative", at.number_input(key="tune_step"), 0.0)
    before = rows(store)
    at.number_input(key="tune_step").set_value(0.0).run()
    refused(at, "must be > 0", store, before, "Compare: ATP grid step = 0", "Compare strategies")
    at.number_input(key="tune_step").set_value(0.25).run()  # beta_max = 1/3 at S = 0.5 but 0.2 at S = 0.7
    refused(
        at,
        f"0 < step <= {published.beta_max(4, 0.7):.5g}",
        store,
        before,
        "Compare: ATP grid step above beta_max",
        "Compare strategies",
    )
    at.number_input(key="tune_step").set_value(0.1).run()
    at.multiselect(key="cmp_methods").set_value([]).run()
    refused(at, "choose at least one method", store, before, "Compare: no method chosen", "Compare strategies")


def test_theory_sandbox_bounds(store: Path) -> None:
    from atp_viz.schedules import toy

    at = page("pages/5_Theory_sandbox.py")
    assert not at.exception and charts(at) == 2
    bounded("Theory sandbox: depth outside [2, max]", at.slider(key="toy_depth"), 2, toy.MAX_DEPTH)
    bounded("Theory sandbox: S outside [0.05, 0.95]", at.slider(key="toy_sparsity"), 0.05, 0.95)
    bounded(
        "Theory sandbox: beta negative or above beta_max", at.slider(key="toy_beta"), 0.0, published.beta_max(16, 0.7)
    )
    bounded("Theory sandbox: seed negative", at.number_input(key="toy_seed"), 0)


# ------------------------------------------------------------------------------------ 2. closed tab

SWEEP_STEP = "0.0050"  # 8 blocks at S = 0.7: beta_max = 0.0857 -> 17 betas + uniform = 18 points


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason=NO_CHROMIUM)
def test_closed_tab_mid_sweep_keeps_finished_points(tmp_path: Path) -> None:
    pytest.importorskip("playwright")
    from playwright.sync_api import sync_playwright

    store_path = tmp_path / "results.sqlite"
    env = {
        **os.environ, "PYTHONPATH": str(ROOT), "ATP_VIZ_DEFAULT_MODEL": str(shared_tiny_model(layers=8)),
        "ATP_VIZ_DEFAULT_CORPUS": str(shared_corpus_file()), "ATP_VIZ_DEFAULT_WINDOWS": "4x32",
        "ATP_VIZ_STORE": str(store_path), "ATP_VIZ_CACHE": str(tmp_path / "cache"),
    }  # fmt: skip
    points = lambda: ResultStore(store_path).count(kind="point") if store_path.exists() else 0  # noqa: E731
    with dashboard_server(env, tmp_path / "streamlit.log") as base:
        url = f"{base}/Beta_tuning"
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS)
            tab = open_sweep_page(browser, url)
            total = 18
            assert stored_caption(tab, total) == 0
            tab.get_by_role("button", name=re.compile("^Run sweep")).click()
            deadline = time.monotonic() + 300
            while points() < 1:
                assert time.monotonic() < deadline, "no point stored within 300 s"
                time.sleep(0.05)
            tab.context.close()  # the tab goes away mid-sweep, no Stop pressed
            closed_keys = set(point_rows(store_path))
            assert len(closed_keys) < total, "the sweep finished before the tab was closed"

            settled = wait_for(
                points, total
            )  # a running job always finishes (atp_viz/dashboard/jobs.py); nothing is undone
            lost = len(closed_keys - set(point_rows(store_path)))
            assert lost == 0 and settled >= len(closed_keys) and integrity(store_path) == "ok"

            again = open_sweep_page(browser, url)
            shown = stored_caption(again, total)
            assert shown == settled == points(), (shown, settled)
            again.locator(".js-plotly-plot .main-svg").first.wait_for(state="visible")
            again.get_by_role(
                "button", name=f"Run sweep ({total - shown} missing)" if shown < total else "Sweep complete"
            ).wait_for()
            again.wait_for_timeout(1500)
            assert points() == settled  # reopening computed nothing
            browser.close()
    record(
        "interruption",
        "dashboard: browser tab closed mid-sweep (Beta tuning, 18-point grid), then reopened",
        1,
        lost,
        f"{len(closed_keys)} point(s) stored at close, all kept; the server finished the sweep ({settled}); "
        "integrity ok; "
        f"reopened page shows `{shown} of {total} points stored` and computes nothing",
    )


def open_sweep_page(browser, url: str):
    from test_browser import set_number, wait_idle

    tab = browser.new_context(viewport={"width": 1400, "height": 1400}).new_page()
    tab.set_default_timeout(90_000)
    tab.goto(url, wait_until="domcontentloaded")
    tab.locator('input[aria-label="Grid step (> 0)"]').wait_for()
    wait_idle(tab)
    set_number(tab, "Grid step (> 0)", SWEEP_STEP)
    return tab


def stored_caption(tab, total: int) -> int:
    """N from the caption 'N of TOTAL points stored' (waits for the rerun with the typed step)."""
    caption = tab.get_by_text(re.compile(rf"\d+ of {total} points stored")).first
    caption.wait_for()
    return int(re.search(rf"(\d+) of {total} points stored", caption.text_content()).group(1))


def wait_for(count, total: int, limit_s: float = 900) -> int:
    """The store's point count once it reaches ``total`` (the sweep the closed tab started has finished)."""
    deadline = time.monotonic() + limit_s
    while (now := count()) < total:
        if time.monotonic() > deadline:
            pytest.fail(f"the sweep stopped at {now} of {total} points after the tab closed")
        time.sleep(0.5)
    return now


# ------------------------------------------------------------------------------------ 3. paths

PROBE = textwrap.dedent(
    """
    import json, os, sys
    opened = set()
    def hook(event, args):
        if event in ("open", "os.listdir", "os.scandir") and args and isinstance(args[0], (str, bytes, os.PathLike)):
            path = os.fsdecode(args[0])
            opened.add(os.path.abspath(path))
    sys.addaudithook(hook)
    from streamlit.testing.v1 import AppTest
    from atp_viz.dashboard import ui
    root = sys.argv[1]
    pages = ["app.py", *sorted("pages/" + p for p in os.listdir(os.path.join(root, "pages")) if p.endswith(".py"))]
    failures = []
    for name in pages:
        seen = ui.job_manager().epoch()
        at = AppTest.from_file(os.path.join(root, name), default_timeout=120).run()
        while ui.job_manager().wait_idle(300) and ui.job_manager().epoch() != seen:  # background load: rerun
            seen = ui.job_manager().epoch()
            at.run()
        failures += [f"{name}: {e.value}" for e in [*at.exception, *at.error]]
    json.dump({"opened": sorted(opened), "failures": failures}, sys.stdout)
    """
)


def test_pages_touch_only_the_given_paths(tmp_path: Path) -> None:
    box = tmp_path  # everything a user owns in this test lives in here
    home, store_dir, cache = box / "home", box / "store", box / "cache"
    home.mkdir()
    model = Path(shutil.copytree(shared_tiny_model(), box / "model"))
    corpus = make_corpus_file(box / "corpus.txt")
    (box / "secret.txt").write_text("not for the dashboard")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("XDG_", "HF_", "TRANSFORMERS_", "ATP_VIZ_", "STREAMLIT_"))
    }
    env.update(HOME=str(home), PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", ATP_VIZ_DEFAULT_MODEL=str(model))
    env.update(ATP_VIZ_DEFAULT_CORPUS=str(corpus), ATP_VIZ_DEFAULT_WINDOWS="4x32")
    env.update(ATP_VIZ_STORE=str(store_dir / "results.sqlite"), ATP_VIZ_CACHE=str(cache))
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(ROOT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert not report["failures"], report["failures"]
    given = [str(model), str(corpus), str(store_dir), str(cache)]
    inside = lambda path, roots: any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)  # noqa: E731
    in_box = [p for p in report["opened"] if inside(p, [str(box)])]
    strays = [p for p in in_box if not inside(p, given)]
    assert not strays, strays  # not the home folder, not secret.txt, not the folder around the corpus
    real_home = os.path.expanduser("~")  # this process's HOME: the child must not reach it either
    in_real_home = [
        p
        for p in report["opened"]
        if inside(p, [real_home]) and not inside(p, [str(ROOT), sys.prefix, sys.base_prefix, str(box)])
    ]
    assert not in_real_home, in_real_home
    assert str(model / "config.json") in in_box and str(corpus) in in_box
    created_in_home = sorted(str(p.relative_to(home)) for p in home.rglob("*"))
    assert not created_in_home, created_in_home
    created = sorted(p.name for p in box.iterdir())
    assert set(created) <= {"cache", "corpus.txt", "home", "model", "secret.txt", "store"}, created
    record(
        "unsafe input",
        "dashboard: every page run with HOME set to an empty folder; paths opened recorded (audit hook)",
        1,
        0,
        f"{len(in_box)} paths opened in the user's area, all inside the model, corpus, store or cache given; "
        "nothing created in HOME or elsewhere",
    )
