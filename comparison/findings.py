"""findings.md: the reference study's claims, each restated with this sweep's numbers and a
verdict — supported, not supported, or not measured in this sweep.

Only the claims' wording lives here; every number comes from the store (the sweep's
predictions and curves) or from comparison/reference.py (the study's own numbers).
"""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from comparison.collect import SweepRecord
from comparison.reference import REFERENCE
from comparison.significance import ALPHA, RowStats, Significance, compare
from comparison.stats import LEVEL, PairedTest, holm
from tracking.values import latest_curve_value

FINDINGS = "findings.md"

SUPPORTED = "supported"
NOT_SUPPORTED = "not supported"
NOT_MEASURED = "not measured"
TRANSFER_STRATEGIES = ("freeze", "finetune")


@dataclass(frozen=True)
class Finding:
    title: str
    claim: str
    verdict: str
    reason: str  # one sentence: why this verdict
    evidence: tuple[str, ...] = ()  # this sweep's numbers, one Markdown line each


# -- formatting --------------------------------------------------------------------------------


def _pct(value: float) -> str:
    return f"{value * 100:.2f} %"


def _p(value: float) -> str:
    return f"{value:.2g}" if value >= 0.001 else f"{value:.1e}"


def _ci(low: float, high: float, signed: bool = True) -> str:
    sign = "+" if signed else ""
    return f"[{low * 100:{sign}.2f}, {high * 100:{sign}.2f}]"


def _row_text(stats: RowStats) -> str:
    row = stats.row
    interval = stats.top1_interval
    text = f"{stats.label} {_pct(stats.top1)}"
    if interval is not None:
        text += f" {_ci(interval.low, interval.high, signed=False)}"
    return text + f" (n={row.n}, {_setting(stats)})"


def _setting(stats: RowStats) -> str:
    run = stats.row.runs[0]
    pretrained = "pretrained" if _pretrained(stats) else "random init"
    epochs = run.params.get("trainer.epochs", "?")
    return (
        f"{stats.row.strategy or '?'}, {pretrained}, {epochs} epoch{'' if epochs == '1' else 's'}"
    )


def _pretrained(stats: RowStats) -> bool:
    return all(run.params.get("model.pretrained") == "True" for run in stats.row.runs)


def _test_text(a: RowStats, b: RowStats, test: PairedTest, p_holm: float | None = None) -> str:
    text = (
        f"{a.label} − {b.label}: Δ {test.difference * 100:+.2f} pts "
        f"{_ci(test.interval.low, test.interval.high)}, {test.method} p = {_p(test.p_value)}"
    )
    if test.a_only is not None:
        text += f" ({test.a_only} vs {test.b_only} discordant images)"
    if p_holm is not None:
        text += f", Holm p = {_p(p_holm)}"
    return text


def _beats(test: PairedTest | None, p_value: float | None = None) -> bool:
    p_value = test.p_value if p_value is None else p_value
    return test is not None and test.difference > 0 and p_value < ALPHA


def _reference_order() -> list[str]:
    return sorted(REFERENCE, key=lambda name: -REFERENCE[name].top1)


# -- the claims --------------------------------------------------------------------------------


