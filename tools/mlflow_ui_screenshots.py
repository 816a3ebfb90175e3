"""Screenshots of the MLflow UI as a user first sees a sweep: the runs table, a run's charts, the
chart view, the compare view and the compare plot, taken with headless Chromium.

    pip install -e ".[ui]"            # playwright (drives the browser)
    apt-get install chromium          # Debian's Chromium: the browser itself
    python tools/mlflow_ui_screenshots.py --tracking-uri sqlite:///$PWD/mlruns/mlflow.db \\
        --experiment ui-demo --sweep ui-demo --out docs/images

It starts `mlflow server` on the store (127.0.0.1, a free port), opens each page in Chromium as a
first-time visitor would (MLflow's assistant panel closed, the "Model training" view; in the
runs table the sweep's parent run expanded and "Show more columns" clicked), waits for the page
to settle, writes one PNG per view, and stops the server. The
pictures in docs/mlflow-ui.md were made this way.
"""
from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(tracking_uri: str, port: int) -> subprocess.Popen:
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", tracking_uri,
                               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(120):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                if response.status == 200:
                    return server
        except OSError:
            time.sleep(1)
    server.kill()
    raise SystemExit(f"mlflow server on port {port} did not come up in 120 s")


def screenshot(page, url: str, path: Path, wait_s: float, prepare=None) -> None:
    page.goto(url, wait_until="load")  # (never "networkidle": the runs page polls the server)
    page.wait_for_timeout(int(wait_s * 1000))  # charts draw after the data arrives
    if prepare is not None:
        prepare(page)
        page.wait_for_timeout(int(wait_s * 1000))
    page.screenshot(path=str(path))
    print(f"{path}  <-  {url}")


def open_runs_table(sweep: str, metrics: list[str], chooser: Path):
    """As a user opens the runs table: the sweep's parent run expanded, "Show more columns" clicked
    (a picture of its list, which begins with the metrics), then the dev metrics ticked."""
    def prepare(page) -> None:
        name_cell = page.locator('[role=gridcell][col-id="attributes.`Run Name`"]').filter(has_text=sweep).first
        name_cell.locator("button").first.click()
        page.get_by_text("Show more columns").first.click()
        page.wait_for_timeout(1000)
        page.screenshot(path=str(chooser))
        print(f"{chooser}  <-  the runs table's column list")
        for metric in metrics:
            page.get_by_text(metric, exact=True).first.click()
        page.keyboard.press("Escape")
    return prepare


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tracking-uri", required=True, help="the MLflow store holding the sweep")
    parser.add_argument("--experiment", required=True, help="the sweep's experiment")
    parser.add_argument("--sweep", required=True, help="the sweep's id (its parent run holds compare/)")
    parser.add_argument("--out", default="docs/images", help="folder for the PNGs (default: docs/images)")
    parser.add_argument("--size", default="1920,1000", help="browser window, WIDTH,HEIGHT (default: 1920,1000)")
    parser.add_argument("--wait", type=float, default=5.0, help="seconds to wait after a page loads (default: 5)")
    args = parser.parse_args(argv)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        raise SystemExit("chromium not found: install Debian's chromium package (apt-get install chromium)")
    from mlflow.tracking import MlflowClient

    from harness.core import names
    from harness.sweeps.records import job_runs

    client = MlflowClient(args.tracking_uri)
    experiment = client.get_experiment_by_name(args.experiment)
    if experiment is None:
        raise SystemExit(f"no experiment {args.experiment!r} in {args.tracking_uri}")
    eid = experiment.experiment_id
    parents = client.search_runs([eid], f"tags.`{names.SWEEP_ID}` = '{args.sweep}' and "
                                        f"tags.`{names.SWEEP_ROLE}` = '{names.PARENT_ROLE}'")
    finished = [r for runs in job_runs(client, eid, args.sweep).values() for r in runs if r.info.status == "FINISHED"]
    if not parents or len(finished) < 2:
        raise SystemExit(f"sweep {args.sweep!r}: need its parent run and 2+ finished job runs in {args.experiment}")
    parent = parents[0]
    parent_tasks = finished[0].data.params.get(names.TASKS_PARAM, "").split(",")
    # One run of each variant (the lowest seed), in the sweep's order, for the run page and the compare view.
    order = parent.data.params.get(names.SWEEP_VARIANTS, "").split(",")
    first = {}
    for run in sorted(finished, key=lambda r: int(r.data.tags[names.SEED])):
        first.setdefault(run.data.tags[names.VARIANT], run)
    children = sorted(first.values(), key=lambda r: order.index(r.data.tags[names.VARIANT])
                      if r.data.tags[names.VARIANT] in order else len(order))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server = start_server(args.tracking_uri, port)
    base = f"http://127.0.0.1:{port}/#"
    run = children[0].info.run_id
    compared = [r.info.run_id for r in children[:4]]
    views = {
        "ui-runs-table.png": f"{base}/experiments/{eid}/runs",
        "ui-run-charts.png": f"{base}/experiments/{eid}/runs/{run}/model-metrics",
        "ui-chart-view.png": f"{base}/experiments/{eid}/runs?compareRunsMode=CHART",
        "ui-compare-runs.png": f"{base}/compare-runs?runs={urllib.parse.quote(json.dumps(compared))}"
                               f"&experiments={urllib.parse.quote(json.dumps([eid]))}",
        "ui-compare-plot.png": f"{base}/experiments/{eid}/runs/{parent.info.run_id}/artifacts/compare/overall.png",
    }
    width, height = map(int, args.size.split(","))
    # A first visit opens MLflow's assistant panel over a third of the page, and the sidebar in its
    # GenAI mode: a user closes the one and picks "Model training" in the other.
    init = ("localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');"
            "localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');"
            "localStorage.setItem('mlflow.workflowType_v1', '\"machine_learning\"');")
    from playwright.sync_api import sync_playwright

    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": width, "height": height})
            page.add_init_script(init)
            for name, url in views.items():
                prepare = None
                if name == "ui-runs-table.png":
                    tasks = [t for t in parent_tasks if t]
                    metrics = [names.overall_key()] + [names.primary_key(t) for t in tasks]
                    prepare = open_runs_table(parent.info.run_name, metrics, out / "ui-runs-columns.png")
                screenshot(page, url, out / name, args.wait, prepare)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
