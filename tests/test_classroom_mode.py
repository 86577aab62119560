"""Classroom mode (issue 22): the policy, the job caps, the teacher key, the sidebar.

1. ``atp_viz.experiment.classroom.Policy`` through the library's own validation (``Setup``, ``ExecutorConfig``): every
   refusal is one ValueError line that says what is allowed; local mode refuses none of them; a refused
   CLI command writes no store row and opens no model file.
2. ``atp_viz.jobs.JobManager`` with caps: jobs per session, the whole queue, points per job; following
   is never refused; a refusal leaves every other job as it was; the teacher drops any queued job.
3. ``KeyGuard``: constant-time check, a lockout per session, a limit for the whole server.
4. AppTest of the sidebar in classroom mode (slow): select boxes of the allowed names, bounded sizes, no
   Ray / device / executor controls, a forged value refused in one line, the teacher key.
The hostile-classroom test against a real server is tests/test_classroom_hostile.py.
"""

from __future__ import annotations

import os
import threading
from dataclasses import replace
from pathlib import Path

import pytest
from browser_support import ROOT
from tiny import shared_corpus_file, shared_tiny_model

from atp_viz.config import CalibConfig, EvalConfig
from atp_viz.dashboard import jobs
from atp_viz.experiment import classroom
from atp_viz.experiment.executors import ExecutorConfig
from atp_viz.experiment.workbench import Setup
from atp_viz.measure.zeroshot import ZeroShotConfig
from atp_viz.models.data import DEFAULT_CORPUS
from atp_viz.models.loading import DEFAULT_MODEL, EMBEDDED_MODELS

SMALL = {"calib": CalibConfig(8, 256), "evaluation": EvalConfig(8, 256, 4)}  # the dashboard's defaults


@pytest.fixture
def classroom_env(monkeypatch: pytest.MonkeyPatch):
    """Classroom mode for one test (the policy is read again, and read again once the test ends)."""

    def start(**env: str) -> classroom.Policy:
        monkeypatch.setenv(classroom.ENV_CLASSROOM, "1")
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        classroom.policy.cache_clear()
        return classroom.policy()

    yield start
    monkeypatch.undo()
    classroom.policy.cache_clear()


def one_line_refusal(make, *words: str) -> str:
    with pytest.raises(ValueError) as caught:
        make()
    message = str(caught.value)
    assert "\n" not in message and "allowed" in message, message
    for word in words:
        assert word in message, message
    return message


# ------------------------------------------------------------------------------------ 1. the policy


def test_local_mode_is_the_default_and_refuses_nothing_it_did_not_refuse_before() -> None:
    policy = classroom.from_environment({})
    assert not policy.classroom and policy.job_caps is None
    big = Setup(model="/any/folder", corpus="/any/file.txt", device="cuda", trust_remote_code=True,
                calib=CalibConfig(100_000, 100_000), evaluation=EvalConfig(0, 100_000))  # fmt: skip
    policy.check_setup(big)
    policy.check_executor(ExecutorConfig("ray", 64, "10.0.0.1:6379"))
    policy.check_seeds(1000)
    policy.check_points(10_000)


def test_the_environment_names_the_teachers_models_corpora_and_limits(tmp_path: Path) -> None:
    env = {
        classroom.ENV_CLASSROOM: "1",
        classroom.ENV_MODELS: f"{tmp_path}/tiny, extra-model",
        classroom.ENV_CORPORA: f"{tmp_path}/lesson.txt",
        classroom.ENV_LIMITS: "calib_windows=4, session_jobs=1",
        classroom.ENV_TEACHER_KEY: "s3cret",
    }
    policy = classroom.from_environment(env)
    assert policy.classroom and policy.models == (*EMBEDDED_MODELS, f"{tmp_path}/tiny", "extra-model")
    assert policy.corpora == (DEFAULT_CORPUS, f"{tmp_path}/lesson.txt")
    assert policy.limits.calib_windows == 4 and policy.limits.session_jobs == 1 and policy.limits.eval_tokens == 512
    assert policy.job_caps == (1, 8, 40)
    assert "s3cret" not in repr(policy) and "s3cret" not in str(policy)
    for bad, words in (("calib_windws=4", ("unknown classroom limit", "calib_windows")),
                       ("seeds=many", ("must be an integer",)), ("seeds=0", (">= 1",))):  # fmt: skip
        with pytest.raises(ValueError) as caught:
            classroom.from_environment({**env, classroom.ENV_LIMITS: bad})
        assert all(word in str(caught.value) for word in words), caught.value


