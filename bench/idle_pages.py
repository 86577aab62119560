"""What an open but idle dashboard page costs the server: CPU of ``streamlit run app.py`` with N idle tabs.

An open page costs the server nothing while nothing changes: one server thread (``ui.Watcher``) compares the
store's commit counter and the job manager's epoch with what each tab's page run recorded, once every
``ui.POLL_S`` seconds, and reruns only the tabs that are stale; no page runs a timed fragment. This measures it:
the server's CPU time (user + system, from /proc) over a fixed window with no tab open, then with
``--tabs`` tabs of headless Chromium (system build) open on ``--page`` and idle, on the embedded default model
with the shipped results (nothing computes). Printed and written as JSON: CPU seconds per second of wall time
(1.0 = one core busy) for each case, and the difference per open tab.

    .venv/bin/python bench/idle_pages.py --tabs 20 --json bench/results/idle_pages.json
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/lib/chromium/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-extensions", "--no-first-run",
         "--disable-quic"]  # fmt: skip


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load(pid: int, window: float) -> float:
    """CPU seconds the process used per wall-clock second over ``window`` seconds."""
    start_cpu, start = cpu_seconds(pid), time.monotonic()
    time.sleep(window)
    return (cpu_seconds(pid) - start_cpu) / (time.monotonic() - start)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tabs", type=int, default=20, help="idle tabs to open (default 20)")
    parser.add_argument("--page", default="Beta_tuning", help="URL path of the page they show (default Beta_tuning)")
    parser.add_argument("--window", type=float, default=30.0, help="seconds each CPU measurement lasts (default 30)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if not 1 <= args.tabs <= 50 or args.window <= 0:
        parser.error("--tabs must be in [1, 50] and --window > 0")
    from playwright.sync_api import sync_playwright

    port, store = free_port(), Path(tempfile.mkdtemp()) / "results.sqlite"
    env = {**os.environ, "ATP_VIZ_STORE": str(store), "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
               "--server.address", "127.0.0.1", "--server.headless", "true"]  # fmt: skip
    server = subprocess.Popen(command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    out: dict[str, Any] = {"tabs": args.tabs, "page": args.page, "window_s": args.window, "cores": os.cpu_count()}
    try:
        for _ in range(120):
            try:
                if urllib.request.urlopen(f"{base}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                time.sleep(0.5)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
            first = browser.new_page()
            first.set_default_timeout(300_000)
            first.goto(f"{base}/{args.page}", wait_until="domcontentloaded")
            first.locator(".js-plotly-plot .main-svg").first.wait_for(state="visible")  # model loaded, sweep drawn
            first.close()
            time.sleep(5)  # the last session's teardown
            out["server_cpu_no_tab"] = load(server.pid, args.window)
            tabs = []
            for i in range(args.tabs):
                tab = browser.new_context().new_page()
                tab.set_default_timeout(300_000)
                tab.goto(f"{base}/{args.page}", wait_until="domcontentloaded")
                tab.locator(".js-plotly-plot .main-svg").first.wait_for(state="visible")
                tabs.append(tab)
                print(f"tab {i + 1} of {args.tabs} open", file=sys.stderr)
            time.sleep(5)  # every tab drawn and idle
            out["server_cpu_idle_tabs"] = load(server.pid, args.window)
            browser.close()
    finally:
        server.terminate()
        server.wait(30)
    out["per_tab_cpu"] = (out["server_cpu_idle_tabs"] - out["server_cpu_no_tab"]) / args.tabs
    out["measured"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(
        f"server CPU: {out['server_cpu_no_tab']:.3f} core with no tab, {out['server_cpu_idle_tabs']:.3f} core with "
        f"{args.tabs} idle tabs on /{args.page} ({out['per_tab_cpu'] * 1000:.1f} ms of CPU per second per tab)"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
