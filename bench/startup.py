"""How fast the CLI answers: `python train.py ARGS` against `python -c "import hydra"`.

    python bench/startup.py                 # --help, 10 runs each
    python bench/startup.py --runs 20 -- --cfg job model=vit

Alternates the two commands so both see the same machine load, and prints the median wall
and CPU (user + system) time of each and their ratios. On a busy machine the CPU times are
the ones to trust. The floor is starting Python and importing Hydra, which train.py cannot
avoid.
"""

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def timed(command: list[str]) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of one run of the command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True, capture_output=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("args", nargs="*", default=["--help"], help="train.py's arguments")
    options = parser.parse_args()
    train = [sys.executable, "train.py", *options.args]
    floor = [sys.executable, "-c", "import hydra"]
    timed(train)  # warm the file cache and __pycache__
    runs: dict[str, list[tuple[float, float]]] = {"train": [], "floor": []}
    for _ in range(options.runs):
        runs["train"].append(timed(train))
        runs["floor"].append(timed(floor))
    names = {"train": f"python train.py {' '.join(options.args)}", "floor": "import hydra"}
    medians = {}
    for key, name in names.items():
        wall, cpu = (statistics.median(run[i] for run in runs[key]) for i in (0, 1))
        medians[key] = wall, cpu
        print(f"{name}: median wall {wall:.2f} s, cpu {cpu:.2f} s ({options.runs} runs)")
    (train_wall, train_cpu), (floor_wall, floor_cpu) = medians["train"], medians["floor"]
    print(f"ratio: wall {train_wall / floor_wall:.1f}, cpu {train_cpu / floor_cpu:.1f}")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
