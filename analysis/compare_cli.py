"""``trainmap compare ROOT/A ROOT/B [...]``: experiments side by side, as text.

Imported by ``trainer/cli.py`` for every ``trainmap`` command, so it must import
cheaply: the comparison itself (numpy, scipy) is imported in ``main``. The
method is in :mod:`analysis.compare` and docs/compare.md.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "targets", nargs="+", metavar="ROOT/EXPERIMENT", help="two or more experiment directories"
    )
    parser.add_argument(
        "--n-states",
        help="comma-separated n per experiment (default: each fit's selected n), e.g. 4,3",
    )
    parser.add_argument(
        "--match-threshold",
        type=float,
        default=None,
        help="largest distance (pooled sd) at which two states are the same phase (default 0.5)",
    )
    parser.add_argument(
        "--match-on",
        choices=("auto", "levels", "shapes"),
        default="auto",
        help="match states by their means on one scale over all runs (levels) or in each "
        "experiment's own z units (shapes); auto (default): levels, shapes if nothing matches",
    )


def _epochs(value) -> str:
    return "-" if value is None else f"{value:.0f}"


def detour_count_words(side: dict) -> str:
    """ "none" with what was tested, for an experiment without detour states."""
    tested, untold = side.get("detours_tested", 0), side.get("detours_untold", 0)
    parts = []
    if tested:
        parts.append(f"{tested} state{'s' * (tested != 1)} tested")
    if untold:
        parts.append(f"{untold} with too few runs to tell")
    return f"none ({'; '.join(parts)})" if parts else "none (every run visits every state)"


def _n_text(e: dict) -> str:
    text = f"{e['n_states']} states"
    if e["n_states"] != e["selected_n"]:
        text += f" (chosen; the fit selected {e['selected_n']})"
    counts, total = e["n_bootstrap"], e["n_resamples"]
    if counts and total:
        spread = ", ".join(f"n={n}: {c}" for n, c in sorted(counts.items()))
        text += f"; bootstrap over runs ({total} resamples) selects {spread}"
    else:
        text += "; no bootstrap of n saved with this fit"
    return text


def format_comparison(c) -> str:
    """The comparison as a readable text report."""
    names = [e["name"] for e in c.experiments]
    lines = [f"comparing {', '.join(names)}"]
    lines += [f"warning: {w}" for w in c.warnings]

    unit = c.quality["unit"]
    lines.append("")
    lines.append(
        f"matched phases (states matched by their means on {len(c.features)} shared features, "
        f"{'pooled sd over all runs' if unit == 'pooled sd' else 'z units'}):"
    )
    width = max(len(n) for n in names)
    header = "  phase " + " ".join(f"{n:>{max(width, 6)}}" for n in names) + "   distance"
    lines.append(header)
    for g in c.groups:
        cells = " ".join(
            f"{('S' + str(g['states'][n])) if g['states'][n] is not None else '-':>{max(width, 6)}}"
            for n in names
        )
        if g["matched"]:
            how = f"{g['distance']:.2f} {unit} ({g['grade']})"
        else:
            only = next(n for n in names if g["states"][n] is not None)
            nearest = ", ".join(f"{d:.2f} from {n}'s nearest" for n, d in g["nearest"].items())
            how = f"only in {only} ({nearest})"
        lines.append(f"  {g['label']:<5} {cells}   {how}")
    lines.append(f"  {c.quality['message']}")

    lines.append("")
    lines.append("per experiment:")
    for e in c.experiments:
        lines.append(f"  {e['name']} ({e['path']}): {len(e['runs'])} runs; {_n_text(e)}")
        lines.append(
            f"    converged {e['n_converged']}, never converged {e['n_censored']} "
            f"(threshold eval_acc >= {e['threshold']}); Kaplan-Meier median convergence "
            f"epoch {_epochs(e['km_median'])}"
        )
        lines.append(f"    trajectory dissimilarity (mean pairwise TV): {e['dissimilarity']:.3f}")
        detours = [s for s in e["states"] if s["is_detour"]]
        if not detours:
            lines.append(f"    detour states: {detour_count_words(e)}")
        for s in detours:
            d = s["detour"]
            lo, hi = d.get("delay_ci") or (None, None)
            lines.append(
                f"    detour S{s['state']} = {s['label']}: visiting runs converge "
                f"{_epochs(d.get('delay'))} epochs later (95% interval {_epochs(lo)} to "
                f"{_epochs(hi)}), Holm-adjusted {d.get('test')} p = {d.get('p_adjusted'):.2g}; "
                f"{d.get('n_visiting')} runs visit it, {d.get('n_other')} do not"
            )
        for s in e["states"]:
            if s["detour"].get("verdict") == "not_enough_runs":
                lines.append(f"    S{s['state']} = {s['label']}: {s['detour']['message']}")
        if e["missing_features"]:
            lines.append(f"    features not used for matching: {', '.join(e['missing_features'])}")

    lines.append("")
    lines.append("convergence:")
    for t in c.convergence:
        lines.append(f"  {t['message']}")

    lines.append("")
    if c.transitions:
        lines.append("transitions in some experiments but not others:")
        for t in c.transitions:
            present = ", ".join(f"{n} ({k} run{'s' * (k != 1)})" for n, k in t["present"].items())
            absent = "; ".join(t["absent"].values())
            lines.append(f"  {t['source']} -> {t['target']}: in {present}; {absent}")
    else:
        lines.append("transitions: every experiment makes the same transitions (in matched phases)")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    from trainmap.analysis.compare import MATCH_THRESHOLD, CompareError, compare_experiments
    from trainmap.trainer.errors import UserError

    targets = []
    for target in args.targets:
        path = Path(target)
        if not path.name or not path.is_dir():
            raise UserError(f"{target} is not an experiment directory (expected ROOT/EXPERIMENT)")
        targets.append((path.parent, path.name))
    n_states = None
    if args.n_states:
        try:
            n_states = [int(v) for v in args.n_states.split(",")]
        except ValueError:
            raise UserError(f"--n-states takes integers like 4,3, got {args.n_states!r}") from None
    threshold = MATCH_THRESHOLD if args.match_threshold is None else args.match_threshold
    if not 0 < threshold < float("inf"):  # also refuses nan
        raise UserError(f"--match-threshold must be a positive distance, got {threshold}")
    try:
        comparison = compare_experiments(
            targets, n_states=n_states, threshold=threshold, match_on=args.match_on
        )
    except CompareError as error:
        raise UserError(str(error)) from None
    print(format_comparison(comparison))
    return 0