def ranking(significance: Significance) -> Finding:
    order = _reference_order()
    claim = (
        "The five models rank "
        + " > ".join(order)
        + " in test top-1 ("
        + ", ".join(f"{REFERENCE[name].top1:.2f}" for name in order)
        + " %)."
    )
    present = [(name, significance.for_architecture(name)) for name in order]
    measured = [(name, stats) for name, stats in present if stats is not None]
    missing = [name for name, stats in present if stats is None]
    title = "The ranking of the five models"
    if len(measured) < 2:
        reason = "Fewer than two of the models have test predictions in this sweep."
        return Finding(title, claim, NOT_MEASURED, reason)
    pairs = list(zip(measured, measured[1:], strict=False))
    tests = [compare(upper, lower) for (_, upper), (_, lower) in pairs]
    if any(test is None for test in tests):
        return Finding(title, claim, NOT_MEASURED, "The models were tested on different images.")
    adjusted = holm([test.p_value for test in tests])
    ours = sorted((stats for _, stats in measured), key=lambda s: -s.top1)
    holm_note = f" (Holm over the {len(tests)} pairs)" if len(tests) > 1 else ""
    evidence = [
        "This sweep: " + "; ".join(_row_text(stats) for _, stats in measured) + ".",
        "Order by this sweep's top-1: " + " > ".join(s.row.architecture for s in ours) + ".",
        f"Each pair adjacent in the claimed order{holm_note}:",
        *(
            f"  - {_test_text(upper, lower, test, p if len(tests) > 1 else None)}"
            for ((_, upper), (_, lower)), test, p in zip(pairs, tests, adjusted, strict=True)
        ),
    ]
    scope = ""
    if missing:
        scope = f" Measured: {len(measured)} of the 5 models ({', '.join(missing)} not run)."
        evidence.append(f"Not in this sweep: {', '.join(missing)}.")
    failures = [
        (upper, lower, test, p)
        for ((_, upper), (_, lower)), test, p in zip(pairs, tests, adjusted, strict=True)
        if not _beats(test, p)
    ]
    if not failures:
        reason = f"Every adjacent pair is ordered as claimed at p < {ALPHA}{holm_note}.{scope}"
        return Finding(title, claim, SUPPORTED, reason, tuple(evidence))
    upper, lower, test, p = failures[0]
    if test.difference <= 0:
        why = f"{lower.label} scores {-test.difference * 100:.2f} pts above {upper.label}"
    else:
        p_name = "Holm p" if len(tests) > 1 else "p"
        why = f"{upper.label} is not significantly above {lower.label} ({p_name} = {_p(p)})"
    more = len(failures) - 1
    reason = why + (f"; {more} more pair{'s' * (more > 1)} fail too." if more else ".") + scope
    return Finding(title, claim, NOT_SUPPORTED, reason, tuple(evidence))


def generalization_gap(significance: Significance) -> Finding:
    cnns = [name for name, ref in REFERENCE.items() if ref.strategy == "scratch"]
    claim = (
        f"The from-scratch CNNs ({', '.join(cnns)}) fit the training set too well: at the "
        "epoch validation chose, their top-1 on training images is above their validation "
        "top-1."
    )
    title = "The from-scratch generalization gap"
    rows = [
        s
        for s in significance.rows
        if s.row.architecture in cnns and s.row.strategy == "scratch" and s.gap is not None
    ]
    if not rows:
        reason = (
            "No from-scratch CNN run of this sweep logged train_eval_top1 "
            "(trainer.train_eval_size > 0)."
        )
        return Finding(title, claim, NOT_MEASURED, reason)
    adjusted = holm([s.gap.p_value for s in rows])
    evidence = [
        f"Top-1 on {_train_images(rows)} fixed training images (no augmentation) − validation "
        f"top-1, at the best epoch ({LEVEL * 100:.0f} % interval; Holm over {len(rows)} rows):"
    ]
    for s, p in zip(rows, adjusted, strict=True):
        gap = s.gap
        evidence.append(
            f"  - {s.label} (n={s.row.n}): {_pct(gap.train)} − {_pct(gap.val)} = "
            f"{gap.value * 100:+.2f} pts {_ci(gap.interval.low, gap.interval.high)}, "
            f"p = {_p(gap.p_value)}, Holm p = {_p(p)}"
        )
    without = [
        s.label for s, p in zip(rows, adjusted, strict=True) if not (s.gap.value > 0 and p < ALPHA)
    ]
    if without:
        reason = f"No significant gap (p < {ALPHA}, Holm) for: {', '.join(without)}."
        return Finding(title, claim, NOT_SUPPORTED, reason, tuple(evidence))
    mean_gap = sum(s.gap.value for s in rows) / len(rows)
    reason = (
        f"Every from-scratch CNN measured shows a gap at p < {ALPHA} (Holm); "
        f"{mean_gap * 100:.2f} pts on average."
    )
    return Finding(title, claim, SUPPORTED, reason, tuple(evidence))


def _train_images(rows: Sequence[RowStats]) -> str:
    sizes = {
        int(latest_curve_value(run.metrics, "train_eval_images") or 0)
        for s in rows
        for run in s.row.runs
    }
    return "/".join(f"{size:,}" for size in sorted(sizes))