def big_model_folder(root: Path) -> Path:
    """What a large model's folder looks like on disk (config and a weight index), never opened."""
    folder = root / "llama-70b"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama", "num_hidden_layers": 80}')
    (folder / "model.safetensors.index.json").write_text("{}")
    return folder


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"model": "/etc/passwd"}, ("model", "absolute path")),
        ({"model": "../../models/llama-70b"}, ("climbs out",)),
        ({"model": "meta-llama/Llama-2-70b-hf"}, ("hub id",)),
        ({"model": "~/models/x"}, ("absolute path",)),
        ({"model": "weights.gguf"}, ("path",)),
        ({"corpus": "/etc/shadow.txt"}, ("corpus", "absolute path")),
        ({"corpus": "../secret.jsonl"}, ("corpus", "climbs out")),
        ({"corpus": "wikitext2:/data/wikitext"}, ("corpus",)),
        ({"device": "cuda"}, ("device", "cpu")),
        ({"trust_remote_code": True}, ("trust_remote_code",)),
        ({"allow_pickle": True}, ("pickle", "safetensors")),
        ({"calib": CalibConfig(100_000, 256)}, ("calibration windows 100000", "1..16")),
        ({"calib": CalibConfig(8, 1_000_000)}, ("calibration tokens 1000000", "1..512")),
        ({"evaluation": EvalConfig(100_000, 256)}, ("evaluation windows 100000",)),
        ({"evaluation": EvalConfig(0, 256)}, ("0 (all)",)),
        ({"evaluation": EvalConfig(8, 256, validation_windows=0)}, ("validation windows",)),
        ({"evaluation": EvalConfig(8, 65_536)}, ("evaluation tokens 65536",)),
        ({"evaluation": EvalConfig(8, 256, 4096)}, ("evaluation batch 4096",)),
        ({"batch_size": 4096}, ("calibration batch 4096",)),
        ({"metrics": ("perplexity", "zeroshot"), "zeroshot": ZeroShotConfig(items=100_000)}, ("zero-shot items",)),
        (
            {"metrics": ("perplexity", "zeroshot"), "zeroshot": ZeroShotConfig(items=0)},
            ("zero-shot items per task 0 (all)",),
        ),
    ],
)
def test_every_refusal_is_one_line_that_says_what_is_allowed(classroom_env, change, words) -> None:
    classroom_env()
    Setup(**SMALL)  # the dashboard's defaults pass
    one_line_refusal(lambda: Setup(**{**SMALL, **change}), "classroom", *words)


def test_a_large_models_folder_is_refused_by_name_before_it_is_looked_at(classroom_env, tmp_path: Path) -> None:
    folder = big_model_folder(tmp_path)
    classroom_env()
    one_line_refusal(lambda: Setup(model=str(folder), **SMALL), "absolute path", "smollm2-135m")
    one_line_refusal(lambda: Setup(model=os.path.relpath(folder), **SMALL), "path")


def test_the_teachers_list_and_the_embedded_names_are_allowed_and_nothing_near_them(classroom_env) -> None:
    tiny = str(shared_tiny_model("llama"))
    classroom_env(**{classroom.ENV_MODELS: tiny, classroom.ENV_CORPORA: str(shared_corpus_file())})
    for name in (DEFAULT_MODEL, "gemma3-270m", tiny):
        assert Setup(model=name, corpus=str(shared_corpus_file()), **SMALL).model == name
    for near in (tiny + "/", tiny + "/../tiny-llama", tiny.upper(), " " + DEFAULT_MODEL):
        one_line_refusal(lambda: Setup(model=near, **SMALL), "not allowed")


