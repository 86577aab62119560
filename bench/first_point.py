"""Time to the first point of a dashboard sweep, from a fresh process, with the model already cached.

Two measurements:

``--dashboard`` (what a user waits for): the clock starts before a fresh ``streamlit run app.py``
server is launched; headless Chromium (system build, /usr/lib/chromium/chromium) opens Beta tuning
and waits until the shipped default sweep is drawn ("N of N points stored": ``shipped_points_shown_s``),
sets the sidebar's calibration seed to ``--seed`` (1: nothing shipped), presses "Run sweep" as soon as
the page offers it (the model loads in the background as the app opens), and the clock stops when
the page itself shows "1 of N points stored" (no reload).

default (library only): the clock starts before ``import atp_viz`` and stops when the first point of
``Workbench.run_many(sweep_specs(...))`` is back, after the dense perplexity (the order the dashboard used
before it loaded in the background).

Dashboard settings (atp_viz/dashboard/ui.py defaults): smollm2-135m, calibration 8 x 256, evaluation 8 x 256
tokens, Wanda, S = 0.7, grid step 0.002, an empty results store. The corpus token ids come from the
disk cache after the first run on a machine; pass --cold-tokens to time a fresh tokenization too
(library mode).

    .venv/bin/python bench/first_point.py --dashboard --json bench/results/first_point_dashboard.json
    .venv/bin/python bench/first_point.py                       # sequential (dashboard default)
    .venv/bin/python bench/first_point.py --calibration cached
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import urllib.request  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CHROMIUM = "/usr/lib/chromium/chromium"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]  # fmt: skip


def library(args: argparse.Namespace) -> dict[str, object]:
    import torch

    torch.set_num_threads(args.threads)
    marks: dict[str, float] = {}
    from atp_viz.config import CalibConfig, EvalConfig
    from atp_viz.experiment.workbench import Setup, Workbench, sweep_specs
    from atp_viz.models import data
    from atp_viz.store import ResultStore

    if args.cold_tokens:
        data.DISK_TOKENS_MIN_CHARS = 10**12
    marks["imports_s"] = time.perf_counter() - STARTED
    store = ResultStore(Path(tempfile.mkdtemp(prefix="atp-viz-first-")) / "results.sqlite")
    setup = Setup(calib=CalibConfig(8, 256), evaluation=EvalConfig(8, 256, 4), calibration=args.calibration)
    wb = Workbench(setup, store)
    marks["workbench_s"] = time.perf_counter() - STARTED
    wb.dense_perplexity()
    marks["dense_ppl_s"] = time.perf_counter() - STARTED
    first = next(iter(wb.run_many(sweep_specs(wb.num_blocks, 0.7))))
    marks["first_point_s"] = time.perf_counter() - STARTED
    print(
        f"first point ({args.calibration}, ppl {first.perplexity:.1f}) after {marks['first_point_s']:.1f} s: "
        + ", ".join(f"{k} {v:.1f}" for k, v in marks.items())
        + f"; stats from {wb.stats_source or '-'}"
    )
    return {**marks, "mode": "library", "calibration": args.calibration, "stats_source": wb.stats_source}


def dashboard(args: argparse.Namespace) -> dict[str, object]:
    from playwright.sync_api import sync_playwright

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    folder = Path(tempfile.mkdtemp(prefix="atp-viz-first-"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ATP_VIZ_STORE": str(folder / "results.sqlite"),
           "OMP_NUM_THREADS": str(args.threads), "ATP_VIZ_JOB_LOG": str(folder / "jobs.jsonl")}  # fmt: skip
    command = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true", "--server.port",
               str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"]  # fmt: skip
    marks: dict[str, float] = {}
    clock = time.perf_counter()
    with (folder / "streamlit.log").open("w") as log:
        server = subprocess.Popen(command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                if urllib.request.urlopen(f"{base}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                time.sleep(0.1)
        marks["server_up_s"] = time.perf_counter() - clock
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport={"width": 1300, "height": 1300})
            page.set_default_timeout(600_000)
            page.goto(f"{base}/Beta_tuning", wait_until="domcontentloaded")
            page.get_by_text("Beta tuning", exact=True).first.wait_for()
            marks["page_shown_s"] = time.perf_counter() - clock
            page.get_by_text(re.compile(r"\b[1-9]\d* of \d+ points stored")).wait_for()
            marks["shipped_points_shown_s"] = time.perf_counter() - clock
            seed = page.get_by_label("Seed", exact=True)
            seed.fill(str(args.seed))
            seed.press("Enter")
            page.get_by_text(re.compile(r"\b0 of \d+ points stored")).wait_for()
            run = page.get_by_role("button", name=re.compile("^Run sweep"))
            run.wait_for()
            marks["model_ready_s"] = time.perf_counter() - clock
            run.click()
            clicked = time.perf_counter()
            page.get_by_text(re.compile(r"\b1 of \d+ points stored")).wait_for()
            marks["first_point_s"] = time.perf_counter() - clock
            marks["click_to_point_s"] = time.perf_counter() - clicked
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    jobs = [json.loads(line) for line in (folder / "jobs.jsonl").read_text().splitlines()]
    order = [f"{job['label']} ({job['ended'] - job['started']:.1f} s, {job['state']})" for job in jobs]
    print(
        f"first dashboard point after {marks['first_point_s']:.1f} s: "
        + ", ".join(f"{k} {v:.1f}" for k, v in marks.items())
    )
    print("server jobs in order: " + "; ".join(order))
    return {**marks, "mode": "dashboard", "calibration": "sequential", "jobs": order}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dashboard", action="store_true", help="a fresh server and a headless browser")
    parser.add_argument("--calibration", default="sequential", choices=("sequential", "cached"))
    parser.add_argument("--cold-tokens", action="store_true", help="ignore the on-disk token ids")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the server's OMP_NUM_THREADS)")
    parser.add_argument("--seed", type=int, default=1, help="dashboard: the calibration seed set before the sweep")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    result = dashboard(args) if args.dashboard else library(args)
    result |= {"threads": args.threads, "load_average": os.getloadavg()[0], "date": time.strftime("%Y-%m-%d")}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
