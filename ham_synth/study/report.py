"""The study's report: W/report.md, W/report.json and W/report/*.png, from the runs' own files.

Every number comes from a classifier run's metrics.jsonl (the test evaluator's row, on the best
checkpoint) and report.json names that file and step. Each real + synthetic condition's change
from its matched control is paired over seeds, with Holm's correction over the conditions
compared (stats.py); the synthetic-only conditions (TSTR) are read against real-only as a ratio.
Reading the runs is collect.py's, the markdown sections.py's, the figures figures.py's.
"""

import pathlib

import ml_collections
import numpy as np

from ham_synth import config_lib, fileio
from ham_synth.study import collect, figures, sections, stats
from ham_synth.study import plan as plan_lib

REPORT_MD = "report.md"
REPORT_JSON = "report.json"


def write_report(study: ml_collections.ConfigDict, plan: list[plan_lib.Run], root) -> dict:
    """W/report.md and report.json: one study's report, or with a sweep, the points' table and
    each point's report in points/<label>/. Returns report.json's content."""
    root = pathlib.Path(root)
    points = plan_lib.sweep_points(study.sweep, study)
    if len(points) == 1:
        return write_point_report(study, plan, root, root)
    contents = {}
    for label, values in points:
        runs = [r for r in plan if label in r.points and r.verb != "report"]
        point_study = config_lib.with_values(study, values)
        contents[label] = write_point_report(point_study, runs, root, root / "points" / label)
    return write_sweep_report(study, contents, root)