def test_the_teachers_setup_passes_and_keeps_its_pass_through_replace(classroom_env) -> None:
    classroom_env()
    teacher = Setup(model="/models/big", device="cuda", calib=CalibConfig(128, 2048), unrestricted=True)
    again = replace(teacher, calib=replace(teacher.calib, seed=3))  # what Workbench.reseeded does, in a job thread
    assert again.unrestricted and again.calib.seed == 3
    student = Setup(**SMALL)
    assert student == replace(student, unrestricted=True) and hash(student) == hash(replace(student, unrestricted=True))
    assert "unrestricted" not in student.describe() and "unrestricted" not in repr(student)


def test_no_ray_address_no_other_executor_no_workers(classroom_env) -> None:
    classroom_env()
    ExecutorConfig()  # this process, one point at a time
    one_line_refusal(lambda: ExecutorConfig("ray"), "executor 'ray'", "local")
    one_line_refusal(lambda: ExecutorConfig("ray", 4, "10.0.0.1:6379"), "10.0.0.1:6379")
    assert ExecutorConfig("ray", 4, "10.0.0.1:6379", unrestricted=True).workers == 4  # the teacher
    one_line_refusal(lambda: classroom.policy().check_seeds(50), "seeds per point 50", "1..3")
    one_line_refusal(lambda: classroom.policy().check_points(500), "points in one job 500", "1..40")


def test_a_refused_cli_command_writes_nothing_and_opens_no_model(classroom_env, capsys, monkeypatch, tmp_path) -> None:
    from atp_viz.cli.main import main
    from atp_viz.experiment import setup as setup_module
    from atp_viz.models import loading

    def never(*args, **kwargs):
        raise AssertionError("a refused setting opened a model")

    monkeypatch.setattr(loading, "load_model", never)
    monkeypatch.setattr(setup_module, "load_model", never)
    folder = big_model_folder(tmp_path)
    classroom_env()
    store = tmp_path / "r.sqlite"
    common = ["--corpus", str(shared_corpus_file()), "--store", str(store), "--method", "atp", "--sparsity", "0.5",
              "--beta", "0.1", "--seqlen", "32", "--calib-samples", "4", "--eval-windows", "4"]  # fmt: skip
    for argv in (
        ["prune", "--model", str(folder), *common],
        ["prune", "--model", "../" + folder.name, *common],
        ["prune", "--model", DEFAULT_MODEL, "--device", "cuda", *common],
        ["prune", "--model", DEFAULT_MODEL, *common, "--calib-samples", "100000"],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert "classroom mode" in err and "allowed" in err and len(err.splitlines()) == 1, err
    assert not store.exists()


PROBE = """
import os, sys
opened = []
def hook(event, args):
    if event in ("open", "os.listdir", "os.scandir") and args and isinstance(args[0], (str, bytes, os.PathLike)):
        opened.append(os.path.abspath(os.fsdecode(args[0])))
sys.addaudithook(hook)
from atp_viz.cli.main import main
code = main(sys.argv[2:])
print("EXIT", code)
print("OPENED", [path for path in opened if path.startswith(sys.argv[1])])
"""


@pytest.mark.slow
def test_a_refused_path_is_never_opened_or_listed(tmp_path: Path) -> None:
    """An audit hook on every open and directory listing of a real CLI process in classroom mode."""
    import subprocess
    import sys

    folder = big_model_folder(tmp_path)
    corpus = tmp_path / "secret.txt"
    corpus.write_text("the answers to the exam\n\n" * 50)
    env = {**os.environ, "PYTHONPATH": str(ROOT), classroom.ENV_CLASSROOM: "1", "HF_HUB_OFFLINE": "1"}
    store = str(tmp_path / "r.sqlite")
    for argv in (
        ["prune", "--model", str(folder), "--corpus", DEFAULT_CORPUS],
        ["prune", "--model", DEFAULT_MODEL, "--corpus", str(corpus)],
        ["prune", "--model", str(folder / ".." / folder.name), "--corpus", DEFAULT_CORPUS],
    ):
        argv += ["--store", store, "--method", "atp", "--sparsity", "0.5", "--beta", "0.01", "--seqlen", "32"]
        done = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path), *argv], capture_output=True, text=True,
                              env=env, cwd=ROOT, timeout=120)  # fmt: skip
        assert "EXIT 2" in done.stdout and "OPENED []" in done.stdout, (done.stdout, done.stderr[-2000:])
        assert "classroom mode" in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (tmp_path / "r.sqlite").exists()


