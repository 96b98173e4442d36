"""Screenshots of the MLflow UI pages a user visits, from a real tracking store.

    python docs/screenshots.py                                   # mlruns/mlflow.db -> docs/
    python docs/screenshots.py --tracking-uri sqlite:///x/mlflow.db --out /tmp/shots

Starts `mlflow server` on 127.0.0.1 (a free port), opens each page in headless Chromium
(Debian's `chromium`; `apt-get install -y chromium`) through Playwright, and writes one PNG
per page: the experiment as it opens, the sweep's runs table, the chart view, a child run,
that run's model metrics and system metrics, the sweep parent's description, and the Models
tab. The latest sweep with runs is shown; --model picks the child run.
"""

import argparse
import io
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from mlflow import MlflowClient  # noqa: E402
from PIL import Image  # noqa: E402

from comparison import load_sweep  # noqa: E402
from comparison.summary import TRAINING_MODE  # noqa: E402
from tracking.ui import chromium_page, mlflow_server  # noqa: E402

# A page is ready once this text shows; then a short settle for charts to draw. Every page
# asks for MLflow's "Model training" mode, as the links the repo writes do.
PAGES = {
    "runs-table": ("#/experiments/{experiment}/runs?viewStateShareKey={sweep}&{mode}", "{model}"),
    "experiment": ("#/experiments/{experiment}/runs?{mode}", "matching runs"),
    "chart-view": (
        "#/experiments/{experiment}/runs?viewStateShareKey={sweep}&compareRunsMode=CHART&{mode}",
        "val_top1",
    ),
    "child-run": ("#/experiments/{experiment}/runs/{child}?{mode}", "test_top1"),
    "child-metrics": ("#/experiments/{experiment}/runs/{child}/model-metrics?{mode}", "val_top1"),
    "child-system-metrics": (
        "#/experiments/{experiment}/runs/{child}/system-metrics?{mode}",
        "cpu",
    ),
    "parent-description": ("#/experiments/{experiment}/runs/{parent}?{mode}", "test top-1"),
    "models": ("#/experiments/{experiment}/models?{mode}", "{model}"),
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tracking-uri", default="sqlite:///mlruns/mlflow.db")
    parser.add_argument("--experiment", default="cifar100")
    parser.add_argument("--sweep", help="sweep id (default: the latest with runs)")
    parser.add_argument("--model", default="resnet18", help="the child run to show")
    parser.add_argument("--out", type=Path, default=REPO / "docs")
    parser.add_argument("--prefix", default="mlflow-", help="file name prefix")
    parser.add_argument("--pages", nargs="*", default=list(PAGES), choices=list(PAGES))
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=850)
    return parser.parse_args(argv)


def save_small(png: bytes, path: Path, colours: int = 128) -> None:
    """A palette PNG: UI screenshots are flat colours, so this keeps them a few 100 KB."""
    image = Image.open(io.BytesIO(png)).convert("RGB")
    image.quantize(colours, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def ids(args) -> dict[str, str]:
    sweep = load_sweep(args.tracking_uri, args.experiment, args.sweep)
    child = next((run for run in sweep.runs if run.architecture == args.model), None)
    if child is None:
        names = ", ".join(sorted({run.architecture for run in sweep.runs}))
        raise SystemExit(
            f"--model {args.model}: not in sweep {sweep.sweep_id}; pass one of {names}"
        )
    return {
        "experiment": sweep.experiment_id,
        "parent": sweep.parent_run_id,
        "child": child.run_id,
        "model": args.model,
        "sweep": sweep.sweep_id,
        "mode": TRAINING_MODE,
    }


def _tidy(page) -> None:
    """Closes the assistant panel and the shared-view banner, which hide half the page, and
    unfolds a long run description (the parent's table)."""
    for label in ("Close", "Hide banner"):
        button = page.locator(f'button[aria-label="{label}"]')
        if button.count():
            button.first.click()
    more = page.get_by_text("Show more", exact=True)
    if more.count():
        more.first.click()


def take(args) -> list[Path]:
    values = ids(args)
    args.out.mkdir(parents=True, exist_ok=True)
    written = []
    with (
        mlflow_server(args.tracking_uri, timeout=600) as url,
        chromium_page(args.width, args.height) as page,
    ):
        for name in args.pages:
            route, ready = PAGES[name]
            page.goto("about:blank")  # a fresh load: the runs page keeps a shared view's state
            page.goto(f"{url}/{route.format(**values)}")
            page.get_by_text(ready.format(**values)).first.wait_for(timeout=60_000)
            _tidy(page)
            page.wait_for_timeout(2500)  # charts animate in
            path = args.out / f"{args.prefix}{name}.png"
            save_small(page.screenshot(), path)
            written.append(path)
            print(f"{path} ({path.stat().st_size // 1024} KB)")
    return written


def main(argv=None) -> int:
    args = parse_args(argv)
    MlflowClient(args.tracking_uri)  # fails early on a bad URI
    take(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
