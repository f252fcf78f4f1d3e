""""Run the demo path" clicked in the real dashboard: when the first result and the end show on Home, what the
server spent, and screenshots during and after — to compare with the same job from the CLI
(bench/demo_path_speed.py): the dashboard's own overhead (reruns, the polling fragment, progress) is the
difference.

Starts ``streamlit run app.py`` over ``$CLIPCAL_CACHE`` (``--clean`` empties it first), opens Home in Debian's
headless Chromium (Playwright), clicks the button and polls the page once a second. Prints one JSON line: seconds
from the click to "First results" and to "Demo path finished", the job's own elapsed time as Home states it,
the server's CPU seconds over the job (its threads and finished children: DataLoader workers), the 1-minute
load before / after. Screenshots: ``<shots>/demo-path-{running,first-results,done}.png``.

Usage::

    CLIPCAL_CACHE=/tmp/demo-dash ../shared/tools/quiet .venv/bin/python bench/demo_path_dashboard.py --clean
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.request import urlopen

ROOT = Path(__file__).resolve().parent.parent


def load1() -> float:
    """The 1-minute load average."""
    return float(Path("/proc/loadavg").read_text().split()[0])


def cpu_s(pid: int) -> float:
    """CPU seconds of process ``pid``: user + system of its threads and of its waited-for children."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / os.sysconf("SC_CLK_TCK")


def main(argv=None) -> dict:
    """Run the demo path from Home once; return (and print) the record."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clean", action="store_true", help="delete $CLIPCAL_CACHE first (a clean store)")
    ap.add_argument("--port", type=int, default=8591)
    ap.add_argument("--shots", default=str(ROOT / "artifacts" / "screenshots"))
    ap.add_argument("--timeout-s", type=float, default=2400)
    args = ap.parse_args(argv)
    cache = os.environ.get("CLIPCAL_CACHE")
    if not cache:
        ap.error("set CLIPCAL_CACHE to a scratch store")
    if args.clean:
        shutil.rmtree(cache, ignore_errors=True)
    shots = Path(args.shots)
    shots.mkdir(parents=True, exist_ok=True)
    log = open(shots / "demo-path-dashboard-server.log", "w")
    server = subprocess.Popen(
        [str(ROOT / ".venv" / "bin" / "streamlit"), "run", "app.py", "--server.headless", "true",
         "--server.port", str(args.port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
         "--server.fileWatcherType", "none"],
        cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)
    url = f"http://127.0.0.1:{args.port}"
    rec: dict = {"load_before": load1(), "store": cache}
    try:
        for _ in range(600):
            try:
                if urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                time.sleep(0.5)
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1500, "height": 2400})
            page.set_default_timeout(300_000)
            page.goto(url)
            button = page.get_by_role("button", name=re.compile("Run the demo path"))
            button.wait_for()
            time.sleep(2)  # the first script run settles
            cpu0, t0 = cpu_s(server.pid), time.monotonic()
            button.click()
            shot_running = False
            while time.monotonic() - t0 < args.timeout_s:
                time.sleep(1)
                text = page.inner_text("body")
                el = round(time.monotonic() - t0, 1)
                if not shot_running and el > 20:
                    page.screenshot(path=str(shots / "demo-path-running.png"), full_page=True)
                    shot_running = True
                if "first_results_s" not in rec and "First results" in text:
                    rec["first_results_s"] = el
                    time.sleep(3)  # the story's figures and images render
                    page.screenshot(path=str(shots / "demo-path-first-results.png"), full_page=True)
                if "Demo path finished in" in text:
                    rec["done_s"] = el
                    rec["job_line"] = re.search(r"Demo path finished in [^:]*", text).group(0)
                    break
                if "failed" in text and "Demo path" in text and "Traceback" in text:
                    rec["failed"] = True
                    break
            rec["server_cpu_s"] = round(cpu_s(server.pid) - cpu0, 1)
            time.sleep(5)
            page.screenshot(path=str(shots / "demo-path-done.png"), full_page=True)
            browser.close()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(20)
    rec["load_after"] = load1()
    rec["shots"] = str(shots)
    print(json.dumps(rec))
    return rec


if __name__ == "__main__":
    sys.exit(0 if "done_s" in main() else 1)