# ------------------------------------------------------------------------------------ 2. job caps


class Gate:
    def __init__(self) -> None:
        self.open, self.started = threading.Event(), threading.Event()

    def __call__(self, job: jobs.Job) -> None:
        self.started.set()
        assert self.open.wait(30)
        job.point_stored()


def test_a_session_may_have_two_jobs_and_may_still_follow_another_sessions_job() -> None:
    manager, running = jobs.JobManager(caps=jobs.Caps(2, 3, 10)), Gate()
    first = manager.submit("A", "m", "a1", "A's first", running)
    assert running.started.wait(10)
    second = manager.submit("A", "m", "a2", "A's second", lambda job: None)
    message = one_line_refusal(lambda: manager.submit("A", "m", "a3", "A's third", lambda job: None), "2 at once")
    assert "2 job(s)" in message and manager.find("a3") is None and manager.last("a3") is None
    other = manager.submit("B", "m", "b2", "B's", lambda job: None)
    assert manager.submit("A", "m", "b2", "B's", lambda job: None) is other and "A" in other.owners
    assert first.state == jobs.RUNNING and second.state == jobs.QUEUED  # untouched by the refusals


def test_the_whole_queue_is_capped_and_the_server_and_teacher_are_not() -> None:
    manager, running = jobs.JobManager(caps=jobs.Caps(1, 2, 10)), Gate()
    manager.submit("A", "m", "a", "running", running)
    assert running.started.wait(10)
    queued = [manager.submit(owner, "m", owner, f"{owner}'s", lambda job: None) for owner in ("B", "C")]
    before = [(job.state, sorted(job.owners)) for job in queued]
    one_line_refusal(lambda: manager.submit("D", "m", "d", "D's", lambda job: None), "queue is full", "allowed: 2")
    assert [(job.state, sorted(job.owners)) for job in queued] == before and manager.find("d") is None
    warmup = manager.submit(jobs.SERVER, "m", "w", "warm-up", lambda job: None, priority=jobs.BACKGROUND)
    teacher = manager.submit("T", "m", "t", "teacher's", lambda job: None, capped=False)
    assert warmup.state == teacher.state == jobs.QUEUED
    one_line_refusal(lambda: manager.submit("E", "n", "e", "too big", lambda job: None, total=11), "1..10")
    assert manager.submit("T", "n", "big", "teacher's big", lambda job: None, total=500, capped=False) is not None
    running.open.set()
    assert manager.wait_idle(10)


def test_a_closed_sessions_jobs_no_longer_count() -> None:
    closed: set[str] = set()
    manager, running = jobs.JobManager(alive=lambda o: o not in closed, caps=jobs.Caps(1, 1, 10)), Gate()
    manager.submit("A", "m", "a", "running", running)
    assert running.started.wait(10)
    manager.submit("B", "m", "b", "B's", lambda job: None)
    one_line_refusal(lambda: manager.submit("C", "m", "c", "C's", lambda job: None), "queue is full")
    closed.add("B")
    assert manager.submit("C", "m", "c", "C's", lambda job: None).state == jobs.QUEUED
    running.open.set()
    assert manager.wait_idle(10)


def test_the_teacher_drops_any_queued_job_never_a_running_one() -> None:
    manager, running = jobs.JobManager(), Gate()
    first = manager.submit("A", "m", "a", "A's", running)
    assert running.started.wait(10)
    queued = manager.submit("B", "m", "b", "B's", lambda job: None)
    manager.submit("C", "m", "b", "B's", lambda job: None)
    assert manager.active() == [first, queued]
    assert not manager.drop(first) and first.state == jobs.RUNNING
    assert manager.drop(queued) and queued.state == jobs.CANCELLED and "teacher" in queued.message
    assert manager.active() == [first]
    running.open.set()
    assert manager.wait_idle(10) and first.state == jobs.DONE


# ------------------------------------------------------------------------------------ 3. the teacher key