def _pairwise(
    title: str, claim: str, winner: RowStats | None, loser: RowStats | None, missing: str
) -> Finding:
    if winner is None or loser is None:
        return Finding(title, claim, NOT_MEASURED, missing)
    test = compare(winner, loser)
    if test is None:
        return Finding(title, claim, NOT_MEASURED, "The two were tested on different images.")
    evidence = (
        f"This sweep: {_row_text(winner)}; {_row_text(loser)}.",
        _test_text(winner, loser, test) + ".",
    )
    if _beats(test):
        reason = f"{winner.label} is above {loser.label} at p < {ALPHA}."
        return Finding(title, claim, SUPPORTED, reason, evidence)
    if test.difference <= 0:
        reason = f"{loser.label} scores {-test.difference * 100:.2f} pts above {winner.label}."
    else:
        reason = f"{winner.label} is above, but not significantly (p = {_p(test.p_value)})."
    return Finding(title, claim, NOT_SUPPORTED, reason, evidence)


def transfer_beats_scratch(significance: Significance) -> Finding:
    claim = (
        "Transfer learning beats training from scratch: the best pretrained model "
        "(frozen or fine-tuned) scores a higher test top-1 than the best from-scratch model."
    )
    transfer = [
        s for s in significance.rows if s.row.strategy in TRANSFER_STRATEGIES and _pretrained(s)
    ]
    scratch = [s for s in significance.rows if s.row.strategy == "scratch"]
    missing = []
    for rows, what in (
        (transfer, "started from pretrained weights"),
        (scratch, "trained from scratch"),
    ):
        if not rows:
            missing.append(f"no run {what}")
        elif not any(s.measured for s in rows):
            missing.append(f"the runs that {what} have no test predictions")
    return _pairwise(
        "Transfer learning beats training from scratch",
        claim,
        max((s for s in transfer if s.measured), key=lambda s: s.top1, default=None),
        max((s for s in scratch if s.measured), key=lambda s: s.top1, default=None),
        "In this sweep " + " and ".join(missing) + ".",
    )


def vit_beats_effnetv2(significance: Significance) -> Finding:
    claim = (
        f"ViT beats EfficientNetV2 ({REFERENCE['vit'].top1:.2f} % vs "
        f"{REFERENCE['effnetv2'].top1:.2f} %)."
    )
    vit, effnet = significance.for_architecture("vit"), significance.for_architecture("effnetv2")
    absent = [name for name, s in (("vit", vit), ("effnetv2", effnet)) if s is None]
    return _pairwise(
        "ViT beats EfficientNetV2",
        claim,
        vit,
        effnet,
        f"No test predictions for {' and '.join(absent)} in this sweep.",
    )


CLAIMS = (ranking, generalization_gap, transfer_beats_scratch, vit_beats_effnetv2)


def findings(significance: Significance) -> list[Finding]:
    return [claim(significance) for claim in CLAIMS]


# -- the file ----------------------------------------------------------------------------------


def _data_sources(sweep: SweepRecord) -> str:
    sources = sorted({run.tags.get("dataset_id", "?") for run in sweep.runs})
    return ", ".join(f"`{source}`" for source in sources) or "none"


def render_findings(sweep: SweepRecord, results: Sequence[Finding]) -> str:
    lines = [
        f"# Findings — sweep {sweep.sweep_id}",
        "",
        f"The reference study's claims, each restated with the numbers of sweep "
        f"`{sweep.sweep_id}` (experiment `{sweep.experiment}`, overrides "
        f"`{sweep.overrides or '(none)'}`, data {_data_sources(sweep)}).",
        "",
        f"Verdicts: **{SUPPORTED}** — this sweep shows it at p < {ALPHA}; **{NOT_SUPPORTED}** "
        f"— it does not (the opposite, or a difference it cannot tell from chance); "
        f"**{NOT_MEASURED}** — the sweep has no data for it. Intervals are {LEVEL * 100:.0f} % "
        "bootstrap intervals over test images (training and validation images for the gap); "
        "p-values are two-sided; models are compared on the same test images, by the exact "
        "McNemar test for single runs and a paired bootstrap over seeds' means otherwise. "
        "Generated from the tracking store by compare.py; see comparison.md for the table.",
        "",
    ]
    for number, finding in enumerate(results, start=1):
        lines += [
            f"## {number}. {finding.title}",
            "",
            f"**Claim** (the reference study): {finding.claim}",
            "",
        ]
        if finding.evidence:
            lines += [line if line.startswith("  ") else f"- {line}" for line in finding.evidence]
            lines.append("")
        lines += [f"**Verdict: {finding.verdict}.** {finding.reason}", ""]
    return "\n".join(lines)


def write_findings(sweep: SweepRecord, significance: Significance, out_dir: Path) -> Path:
    path = Path(out_dir) / FINDINGS
    path.write_text(render_findings(sweep, findings(significance)))
    return path