def write_sweep_report(study, contents: dict, root: pathlib.Path) -> dict:
    """The sweep's table: per point and condition, the primary metric and its change from that
    point's matched control, with the verdict."""
    primary = study.report.primary_metric
    axes = [field for field, _ in plan_lib.parse_sweep(study.sweep, study)]
    lines = [
        "# Does synthetic data help the classifier? A sweep",
        "",
        f"Sweep over {', '.join(axes)} (`{study.sweep}`): each point is a study; its full report "
        f"is points/<point>/report.md. Test {primary}, mean ± std over seeds; the change from "
        "the matched control is paired over seeds at that point, its 95% interval unadjusted, "
        "the verdict from Holm's correction within the point.",
        "",
        "| point | condition | " + primary + " | control | change | unadjusted 95% interval | "
        "verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, content in contents.items():
        for condition, runs in content["results"].items():
            cell = sections.mean_std([r["metrics"][primary] for r in runs])
            change = content["changes"][primary].get(condition)
            if change is None:
                lines.append(f"| {label} | {condition} | {cell} | | | | |")
                continue
            lines.append(
                f"| {label} | {condition} | {cell} | {change['control']} | "
                f"{sections.signed(change['mean'])} | {sections.signed(change['low'])} to "
                f"{sections.signed(change['high'])} | {change['verdict']} |"
            )
    lines += ["", *[f"- [{label}](points/{label}/report.md)" for label in contents]]
    if len(axes) == 1:
        (axis,) = axes
        values = {label: point[axis] for label, point in plan_lib.sweep_points(study.sweep, study)}
        dose = axis.startswith("synthetic.") and shares_tell_points_apart(contents)
        xlabel = "synthetic share of the training stream" if dose else axis
        path = root / "report" / f"sweep_{axis}.png"
        figures.sweep_plot(sweep_series(contents, values, primary, dose), primary, xlabel, path)
        lines += ["", f"![change against {xlabel}](report/{path.name})"]
    fileio.write_text(root / REPORT_MD, "\n".join(lines) + "\n")
    content = {"sweep": study.sweep, "points": contents}
    fileio.write_json(root / REPORT_JSON, content, default=str)
    return content


def stream_synthetic_share(by_class: dict) -> float:
    """The share of a condition's training draws that are synthetic, from its stream table
    entry ({class: {"share", "synthetic_share"}})."""
    return sum(c["share"] * c["synthetic_share"] for c in by_class.values())


def point_shares(contents: dict) -> dict[str, list[float]]:
    """condition -> the synthetic share of its training stream at each sweep point, for the
    conditions that draw synthetic images at some point."""
    shares = {}
    for content in contents.values():
        for condition, by_class in content["stream"].items():
            shares.setdefault(condition, []).append(stream_synthetic_share(by_class))
    return {c: s for c, s in shares.items() if max(s) > 0}


def shares_tell_points_apart(contents: dict) -> bool:
    """Whether every synthetic condition's stream share differs between any two sweep points,
    so it can be the dose plot's x: under the ratio policy, per_class and loss_weight leave it
    the same."""
    return all(len(set(np.round(s, 6))) == len(s) for s in point_shares(contents).values())


def sweep_series(contents: dict, values: dict, primary: str, dose: bool) -> dict:
    """{condition: [(x, mean, low, high)]}: each compared condition's change of `primary` from
    its control at every sweep point. x is the point's axis value (`values`: label -> value),
    or with `dose`, the synthetic share of the condition's training stream there (conditions
    with no synthetic draws, e.g. pre-training, are left out then)."""
    synthetic = point_shares(contents)
    series = {}
    for label, content in contents.items():
        for condition, change in content["changes"][primary].items():
            if dose and condition not in synthetic:
                continue
            x = stream_synthetic_share(content["stream"][condition]) if dose else values[label]
            series.setdefault(condition, []).append(
                (x, change["mean"], change["low"], change["high"])
            )
    return series


def dose_series(changes: dict, streams: dict, generators: list[str]) -> dict:
    """{generator: [(synthetic share of the stream, mean, low, high)]}: the change from the
    control of real + each set at every dose the study ran (conditions.dose)."""
    series = {}
    for g in generators:
        for condition, change in changes.items():
            if condition == f"real+{g}" or condition.startswith(f"real+{g}{plan_lib.DOSE}"):
                x = stream_synthetic_share(streams[condition])
                series.setdefault(g, []).append((x, change["mean"], change["low"], change["high"]))
    return series


def tstr(results: dict, primary: str) -> dict:
    """generator -> its synthetic-only condition against real-only (stats.tstr_ratio)."""
    trtr = [r["metrics"][primary] for r in results[plan_lib.REAL]]
    return {
        condition.removeprefix(plan_lib.TSTR): stats.tstr_ratio(
            [r["metrics"][primary] for r in runs], trtr
        )
        for condition, runs in results.items()
        if condition.startswith(plan_lib.TSTR)
    }


def write_point_report(
    study: ml_collections.ConfigDict, plan: list[plan_lib.Run], root: pathlib.Path, out
) -> dict:
    """One study point's report.md, report.json and report/*.png, written to `out` from the runs
    of `plan` under `root`; returns the JSON's content."""
    out.mkdir(parents=True, exist_ok=True)
    results = collect.collect(plan, root)
    real_run = next(r for r in plan if r.base_name.startswith(f"classifiers/{plan_lib.REAL}/"))
    class_names = config_lib.class_names(config_lib.load_workdir_config(root / real_run.name))
    primary = study.report.primary_metric
    controls = plan_lib.controls(plan)
    changes = {m: stats.compare(results, m, controls) for m in sections.METRICS.values()}
    tested = collect.tested_classes(results, class_names)
    class_changes = stats.compare(results, "f1", controls, tested)
    seeds = len(results[plan_lib.REAL])
    figures.per_class_f1_plot(results, tested, out / "report" / "per_class_f1.png")
    realism = collect.collect_realism(plan, root, collect.mixed_classes(plan))
    has_inception = any("inception" in entry for entry in realism.values())
    streams = collect.stream(plan, root)
    tstr_ratios = tstr(results, primary)
    screened = collect.screening(plan, root)
    audits = collect.collect_memorization(plan, root, out)
    dosed = sorted({g for g, _ in plan_lib.doses(study)})
    dose_lines = []
    if dosed:
        by_condition = {k[0]: v for k, v in changes[primary].items()}
        xlabel = "synthetic share of the training stream"
        figures.sweep_plot(dose_series(by_condition, streams, dosed), primary, xlabel,
                           out / "report" / "dose.png")  # fmt: skip
        dose_lines = [f"![change against the {xlabel}](report/dose.png)", ""]

    lines = [
        "# Does synthetic data help the classifier?",
        "",
        *sections.results_table(results, realism, has_inception, len(class_names)),
        "",
        *sections.changes_section(changes[primary], primary, seeds, study.seeds.generators),
        "",
        *dose_lines,
        *sections.tstr_section(tstr_ratios, primary),
        "",
        *sections.pretraining_section(study),
        "",
        *sections.stream_section(streams, class_names, controls),
        "",
        *sections.per_class_f1_section(results, class_changes, class_names, tested),
        "",
        *sections.subgroup_section(results, primary, controls),
        "",
        *sections.realism_section(realism, has_inception),
        "",
        *sections.filtering_section(screened, study.synthetic.filter.min_confidence),
        "",
        *sections.memorization_section(audits),
        "",
        *sections.images_section(plan, root, out, results, primary, class_names),
        "",
        *sections.environment_section(plan, root),
        "",
        "## Runs",
        "",
        *[f"- `{plan_lib.shell_command(r, root)}`" for r in plan if r.verb != "report"],
    ]
    fileio.write_text(out / REPORT_MD, "\n".join(lines) + "\n")

    content = {
        "primary_metric": primary,
        "seeds": seeds,
        "results": results,
        "changes": {m: {k[0]: v for k, v in c.items()} for m, c in changes.items()},
        "per_class_f1_changes": {f"{k[0]}/{k[1]}": v for k, v in class_changes.items()},
        "tstr": tstr_ratios,
        "stream": streams,
        "realism": realism,
        "filtered": screened,
        "memorization": audits,
        "study_config": study.to_dict(),
    }
    fileio.write_json(out / REPORT_JSON, content, default=str)
    return content
