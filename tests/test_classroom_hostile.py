"""A hostile classroom: real sessions against ONE ``streamlit run app.py`` server in classroom mode.

The sessions are websocket clients that speak Streamlit's own protocol (tests/stsession.py), not
Chromium tabs: twelve browsers would not fit a 2-core machine, and a client that sends raw widget
values can also forge what no widget offers. On one server, on the tiny model:

- Mallory forges a model and a corpus outside the list (an absolute path, ``..``, a large model's
  folder), sizes far above the bounds, a Ray executor and address, and a wrong teacher key again and
  again: each is refused with one line, the page keeps working, and nothing reaches the store.
- Ten sessions each press Run on ten different sweeps within seconds: the caps (2 jobs per session,
  8 waiting in the whole queue) refuse the rest with one line each.
- Meanwhile Alice, who pressed Run first, keeps rerunning her page: her render time under the flood is
  measured, and her sweep finishes with every point stored once.
- The server's peak RSS is read from /proc; then the server is restarted on the same store and a new
  session finds every stored point (a teacher's restart keeps the results).
Numbers go to docs/results/classroom_hostile.json (see docs/reliability.md); no time is asserted.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import threading
import time
from pathlib import Path

import pytest
from browser_support import ROOT, dashboard_process
from stsession import Session
from test_classroom import rss_peak_mib

from atp_viz.experiment import classroom
from atp_viz.store import ResultStore

WAIT_S = 120  # every wait is bounded by this
FLOOD_SESSIONS, FLOOD_RUNS = 10, 10
KEY = "correct horse battery staple"
RESULTS = ROOT / "docs" / "results" / "classroom_hostile.json"


def wait_for(session: Session, text: str, **widgets: object) -> float:
    """Rerun ``session`` (as its polling fragment would) until its page shows ``text``; the last render's seconds."""
    deadline = time.monotonic() + WAIT_S
    seconds = session.run(**widgets)
    while text not in session.last.text():
        assert time.monotonic() < deadline, f"no {text!r} within {WAIT_S} s: {session.last.text()[-600:]}"
        time.sleep(0.3)
        seconds = session.run()
    return seconds


def refused(session: Session, *words: str, **widgets: object) -> str:
    """Send ``widgets``; the page must answer with exactly one one-line error holding ``words``, no exception."""
    session.run(**widgets)
    page = session.last
    assert not page.exceptions, page.exceptions
    assert len(page.errors) == 1 and "\n" not in page.errors[0], page.errors
    assert all(word in page.errors[0] for word in words), page.errors
    return page.errors[0]


def point_rows(store: Path) -> list[dict]:
    return ResultStore(store).query(kind="point") if store.exists() else []