def test_the_key_unlocks_and_wrong_keys_lock_the_session_out() -> None:
    guard = classroom.KeyGuard("correct horse")
    assert guard.check("A", "correct horse")
    for left in range(classroom.TRIES - 1, -1, -1):
        assert not guard.check("B", "guess") and guard.tries_left("B") == left
    one_line_refusal(lambda: guard.check("B", "correct horse"), "locked out")  # even the right key, now
    assert guard.check("C", "correct horse")  # another tab is not locked out
    one_line_refusal(lambda: classroom.KeyGuard(None).check("A", "x"), classroom.ENV_TEACHER_KEY)


def test_the_server_limits_wrong_keys_from_many_tabs() -> None:
    now = [0.0]
    guard = classroom.KeyGuard("k", clock=lambda: now[0])
    for tab in range(classroom.SERVER_TRIES_PER_MINUTE):
        assert not guard.check(f"tab {tab}", "wrong")
    with pytest.raises(ValueError, match="too many wrong teacher keys"):
        guard.check("new tab", "k")
    now[0] = 61.0
    assert guard.check("new tab", "k")


# ------------------------------------------------------------------------------------ 4. the sidebar (AppTest)


@pytest.fixture
def classroom_app(classroom_env, dashboard_env, monkeypatch):
    """AppTest sessions of a classroom server on the tiny model (the server's caches rebuilt before and after)."""
    from atp_viz.dashboard import ui

    for name, value in dashboard_env.items():
        monkeypatch.setenv(name, value)
    classroom_env(**{classroom.ENV_MODELS: dashboard_env["ATP_VIZ_DEFAULT_MODEL"],
                     classroom.ENV_CORPORA: dashboard_env["ATP_VIZ_DEFAULT_CORPUS"],
                     classroom.ENV_TEACHER_KEY: "open sesame"})  # fmt: skip
    ui.job_manager.clear()
    ui.key_guard.clear()
    yield dashboard_env
    ui.job_manager().wait_idle(120)
    ui.job_manager.clear()
    ui.key_guard.clear()


def page(name: str = "pages/5_Theory_sandbox.py"):
    from streamlit.testing.v1 import AppTest

    return AppTest.from_file(str(ROOT / name), default_timeout=120).run()


def labels(at, kind: str) -> list[str]:
    return [widget.label for widget in getattr(at.sidebar, kind)]


@pytest.mark.slow
def test_the_classroom_sidebar_offers_only_allowed_names_and_bounded_sizes(classroom_app) -> None:
    at = page()
    assert not at.exception
    model = at.sidebar.selectbox(key="model")
    assert list(model.options) == [*EMBEDDED_MODELS, classroom_app["ATP_VIZ_DEFAULT_MODEL"]]
    assert model.value == classroom_app["ATP_VIZ_DEFAULT_MODEL"]
    assert list(at.sidebar.selectbox(key="corpus").options) == [DEFAULT_CORPUS, classroom_app["ATP_VIZ_DEFAULT_CORPUS"]]
    assert "Model" not in labels(at, "text_input") and "Corpus" not in labels(at, "text_input")
    for gone in ("Device", "Run points on"):
        assert gone not in labels(at, "selectbox")
    assert "Ray address" not in labels(at, "text_input") and "Workers" not in labels(at, "number_input")
    limits = classroom.policy().limits
    helps = {w.key: w.help for w in at.sidebar.number_input}
    assert f"Classroom limit: 1..{limits.calib_windows}." in helps["calib_samples"]
    assert f"Classroom limit: 1..{limits.eval_tokens}." in helps["eval_seqlen"]
    assert f"Classroom limit: 1..{limits.seeds}." in helps["seed_count"]
    assert labels(at, "text_input") == ["Teacher key"]


