"""The experiment's report: tables (Markdown + CSV) and plots (PNG) from eval results.

Reads only the run directory (eval/<name>/<task>.json, the done-markers, the
data dir's dataset cards), so it can be rebuilt at any time:

    report/robustness.{md,csv}   the base policy on every task
    report/finetune.{md,csv}     fine-tuning by target size, with the base policy
    report/baselines.{md,csv}    finetune vs scratch vs imagenet at the largest size
    report/continual.{md,csv}    each link of the chain next to the single-step fine-tune
    report/findings.{md,csv}     the study's findings as differences with intervals, and
                                 how many challenges show each (when all four tables exist)
    report/finetune.png          success vs target grasps, one panel per task
    report/continual.png         the chain: success on each link's task, and on base
    report/README.md             all of the above with the dataset versions, every
                                 checkpoint's data and config, and the scale

Every success rate comes with its Wilson 95% interval and episode count; every
difference of two rates with a 95% interval, paired by episode where both
evaluations recorded their outcomes on the same seeds.
"""

import csv
import json
import os
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

from neverstop import jsonfile
from neverstop.envs import rollout
from neverstop.workflows import dag

REPORT_DIR = "report"


EVAL_KEYS = ("success_rate", "successes", "episodes", "interval_95")


def _load_eval(run_dir: str, name: str, task: str) -> Optional[dict]:
    """One evaluation's result, None if it has not run; a damaged file is an
    error that names it (the report is derived, so it is rebuilt once fixed)."""
    path = os.path.join(run_dir, "eval", name, f"{task}.json")
    return read_eval(path) if os.path.exists(path) else None


def read_eval(path: str) -> dict:
    """An evaluation's result (neverstop eval's JSON), checked: a file that does
    not parse, lacks a key or whose outcomes disagree with its counts is an
    error that names it."""
    result = jsonfile.read(path)
    missing = [k for k in EVAL_KEYS if not isinstance(result, dict) or k not in result]
    if missing:
        raise ValueError(
            f"{path}: expected an evaluation result (neverstop eval's JSON) with "
            f"{', '.join(EVAL_KEYS)}; missing {', '.join(missing)}"
        )
    episodes, successes = result["episodes"], result["successes"]
    if not (
        isinstance(episodes, int)
        and isinstance(successes, int)
        and 0 <= successes <= episodes
        and episodes >= 1
    ):
        raise ValueError(
            f"{path}: expected 'episodes' >= 1 and 0 <= 'successes' <= 'episodes' (integers), "
            f"got episodes {episodes!r}, successes {successes!r}"
        )
    outcomes = result.get("outcomes")  # absent in results written before it was recorded
    if outcomes is not None and not (
        isinstance(outcomes, str)
        and len(outcomes) == result["episodes"]
        and set(outcomes) <= {"0", "1"}
        and outcomes.count("1") == result["successes"]
    ):
        raise ValueError(
            f"{path}: expected 'outcomes' to be one '0' or '1' per episode "
            f"({result['episodes']}) with {result['successes']} '1's, got {outcomes!r:.80}"
        )
    return result


def _pct(result: Optional[dict]) -> str:
    if result is None:
        return "n/a"
    low, high = result["interval_95"]
    return f"{result['success_rate']:.1%} [{low:.1%}, {high:.1%}] (n={result['episodes']})"


def _cells(prefix: str, result: Optional[dict]) -> Dict[str, object]:
    """CSV columns <prefix>success, <prefix>ci_low, <prefix>ci_high, <prefix>episodes."""
    if result is None:
        return {f"{prefix}{k}": "" for k in ("success", "ci_low", "ci_high", "episodes")}
    low, high = result["interval_95"]
    return {
        f"{prefix}success": round(result["success_rate"], 4),
        f"{prefix}ci_low": round(low, 4),
        f"{prefix}ci_high": round(high, 4),
        f"{prefix}episodes": result["episodes"],
    }