@pytest.mark.slow
def test_a_hostile_classroom_on_one_server(tiny_assets, tmp_path: Path) -> None:
    model, corpus = str(tiny_assets["model"]), str(tiny_assets["corpus"])
    big = tmp_path / "llama-70b"
    big.mkdir()
    (big / "config.json").write_text('{"model_type": "llama", "num_hidden_layers": 80}')
    store, job_log = tmp_path / "results.sqlite", tmp_path / "jobs.jsonl"
    env = {
        **os.environ, "PYTHONPATH": str(ROOT), "ATP_VIZ_DEFAULT_MODEL": model, "ATP_VIZ_DEFAULT_CORPUS": corpus,
        "ATP_VIZ_DEFAULT_WINDOWS": "4x32", "ATP_VIZ_STORE": str(store), "ATP_VIZ_CACHE": str(tmp_path / "cache"),
        "ATP_VIZ_JOB_LOG": str(job_log), classroom.ENV_CLASSROOM: "1", classroom.ENV_MODELS: model,
        classroom.ENV_CORPORA: corpus, classroom.ENV_TEACHER_KEY: KEY, "OMP_NUM_THREADS": "1",
    }  # fmt: skip
    numbers: dict[str, object] = {"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count()}
    started = time.monotonic()
    with dashboard_process(env, tmp_path / "streamlit.log") as (base, server):
        alice = Session(base, "Beta_tuning", WAIT_S)
        wait_for(alice, "points stored")  # the model loaded (the server's own job)
        alice.run()  # the page's widget ids, now that it draws them all
        wait_for(alice, "0 of 5 points stored", tune_step=0.05)  # 4 blocks, S = 0.7: 4 betas + uniform
        baseline = [alice.run() for _ in range(5)]

        # -------------------------------------------------------------- Mallory: forged requests, one line each
        mallory = Session(base, "Beta_tuning", WAIT_S)
        wait_for(mallory, "points stored")
        mallory.run()
        rows_before = len(point_rows(store))
        lines = [
            refused(mallory, "model '/etc/passwd'", "absolute path", "allowed", model="/etc/passwd"),
            refused(mallory, "climbs out", model="../../models/llama-70b"),
            refused(mallory, "absolute path", model=str(big)),
            refused(mallory, "path or a hub id", model="meta-llama/Llama-2-70b-hf"),
            refused(mallory, "corpus '/etc/hosts'", corpus="/etc/hosts"),
            refused(mallory, "calibration windows 1000000", "1..16", calib_samples=1_000_000),
            refused(mallory, "evaluation tokens 10000000", "1..512", calib_samples=4, eval_seqlen=10_000_000),
            refused(mallory, "seeds per point 4", "1..3", eval_seqlen=32, seed_count=4),
        ]
        mallory.run(seed_count=1)
        assert not mallory.last.errors, mallory.last.errors
        # a sweep the page offers, but far more points than a job may hold (grid step 0.002: 101 points)
        lines.append(refused(mallory, "101 points", "1..40", tune_step=0.002, tune_run=True))
        for attempt in range(classroom.TRIES + 2):  # a wrong key, again and again, then the right one
            mallory.run(teacher_key_input=f"guess {attempt}")
            assert len(mallory.last.errors) == 1 and not mallory.last.exceptions, mallory.last.errors
            lines.append(mallory.last.errors[0])
        assert lines[-4].startswith("Wrong teacher key (1 tries left") and lines[-3] == classroom.LOCKED_OUT
        assert "locked out" in lines[-1] and "locked out" in refused(mallory, "locked out", teacher_key_input=KEY)
        assert "Teacher controls unlocked" not in mallory.last.text()
        mallory.run(executor="ray", ray_address="10.0.0.1:6379", workers=64, device="cuda")  # widgets not drawn
        assert mallory.last.errors == [classroom.LOCKED_OUT] and "Ray address" not in mallory.last.text()
        assert len(point_rows(store)) == rows_before  # nothing refused reached the store
        assert all(line.count("\n") == 0 for line in lines)

        # -------------------------------------------------------------- Alice runs; ten sessions flood the queue
        wait_for(alice, "[Run sweep (5 missing)]")
        alice.run(tune_run=True)
        assert not alice.last.errors, alice.last.errors
        # Mallory's own sweep, with a Ray executor, 64 workers and an address forged alongside: it runs here
        # (a Ray job would fail: nothing listens at 10.0.0.1:6379), and ends like any other
        mallory.run(
            sparsity=0.65, tune_step=0.05, executor="ray", ray_address="10.0.0.1:6379", workers=64, tune_run=True
        )
        assert mallory.last.errors == [classroom.LOCKED_OUT], mallory.last.errors  # the lockout stays; no other
        flood = [Session(base, "Beta_tuning", WAIT_S) for _ in range(FLOOD_SESSIONS)]
        for session in flood:
            wait_for(session, "points stored")
            session.run()
        outcomes: list[list[str]] = [[] for _ in flood]
        renders: list[float] = []
        queued: list[int] = [0]
        lost = [0, 0]  # presses the page dropped (see click), of which in a run the script restarted itself

        def press(index: int) -> None:
            session = flood[index]
            for run in range(FLOOD_RUNS):  # ten different sweeps: sparsity and grid step differ
                values = {"sparsity": round(0.30 + 0.05 * run, 2), "tune_step": round(0.1 + 0.005 * index, 3)}
                session.run(**values)
                outcomes[index].append(click(session, values))

        def click(session: Session, values: dict[str, object]) -> str:
            """Press Run sweep: 'accepted' (the button is disabled now: the job runs, waits or is done), 'complete'
            (another sweep stored these points already: nothing to run), or the refusal's line. A press can be
            lost when the page reruns itself before it reads the button (the sidebar's follow() does that while
            other jobs store points); like a student, press again."""
            for _ in range(10):
                if "[Sweep complete" in session.last.text():
                    return "complete"
                # a browser sends every widget's value with a press: a rerun in between (another job's point
                # landing) cannot then put the grid step back to its default and make the sweep a 101-point one
                session.run(tune_run=True, **values)
                assert not session.last.exceptions, session.last.exceptions
                if session.last.errors:
                    return session.last.errors[0]
                if "missing) (disabled)]" in session.last.text():
                    return "accepted"
                lost[0] += 1
                lost[1] += session.restarted
            raise AssertionError(f"ten presses lost: {session.last.text()[-400:]}")

        threads = [threading.Thread(target=press, args=(i,)) for i in range(FLOOD_SESSIONS)]
        flood_start = time.monotonic()
        for thread in threads:
            thread.start()
        while any(thread.is_alive() for thread in threads):  # Alice's page, rerun as her fragment would
            renders.append(alice.run())
            assert not alice.last.exceptions, alice.last.exceptions
            queued.extend(int(n) for n in re.findall(r"(\d+) job\(s\) queued on this model", alice.last.text()))
            time.sleep(0.2)
        for thread in threads:
            thread.join(WAIT_S)
        flood_s = time.monotonic() - flood_start
        alice_done = wait_for(alice, "5 of 5 points stored")

        accepted = sum(o.count("accepted") for o in outcomes)
        refusals = [line for o in outcomes for line in o if line not in ("accepted", "complete")]
        assert refusals and all("\n" not in line and "allowed" in line for line in refusals), refusals
        assert all(o.count("accepted") < FLOOD_RUNS for o in outcomes), outcomes  # each session was capped
        assert any("2 at once" in line for line in refusals) and any("queue is full" in line for line in refusals)
        # the queue Alice's status box showed while the flood ran: the cap (8 of the sessions') + the server's own
        assert max(queued) <= classroom.Limits().queued_jobs + 1, queued
        assert all(("2 at once" in line or "queue is full" in line) for line in refusals), set(refusals)

        # every accepted job ends (they are small); then the store holds exactly what the jobs stored
        deadline = time.monotonic() + WAIT_S
        while True:
            log = [json.loads(line) for line in job_log.read_text().splitlines()] if job_log.exists() else []
            sweeps = [job for job in log if job["label"].startswith("beta sweep")]
            if len(sweeps) >= accepted + 2:  # and Alice's and Mallory's
                break
            assert time.monotonic() < deadline, f"{len(sweeps)} of {accepted + 2} sweeps ended"
            time.sleep(1)
        peak = rss_peak_mib(server.pid)
        for session in (alice, mallory, *flood):
            session.close()
    keys = [row["key"] for row in point_rows(store)]
    assert all(job["state"] == "done" and job["error"] is None for job in sweeps), sweeps
    # every point once; every row came from a job that ran (a job also counts the points it read back: the
    # uniform baseline is shared by every sweep at one sparsity)
    assert len(keys) == len(set(keys)) and len(keys) <= sum(job["stored"] for job in sweeps)
    assert {row["model"] for row in point_rows(store)} == {model}
    assert all(row["config"]["calib_samples"] <= 16 for row in point_rows(store))
    alice_job = min(sweeps, key=lambda job: job["id"])
    assert alice_job["label"] == "beta sweep at S = 0.7" and alice_job["stored"] == 5

    # -------------------------------------------------------------- the teacher restarts the server
    with dashboard_process(env, tmp_path / "streamlit-again.log") as (base, _server):
        again = Session(base, "Beta_tuning", WAIT_S)
        wait_for(again, "points stored")
        again.run()
        wait_for(again, "5 of 5 points stored", tune_step=0.05)
        again.close()
    assert len(point_rows(store)) == len(keys)

    numbers |= {
        "command": "pytest tests/test_classroom_hostile.py -m slow",
        "sessions": 2 + FLOOD_SESSIONS,
        "flood_runs_per_session": FLOOD_RUNS,
        "flood_seconds": round(flood_s, 2),
        "accepted_flood_jobs": accepted,
        "refused_flood_requests": len(refusals),
        "most_jobs_queued_seen": max(queued),
        "presses_lost": lost[0],
        "presses_lost_in_a_run_the_page_restarted": lost[1],
        "refusal_kinds": sorted({line.split(";")[0].split("(")[0].strip() for line in refusals}),
        "forged_requests_refused": len(lines),
        "render_s_before_flood": {"median": round(statistics.median(baseline), 3), "max": round(max(baseline), 3)},
        "render_s_under_flood": {
            "count": len(renders),
            "median": round(statistics.median(renders), 3) if renders else None,
            "p90": round(sorted(renders)[int(0.9 * (len(renders) - 1))], 3) if renders else None,
            "max": round(max(renders), 3) if renders else None,
        },
        "alice_last_render_s": round(alice_done, 3),
        "point_rows": len(keys),
        "server_peak_rss_mib": round(peak),
        "wall_s": round(time.monotonic() - started, 1),
    }
    print(json.dumps(numbers, indent=2))
    if os.environ.get("ATP_VIZ_WRITE_RESULTS"):
        RESULTS.write_text(json.dumps(numbers, indent=2) + "\n")