@pytest.mark.slow
def test_a_forged_value_is_refused_in_one_line_and_starts_nothing(classroom_app) -> None:
    from atp_viz.dashboard import ui

    at = page()
    for key, value, words in (
        ("model", "/etc", "absolute path"),
        ("corpus", "../corpus.txt", "climbs out"),
        ("calib_samples", 100_000, "calibration windows 100000"),
        ("eval_seqlen", 1_000_000, "evaluation tokens 1000000"),
        ("seed_count", 4, "seeds per point 4"),
    ):
        fresh = page()
        fresh.session_state["_" + key] = value  # what a forged widget value leaves (the widget's on_change mirror)
        fresh.run()
        errors = [e.value for e in fresh.sidebar.error]
        assert not fresh.exception and len(errors) == 1 and words in errors[0] and "allowed" in errors[0], errors
    at.run()  # the page keeps working
    assert not at.exception and not at.sidebar.error
    assert ui.job_manager().active() == [] or all(job.owners == {jobs.SERVER} for job in ui.job_manager().active())


@pytest.mark.slow
def test_the_teacher_key_unlocks_full_controls_in_that_tab_only(classroom_app) -> None:
    from atp_viz.dashboard import ui

    student, teacher = page(), page()
    key = teacher.sidebar.text_input(key=ui.KEY_INPUT)
    key.input("wrong").run()
    assert [e.value for e in teacher.sidebar.error] == [
        f"Wrong teacher key ({classroom.TRIES - 1} tries left in this tab)"
    ]
    assert teacher.sidebar.text_input(key=ui.KEY_INPUT).value == ""  # never kept in the field
    teacher.sidebar.text_input(key=ui.KEY_INPUT).input("open sesame").run()
    assert not teacher.exception and not teacher.sidebar.error
    assert "Model" in labels(teacher, "text_input") and "Device" in labels(teacher, "selectbox")
    assert "open sesame" not in str(teacher._session_state.filtered_state)
    assert "No job runs or waits" in " ".join(c.value for c in teacher.sidebar.caption)
    teacher.sidebar.text_input(key="model").input("/models/anything").run()  # the teacher may
    assert not [e for e in teacher.sidebar.error if "classroom" in e.value]
    student.run()
    assert "Model" not in labels(student, "text_input") and not student.sidebar.error
    teacher.sidebar.button(key="teacher_lock").click().run()
    assert "Model" not in labels(teacher, "text_input") and teacher.sidebar.selectbox(key="model").value in (
        classroom.policy().models
    )


@pytest.mark.slow
def test_the_teacher_sees_every_sessions_jobs_and_cancels_a_queued_one(classroom_app) -> None:
    from atp_viz.dashboard import ui

    manager, running = ui.job_manager(), Gate()
    held = manager.submit("a student", "some model", ("hold",), "a student's sweep", running)
    assert running.started.wait(30)
    queued = manager.submit("another student", "some model", ("queued",), "another student's sweep", lambda job: None)
    try:
        teacher = page()
        teacher.sidebar.text_input(key=ui.KEY_INPUT).input("open sesame").run()
        captions = " ".join(c.value for c in teacher.sidebar.caption)
        assert "running: a student's sweep" in captions and "queued: another student's sweep" in captions
        assert "cannot be stopped" in captions
        buttons = [b.key for b in teacher.sidebar.button if b.key and b.key.startswith("teacher_cancel_")]
        assert buttons == [f"teacher_cancel_{queued.id}"]  # a running job has no Cancel
        teacher.sidebar.button(key=f"teacher_cancel_{queued.id}").click().run()
        assert queued.state == jobs.CANCELLED and held.state == jobs.RUNNING and not teacher.exception
    finally:
        running.open.set()
    assert manager.wait_idle(30) and held.state == jobs.DONE


@pytest.mark.slow
def test_a_search_far_above_the_limits_is_refused_in_one_line(classroom_app) -> None:
    from atp_viz.dashboard import ui

    at = page("pages/6_ATP_vs_search.py")
    assert ui.job_manager().wait_idle(120)  # the model loads in the background
    at.session_state["_search_trials"] = 1000
    at.session_state["_search_step"] = 0.05
    at.run()
    assert ui.job_manager().wait_idle(120)
    at.run()
    at.button(key="search_run").click().run()
    errors = [e.value for e in at.error]
    assert not at.exception and len(errors) == 1, errors
    assert "points per search 1000 is above the classroom limit; allowed: 1..40" in errors[0]
    assert all(job.owners == {jobs.SERVER} for job in ui.job_manager().active())