def _write_table(out_dir: str, name: str, rows: List[dict], markdown: List[str]) -> str:
    """Writes <name>.csv (rows) and <name>.md (the Markdown lines); returns the Markdown."""
    with open(os.path.join(out_dir, f"{name}.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else [])
        writer.writeheader()
        writer.writerows(rows)
    text = "\n".join(markdown) + "\n"
    with open(os.path.join(out_dir, f"{name}.md"), "w") as f:
        f.write(text)
    return text


def _md_row(values: Sequence[object]) -> str:
    return "| " + " | ".join(str(v) for v in values) + " |"


def _md_header(columns: Sequence[str]) -> List[str]:
    return [_md_row(columns), "|" + "---|" * len(columns)]


# --- Tables -------------------------------------------------------------------------------


def robustness_table(run_dir: str, scale: dict, out_dir: str) -> str:
    rows, lines = [], _md_header(["task", "base policy success [95% interval]", "episodes"])
    for task in scale["robustness_tasks"]:
        result = _load_eval(run_dir, "base", task)
        rows.append({"task": task, **_cells("", result)})
        lines.append(_md_row([task, _pct(result), result["episodes"] if result else "n/a"]))
    return _write_table(out_dir, "robustness", rows, lines)


class Difference(NamedTuple):
    """a - b in points with its 95% interval; `unpaired` is why the interval could
    not use the per-episode pairing of the two evaluations (None if it did)."""

    points: float
    low: float
    high: float
    unpaired: Optional[str]

    @property
    def paired(self) -> bool:
        return self.unpaired is None


def unpaired_reason(a: dict, b: dict) -> Optional[str]:
    """Why two evaluations cannot be compared episode by episode; None if they
    can (both recorded their outcomes, on the same seeds and objects)."""
    for key in ("episodes", "seed", "object_split"):
        if a.get(key) is None or b.get(key) is None:
            # e.g. a `neverstop rollout` result, which records its first seed
            # under another name and numbers its episodes' seeds another way.
            return f"no {key} recorded in {'both' if a.get(key) == b.get(key) else 'one'}"
        if a.get(key) != b.get(key):
            return f"different {key} ({a.get(key)} and {b.get(key)})"
    if not (a.get("outcomes") and b.get("outcomes")):
        return "per-episode outcomes not recorded in both"
    return None


def difference(a: Optional[dict], b: Optional[dict]) -> Optional[Difference]:
    """a - b in points with a 95% interval, None if one is missing. Paired
    (episode i of each is the same scene) where both recorded their outcomes on
    the same seeds, else Newcombe's interval for independent samples."""
    if not (a and b):
        return None
    reason = unpaired_reason(a, b)
    if reason is None:
        low, high = rollout.paired_difference_interval(
            [c == "1" for c in a["outcomes"]], [c == "1" for c in b["outcomes"]]
        )
    else:
        low, high = rollout.difference_interval(
            a["successes"], a["episodes"], b["successes"], b["episodes"]
        )
    points = 100 * (a["success_rate"] - b["success_rate"])
    return Difference(points, 100 * low, 100 * high, reason)


def _diff_text(diff: Optional[Difference], threshold: Optional[float] = None) -> str:
    if diff is None:
        return "n/a"
    text = f"{diff.points:+.1f} [{diff.low:+.1f}, {diff.high:+.1f}]"
    return f"**{text}**" if threshold is not None and diff.points >= threshold else text


def _diff_cells(key: str, diff: Optional[Difference]) -> Dict[str, object]:
    """CSV columns <key>_points, <key>_ci_low, <key>_ci_high, <key>_paired (1 if
    the interval is paired, 0 if not; all blank if missing)."""
    values = (
        [round(v, 1) for v in (diff.points, diff.low, diff.high)] + [int(diff.paired)]
        if diff
        else [""] * 4
    )
    names = ("points", "ci_low", "ci_high", "paired")
    return {f"{key}_{name}": value for name, value in zip(names, values)}


def finetune_table(run_dir: str, scale: dict, out_dir: str) -> str:
    columns = ["task", "target grasps", "fine-tuned", "base policy", "change (points, 95%)"]
    rows, lines = [], _md_header(columns)
    for task in scale["challenges"]:
        base = _load_eval(run_dir, "base", task)
        for size in scale["sizes"]:
            result = _load_eval(run_dir, f"finetune-{task}-{size}", task)
            change = difference(result, base)
            rows.append(
                {
                    "task": task,
                    "target_grasps": size,
                    **_cells("", result),
                    **_cells("base_", base),
                    **_diff_cells("change", change),
                }
            )
            lines.append(_md_row([task, size, _pct(result), _pct(base), _diff_text(change)]))
    return _write_table(out_dir, "finetune", rows, lines)


METHODS = ("base", "finetune", "scratch", "imagenet")


def _method_run(method: str, task: str, size: int) -> str:
    return "base" if method == "base" else f"{method}-{task}-{size}"


def baselines_table(run_dir: str, scale: dict, out_dir: str) -> str:
    size = max(scale["sizes"])
    lines = _md_header(["task", "target grasps"] + [m for m in METHODS])
    rows = []
    for task in scale["challenges"]:
        results = {m: _load_eval(run_dir, _method_run(m, task, size), task) for m in METHODS}
        for method in METHODS:
            rows.append(
                {
                    "task": task,
                    "target_grasps": size,
                    "method": method,
                    **_cells("", results[method]),
                }
            )
        lines.append(_md_row([task, size] + [_pct(results[m]) for m in METHODS]))
    return _write_table(out_dir, "baselines", rows, lines)


def continual_links(scale: dict) -> List[tuple]:
    return [(k, task, f"continual-{k}-{task}") for k, task in enumerate(scale["challenges"], 1)]


def continual_table(run_dir: str, scale: dict, out_dir: str) -> str:
    size = max(scale["sizes"])
    base_before = _load_eval(run_dir, "base", "base")
    columns = [
        "link",
        "task",
        "continual (on task)",
        "single-step fine-tune (on task)",
        "continual on base",
        "forgetting (points, 95%)",
    ]
    rows, lines = [], _md_header(columns)
    for k, task, name in continual_links(scale):
        chain = _load_eval(run_dir, name, task)
        single = _load_eval(run_dir, f"finetune-{task}-{size}", task)
        on_base = _load_eval(run_dir, name, "base")
        forgetting = difference(base_before, on_base)
        rows.append(
            {
                "link": k,
                "task": task,
                **_cells("continual_", chain),
                **_cells("single_step_", single),
                **_cells("base_after_link_", on_base),
                **_diff_cells("forgetting", forgetting),
            }
        )
        lines.append(
            _md_row([k, task, _pct(chain), _pct(single), _pct(on_base), _diff_text(forgetting)])
        )
    return _write_table(out_dir, "continual", rows, lines)


# --- Findings: the study's questions, answered by this run ---------------------------------

# The (not the study's) thresholds for "the study's pattern": a challenge
# costs the base policy at least DROP_POINTS, fine-tuning buys back at least
# LIFT_POINTS. The study's own effects were larger (docs/experiments.md).
DROP_POINTS = 15.0
LIFT_POINTS = 10.0

FINDINGS = ("cost", "lift", "vs_scratch", "vs_imagenet", "chain_vs_single")


def _findings(run_dir: str, scale: dict) -> List[dict]:
    """Per challenge: each finding's Difference or None, and the fine-tune
    size the lift was read at (the best size up to the largest, as the study reads
    "with at most N grasps"; picking the best of several sizes favours the lift a
    little, which its interval does not account for)."""
    largest = max(scale["sizes"])
    base_on_base = _load_eval(run_dir, "base", "base")
    out = []
    for _, task, link in continual_links(scale):
        base = _load_eval(run_dir, "base", task)
        tuned = {n: _load_eval(run_dir, f"finetune-{task}-{n}", task) for n in scale["sizes"]}
        found = [n for n in scale["sizes"] if tuned[n]]
        best = max(found, key=lambda n: tuned[n]["success_rate"]) if found else None
        largest_run = tuned[largest]
        out.append(
            {
                "task": task,
                "best_size": best,
                "cost": difference(base_on_base, base),
                "lift": difference(tuned[best], base) if best else None,
                "vs_scratch": difference(
                    largest_run, _load_eval(run_dir, f"scratch-{task}-{largest}", task)
                ),
                "vs_imagenet": difference(
                    largest_run, _load_eval(run_dir, f"imagenet-{task}-{largest}", task)
                ),
                "chain_vs_single": difference(_load_eval(run_dir, link, task), largest_run),
            }
        )
    return out


def _count(findings: List[dict], key: str, test) -> Tuple[int, List[str]]:
    tasks = [f["task"] for f in findings if f[key] is not None and test(f[key])]
    return len(tasks), tasks


def findings_table(run_dir: str, scale: dict, out_dir: str) -> str:
    """report/findings.{md,csv}: per challenge, in points with 95% intervals, what
    the challenge costs the base policy (on `base` minus on the task), what the
    best fine-tune buys back, fine-tuning minus `scratch` and minus `imagenet` at
    the largest size, and the chain's link minus the single-step fine-tune; then
    how many challenges show each of the study's findings."""
    largest = max(scale["sizes"])
    findings = _findings(run_dir, scale)
    columns = [
        "task",
        "cost of the challenge",
        f"lift by fine-tuning (best of <= {largest} grasps)",
        f"fine-tuned minus scratch ({largest})",
        f"fine-tuned minus imagenet ({largest})",
        "chain link minus single-step",
    ]
    rows, lines = [], _md_header(columns)
    for f in findings:
        row = {"task": f["task"], "lift_target_grasps": f["best_size"] or ""}
        for key in FINDINGS:
            row.update(_diff_cells(key, f[key]))
        rows.append(row)
        lift = _diff_text(f["lift"], LIFT_POINTS)
        lines.append(
            _md_row(
                [
                    f["task"],
                    _diff_text(f["cost"], DROP_POINTS),
                    f"{lift} at {f['best_size']}" if f["best_size"] else lift,
                    _diff_text(f["vs_scratch"]),
                    _diff_text(f["vs_imagenet"]),
                    _diff_text(f["chain_vs_single"]),
                ]
            )
        )
    total = len(findings)

    def summary(what: str, key: str, threshold: float) -> str:
        """How many show the finding: the point at least `threshold` (above 0 if 0)."""
        n, tasks = _count(
            findings, key, lambda d: d.points >= threshold if threshold else d.points > 0
        )
        sure, _ = _count(findings, key, lambda d: d.low > 0)
        names = f" ({', '.join(tasks)})" if tasks else ""
        return f"- {what}: **{n} of {total}**{names}; with the interval above 0: {sure} of {total}."

    held, _ = _count(findings, "chain_vs_single", lambda d: d.high >= 0)
    diffs = [f[key] for f in findings for key in FINDINGS if f[key] is not None]
    paired = sum(d.paired for d in diffs)
    lines += [
        "",
        "Points with a 95% interval for the difference of two rates (Newcombe's "
        "square-and-add); bold where a challenge costs >= "
        f"{DROP_POINTS:g} points or fine-tuning lifts >= {LIFT_POINTS:g}. "
        f"{paired} of {len(diffs)} intervals are paired: both evaluations recorded "
        "each episode's outcome on the same seeds, so a scene that is easy or hard for "
        "both is not counted as noise."
        + (
            " The others treat the two as independent samples (results without outcomes)."
            if paired < len(diffs)
            else ""
        ),
        "",
        summary(
            f"Challenges that cost the base policy >= {DROP_POINTS:g} points", "cost", DROP_POINTS
        ),
        summary(
            f"Challenges that fine-tuning with <= {largest} target grasps lifts >= "
            f"{LIFT_POINTS:g} points",
            "lift",
            LIFT_POINTS,
        ),
        summary(
            f"Challenges where fine-tuning beats `scratch` ({largest} grasps)", "vs_scratch", 0
        ),
        summary(
            f"Challenges where fine-tuning beats `imagenet` ({largest} grasps)", "vs_imagenet", 0
        ),
        f"- Chain links no worse than the single-step fine-tune (interval reaching 0 or "
        f"above): **{held} of {total}**.",
    ]
    return _write_table(out_dir, "findings", rows, lines)


# --- Plots --------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; no display here or on a cluster
    import matplotlib.pyplot as plt

    return plt


def _series(ax, points: List[tuple], **style) -> None:
    """Success (%) at each (x, result) with its Wilson interval as error bars;
    missing results (None) are left out."""
    points = [(x, r) for x, r in points if r]
    if not points:
        return
    rates = [100 * r["success_rate"] for _, r in points]
    err = [
        [rate - 100 * r["interval_95"][0] for rate, (_, r) in zip(rates, points)],
        [100 * r["interval_95"][1] - rate for rate, (_, r) in zip(rates, points)],
    ]
    ax.errorbar([x for x, _ in points], rates, yerr=err, capsize=3, **style)


def _level(ax, result: Optional[dict], **style) -> None:
    """A result's success (%) as a horizontal line across the panel."""
    if result:
        ax.axhline(100 * result["success_rate"], **style)


def finetune_plot(run_dir: str, scale: dict, out_dir: str) -> str:
    """Success vs target grasps, one panel per challenge task, with the base
    policy on the task as a reference line (its interval shaded), its level on
    `base` (dotted) and the baselines."""
    plt = _pyplot()
    tasks = scale["challenges"]
    columns = min(3, len(tasks))
    rows = (len(tasks) + columns - 1) // columns
    figure, axes = plt.subplots(
        rows, columns, figsize=(4.2 * columns, 3.4 * rows), squeeze=False, sharey=True
    )
    sizes = list(scale["sizes"])
    base_on_base = _load_eval(run_dir, "base", "base")
    for i, task in enumerate(tasks):
        ax = axes[i // columns][i % columns]
        # Where the base policy was before the challenge: the gap to the dashed
        # line below is what the challenge cost it.
        _level(ax, base_on_base, color="black", linestyle=":", label="base policy, on base")
        _series(
            ax,
            [(n, _load_eval(run_dir, f"finetune-{task}-{n}", task)) for n in sizes],
            marker="o",
            label="fine-tuned",
        )
        base = _load_eval(run_dir, "base", task)
        _level(ax, base, color="gray", linestyle="--", label="base policy, on this task")
        if base:
            ax.axhspan(
                100 * base["interval_95"][0], 100 * base["interval_95"][1], color="gray", alpha=0.15
            )
        for method, marker in (("scratch", "s"), ("imagenet", "^")):
            result = _load_eval(run_dir, f"{method}-{task}-{max(sizes)}", task)
            # Nudged sideways so the markers do not hide each other.
            x = max(sizes) * (1.08 if method == "scratch" else 1.16)
            _series(ax, [(x, result)], marker=marker, linestyle="none", label=method)
        if len(sizes) > 1:
            ax.set_xscale("log")
        ax.set_xticks(sizes)
        ax.set_xticklabels([str(n) for n in sizes])
        ax.set_ylim(0, 100)
        ax.set_title(task)
        ax.set_xlabel("target grasps")
        if i % columns == 0:
            ax.set_ylabel("success (%)")
        # "best": the legend must not hide the baselines' markers at the largest size.
        ax.legend(fontsize=7, loc="best")
    for j in range(len(tasks), rows * columns):
        axes[j // columns][j % columns].axis("off")
    figure.suptitle("Fine-tuning: success vs target grasps\n(95% Wilson intervals)", fontsize=10)
    figure.tight_layout()
    path = os.path.join(out_dir, "finetune.png")
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def continual_plot(run_dir: str, scale: dict, out_dir: str) -> str:
    plt = _pyplot()
    size = max(scale["sizes"])
    links = continual_links(scale)
    figure, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(links)), 3.8))
    xs = list(range(1, len(links) + 1))
    series = (
        ("continual, on the link's task", lambda k, t, n: _load_eval(run_dir, n, t), "o"),
        (
            "single-step fine-tune, on the task",
            lambda k, t, n: _load_eval(run_dir, f"finetune-{t}-{size}", t),
            "s",
        ),
        ("continual, on base (forgetting)", lambda k, t, n: _load_eval(run_dir, n, "base"), "^"),
    )
    for label, load, marker in series:
        points = [(x, load(k, t, n)) for x, (k, t, n) in zip(xs, links)]
        _series(ax, points, marker=marker, label=label)
    base = _load_eval(run_dir, "base", "base")
    _level(ax, base, color="gray", linestyle="--", label="base policy on base")
    ax.set_xticks(xs)
    ax.set_xticklabels([f"{k}. {t}" for k, t, _ in links], rotation=15, fontsize=8)
    ax.set_ylim(0, 100)
    ax.set_ylabel("success (%)")
    ax.set_title(f"Continual chain ({size} target grasps per link)")
    ax.legend(fontsize=7)
    figure.tight_layout()
    path = os.path.join(out_dir, "continual.png")
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


# --- README -------------------------------------------------------------------------------


def _datasets(run_dir: str) -> List[str]:
    from neverstop.datasets import catalog

    data = os.path.join(run_dir, "data")
    if not os.path.isdir(data):
        return []
    lines = _md_header(["dataset", "episodes", "success", "policies"])
    for card in catalog.list_datasets(data):
        stats = card["statistics"]
        policies = ", ".join(f"{p}: {n}" for p, n in sorted(stats.get("policies", {}).items()))
        lines.append(
            _md_row(
                [
                    f"`{card['id']}`",
                    stats.get("episodes", ""),
                    f"{stats.get('success_rate', 0):.1%}",
                    policies,
                ]
            )
        )
    return lines


def _training_runs(run_dir: str) -> List[str]:
    """Every checkpoint, in the order it was made: its mode, what it started from,
    its data, its steps and the config values that differ from the base policy's
    (printed once in full). From each checkpoint's lineage.json and config.json."""
    root = os.path.join(run_dir, "checkpoints")
    runs = []
    for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        paths = [os.path.join(root, name, f) for f in ("lineage.json", "config.json")]
        if all(os.path.exists(p) for p in paths):
            lineage, config = (jsonfile.read(p) for p in paths)
            runs.append((lineage.get("created", ""), name, lineage, config))
    if not runs:
        return []
    runs.sort()
    configs = {name: config for _, name, _, config in runs}
    reference_name = "base" if "base" in configs else runs[0][1]
    reference = configs[reference_name]
    lines = _md_header(
        [
            "checkpoint",
            "mode",
            "from",
            "data (dataset:version:split:weight)",
            "steps",
            f"config, where it differs from `{reference_name}`'s",
        ]
    )
    for _, name, lineage, config in runs:
        parent = (lineage.get("parent_checkpoint") or {}).get("id")
        start = f"`{parent}`" if parent else ""
        if lineage.get("vision_weights"):
            start = "the vision tower"
        differs = ", ".join(
            f"{k}={json.dumps(config.get(k))}"
            for k in sorted(set(config) | set(reference))
            if k not in ("mode", "steps") and config.get(k) != reference.get(k)
        )
        data = f"`{lineage.get('mixture_string', '')}`"
        lines.append(
            _md_row(
                [f"`{name}`", lineage.get("mode", ""), start, data, config.get("steps"), differs]
            )
        )
    full = json.dumps(reference, indent=2, sort_keys=True)
    return lines + ["", f"`{reference_name}`'s config:", "", "```json", full, "```"]


def _timings(run_dir: str) -> List[str]:
    markers = []
    done_dir = os.path.join(run_dir, dag.DONE_DIR)
    for name in sorted(os.listdir(done_dir)) if os.path.isdir(done_dir) else []:
        if name.endswith(".json"):
            marker = dag.read_marker(run_dir, name[: -len(".json")])
            if marker:
                markers.append(marker)
    groups: Dict[str, List[float]] = {}
    for marker in markers:
        kind = marker["step"].split("-")[0]
        groups.setdefault(kind, []).append(marker.get("seconds", 0.0))
    lines = _md_header(["steps", "count", "total (s)"])
    for kind, seconds in sorted(groups.items()):
        lines.append(_md_row([kind, len(seconds), f"{sum(seconds):.0f}"]))
    lines.append(_md_row(["all", len(markers), f"{sum(sum(s) for s in groups.values()):.0f}"]))
    return lines


# The findings table reads all four tables' results; scales without them skip it.
FINDINGS_NEED = ("robustness", "finetune", "baselines", "continual")

TABLE_TITLES = {
    "findings": "What this run says about the study's questions (points, 95% intervals)",
    "robustness": "Robustness: the base policy on every task (held-out objects)",
    "finetune": "Fine-tuning by number of target grasps (50% base, 50% target data)",
    "baselines": "Is RL pre-training needed? Fine-tuning vs scratch vs ImageNet-style features",
    "continual": "Continual fine-tuning vs single-step fine-tuning",
}


def write_report(run_dir: str, scale: dict) -> dict:
    """Writes report/ from the run dir; returns what it wrote (paths)."""
    out_dir = os.path.join(run_dir, REPORT_DIR)
    os.makedirs(out_dir, exist_ok=True)
    tables = list(scale["tables"])
    builders = {
        "robustness": robustness_table,
        "finetune": finetune_table,
        "baselines": baselines_table,
        "continual": continual_table,
    }
    texts = {name: builders[name](run_dir, scale, out_dir) for name in tables}
    if set(FINDINGS_NEED) <= set(tables):
        texts["findings"] = findings_table(run_dir, scale, out_dir)
        tables = ["findings"] + tables
    plots = []
    if "finetune" in tables:
        plots.append(finetune_plot(run_dir, scale, out_dir))
    if "continual" in tables:
        plots.append(continual_plot(run_dir, scale, out_dir))
    lines = [
        f"# neverstop experiment report: scale `{scale['name']}`",
        "",
        "Success rates are grasp successes over evaluation episodes on held-out objects, "
        "with Wilson 95% intervals; every checkpoint meets the same evaluation seeds, so "
        "a difference of two rates is compared scene by scene where both evaluations "
        "recorded their outcomes (paired intervals; the CSVs' `_paired` columns). "
        "A target grasp is one target-task episode. The tables are also CSV files here.",
        "",
    ]
    for name in tables:
        lines += [f"## {TABLE_TITLES[name]}", "", f"[{name}.csv]({name}.csv)", "", texts[name]]
        if name == "finetune" and plots:
            lines += ["![success vs target grasps](finetune.png)", ""]
        if name == "continual":
            lines += ["![continual chain](continual.png)", ""]
    lines += ["## Datasets (versions as trained on)", ""] + _datasets(run_dir) + [""]
    runs = _training_runs(run_dir)
    if runs:
        lines += ["## Training runs (each checkpoint's data and config)", ""] + runs + [""]
    lines += ["## Scale", "", "```json", json.dumps(scale, indent=2, sort_keys=True), "```", ""]
    lines += ["## Where the time went (finished steps)", ""] + _timings(run_dir) + [""]
    lines += [
        "Checkpoints (with each run's config.json and lineage.json) are in `../checkpoints/`, "
        "evaluation results in `../eval/<checkpoint>/<task>.json`, step logs in `../logs/`.",
        "",
    ]
    readme = os.path.join(out_dir, "README.md")
    tmp = readme + ".tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(lines))
    os.replace(tmp, readme)
    return {
        "readme": readme,
        "tables": [os.path.join(out_dir, f"{t}.csv") for t in tables],
        "plots": plots,
    }
