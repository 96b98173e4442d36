"""A search sweep (hparams_search=optuna) in the comparison: its best trial per architecture.

Trial runs carry a `trial` tag. The table shows, per architecture, the FINISHED trial with
the best validation top-1; the counts say how many trials ran, were pruned or failed.
"""

from collections.abc import Sequence
from dataclasses import dataclass

from comparison.collect import RunRecord


@dataclass(frozen=True)
class ArchitectureSearch:
    architecture: str
    trials: int
    pruned: int
    failed: int
    running: int
    best: RunRecord | None

    def line(self) -> str:
        counts = f"{self.trials} trials, {self.pruned} pruned, {self.failed} failed" + (
            f", {self.running} running" if self.running else ""
        )
        if self.best is None:
            return f"{self.architecture}: {counts}; no trial finished"
        return (
            f"{self.architecture}: best of {counts} is trial {self.best.tags['trial']} "
            f"(run {self.best.run_id}, best val top-1 "
            f"{self.best.metrics['best_val_top1']:.2f} %)"
        )


def is_pruned(run: RunRecord) -> bool:
    return run.tags.get("pruned") == "true"


def summarize_search(runs: Sequence[RunRecord]) -> list[ArchitectureSearch] | None:
    """Per architecture, the best finished trial and the trial counts; None unless a search."""
    trials = [run for run in runs if "trial" in run.tags]
    if not trials:
        return None
    summaries = []
    for architecture in sorted({run.architecture for run in trials}):
        mine = [run for run in trials if run.architecture == architecture]
        finished = [
            run
            for run in mine
            if run.status == "FINISHED" and not is_pruned(run) and "best_val_top1" in run.metrics
        ]
        best = max(finished, key=lambda run: run.metrics["best_val_top1"], default=None)
        summaries.append(
            ArchitectureSearch(
                architecture=architecture,
                trials=len(mine),
                pruned=sum(is_pruned(run) for run in mine),
                failed=sum(run.status == "FAILED" for run in mine),
                running=sum(run.status == "RUNNING" for run in mine),
                best=best,
            )
        )
    return summaries


def table_runs(runs: Sequence[RunRecord], search: list[ArchitectureSearch] | None):
    """The runs the table shows: all of them, or a search's best trial per architecture."""
    if search is None:
        return list(runs)
    return [summary.best for summary in search if summary.best is not None]
