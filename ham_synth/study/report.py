"""The study's report: W/report.md, W/report.json and W/report/*.png, from the runs' own files.

Every number comes from a classifier run's metrics.jsonl (the test evaluator's row, on the best
checkpoint) and report.json names that file and step. A condition's change from real-only is
paired over seeds, with Holm's correction over the conditions compared (stats.py).
"""

import csv
import glob
import json
import math
import os
import pathlib

import matplotlib
import ml_collections
import numpy as np
from PIL import Image

from ham_synth import (
    config_lib,
    environment,
    evaluators,
    fileio,
    grids,
    memorization,
    metric_writer,
)
from ham_synth.data import imaging
from ham_synth.evaluators import classification, recognition
from ham_synth.study import plan as plan_lib
from ham_synth.study import stats

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

REPORT_MD = "report.md"
REPORT_JSON = "report.json"
# Column title -> the test evaluator's metric.
METRICS = {
    "Accuracy": "accuracy",
    "Balanced accuracy": "balanced_accuracy",
    "Precision (macro)": "precision_macro",
    "Recall (macro)": "recall_macro",
    "F1 (macro)": "f1_macro",
}
SET_GRID_COLUMNS = 8  # Images per class in the report's grid of each synthetic set.


def final_evaluator(workdir: pathlib.Path, kind: str) -> str | None:
    """The name of a classifier run's `kind` evaluator that runs once at the end on the best
    checkpoint (vit.py's `test` and `attention`), from the run's config.json; None if it has
    none."""
    config = config_lib.load_workdir_config(workdir)
    names = [
        name
        for name, entry in config.evals.items()
        if entry.type == kind and entry.every_steps == 0 and entry.get("checkpoint") == "best"
    ]
    if len(names) > 1:
        raise ValueError(
            f"{workdir}: the report reads one {kind!r} evaluator run at the end on the best "
            f"checkpoint (every_steps=0, checkpoint='best'); the run's config has {names}."
        )
    return names[0] if names else None


def test_metrics(workdir: pathlib.Path) -> dict:
    """{"file", "step", "checkpoint_step", "metrics": {name: value}} from the last row of a
    classifier run's metrics.jsonl that holds its final classification evaluator's results."""
    name = final_evaluator(workdir, "classification")
    if name is None:
        raise ValueError(
            f"{workdir}'s config has no classification evaluator run at the end on the best "
            "checkpoint (as vit.py's evals.test); the report has no test metrics to read."
        )
    rows = [r for r in metric_writer.read_metrics(workdir) if f"{name}/accuracy" in r]
    if not rows:
        raise FileNotFoundError(
            f"{workdir / metric_writer.METRICS_FILE} has no {name}/* row: did the run finish "
            "its final evaluation?"
        )
    row = rows[-1]
    prefix = f"{name}/"
    checkpoint_step = row.get(f"{name}/checkpoint_step", row["step"])
    evals_json = workdir / evaluators.EVALS_DIR / name / f"step_{int(checkpoint_step):07d}.json"
    subgroups = None
    if evals_json.exists():
        subgroups = json.loads(evals_json.read_text()).get("subgroups")
    return {
        "file": str(workdir / metric_writer.METRICS_FILE),
        "step": row["step"],
        "checkpoint_step": checkpoint_step,
        "subgroups": subgroups,  # {attribute: {value: {n, balanced_accuracy}}} when recorded.
        "metrics": {
            k[len(prefix) :]: v
            for k, v in row.items()
            if k.startswith(prefix) and k != f"{name}/checkpoint_step"
        },
    }


def _mean_std(values) -> str:
    values = np.asarray(values, np.float64)
    std = values.std(ddof=1) if len(values) > 1 else float("nan")
    return f"{values.mean():.3f} ± {std:.3f}" if len(values) > 1 else f"{values.mean():.3f}"


def _signed(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:+.3f}"


def collect(plan: list[plan_lib.Run], root: pathlib.Path) -> dict:
    """condition -> [per-seed test_metrics], seeds in order."""
    results = {}
    for run in plan:
        if run.base_name.startswith("classifiers/"):
            condition = run.base_name.split("/")[1]
            results.setdefault(condition, []).append(test_metrics(root / run.name))
    return results


def recognised(csv_path: pathlib.Path, reference: pathlib.Path) -> dict:
    """The recognised share of a synthetic set (evaluators/recognition.py) from a `ham-synth
    classify` CSV of it, beside the reference classifier's per-class recall on real test images."""
    with open(csv_path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if not r["error"]]
    class_names = config_lib.class_names(config_lib.load_workdir_config(reference))
    metrics = test_metrics(reference)["metrics"]
    ceiling = {c: metrics.get(f"{c}/recall") for c in class_names}
    return {
        "file": str(csv_path),
        **recognition.recognised_share(
            [r["path"].split("/")[0] for r in rows],  # The class folder it was generated for.
            [r["predicted"] for r in rows],
            ceiling,
        ),
    }


def collect_realism(plan: list[plan_lib.Run], root: pathlib.Path) -> dict:
    """generator -> {"classifier": metrics.json, "inception": metrics.json (when run),
    "recognised"}."""
    realism = {}
    for run in plan:
        if not run.base_name.startswith("realism/"):
            continue
        _, generator, kind = run.base_name.split("/")
        if kind == "recognised":
            reference = pathlib.Path(plan_lib.resolve(run.flags["workdir"], root))
            entry = recognised(root / run.name / "predictions.csv", reference)
        else:
            path = root / run.name / "eval" / "metrics.json"
            entry = {"file": str(path), **json.loads(path.read_text())}
        realism.setdefault(generator, {})[kind] = entry
    return realism


def collect_memorization(plan: list[plan_lib.Run], root: pathlib.Path, out: pathlib.Path) -> dict:
    """generator -> its memorization.json summary (without the per-image rows) and its files
    (the closest-pairs PNG relative to `out`, where the report goes)."""
    audits = {}
    for run in plan:
        if run.stage == "memorization":
            path = root / run.name / memorization.REPORT
            summary = {k: v for k, v in json.loads(path.read_text()).items() if k != "images"}
            pairs = os.path.relpath(root / run.name / memorization.PAIRS, out)
            audits[run.base_name.split("/")[1]] = {**summary, "file": str(path), "pairs": pairs}
    return audits


def memorization_section(audits: dict) -> list[str]:
    if not audits:
        return []
    lines = [
        "## Memorization",
        "",
        "For every synthetic image, the nearest training image in pixels and in the real-only "
        "ViT's features. Ratio: median synthetic->train over median real test->train distance "
        "(about 1: as close as new real images; near 0: copies). A near-copy is closer to a "
        "training image, in both spaces, than the "
        f"{next(iter(audits.values()))['quantile']:g} quantile of the test images' distances.",
        "",
        "| generator | images | near-copies | ratio (pixels) | ratio (features) | closest pairs |",
        "|---|---|---|---|---|---|",
    ]
    for generator, audit in audits.items():
        lines.append(
            f"| {generator} | {audit['images_audited']} | {audit['near_copies']} | "
            f"{audit['pixels']['ratio']:.3f} | {audit['features']['ratio']:.3f} | "
            f"[{audit['pairs']}]({audit['pairs']}) |"
        )
    return [*lines, "", memorization.STATEMENT]


def best_condition(results: dict, primary: str) -> str | None:
    """The real + synthetic condition with the highest mean `primary`, or None if there is none."""
    mixed = [c for c in results if c.startswith("real+")]
    if not mixed:
        return None
    return max(mixed, key=lambda c: np.mean([r["metrics"][primary] for r in results[c]]))


def _latest_png(folder: pathlib.Path, prefix: str = "") -> pathlib.Path | None:
    """The PNG of `folder` named `prefix`step_N.png with the largest N, or None."""
    found = sorted(folder.glob(f"{glob.escape(prefix)}step_*.png"))
    return found[-1] if found else None


def synthetic_grid(folder: pathlib.Path, class_names: list[str], path: pathlib.Path) -> bool:
    """A grid of the first SET_GRID_COLUMNS images of each class of a `ham-synth sample` folder,
    one labelled row per class it holds (what the classifiers were given); False if it is empty."""
    rows, names = [], []
    for name in class_names:
        files = sorted((folder / name).glob("*.png"))[:SET_GRID_COLUMNS]
        if not files:
            continue
        images = []
        for file in files:
            with Image.open(file) as image:
                images.append(np.asarray(imaging.to_rgb(image)))
        images += [np.full_like(images[0], 255)] * (SET_GRID_COLUMNS - len(images))
        rows += images
        names.append(name)
    if not rows:
        return False
    stacked = np.stack(rows).astype(np.float32) / 127.5 - 1.0
    grid = grids.make_grid(stacked, rows=len(names))
    grids.write_png(path, grid, grids.display_scale(stacked.shape[1]), names)
    return True


def images_section(plan, root: pathlib.Path, out: pathlib.Path, results: dict, primary: str,
                   class_names: list[str]) -> list[str]:  # fmt: skip
    """Links to each generator's last sample grid, a per-class grid of each synthetic set (made
    here, in report/), and the ViT's attention maps (real-only and the best condition, seed 0)."""
    lines = ["## Images", ""]
    for run in plan:
        if run.base_name.count("/") != 1:  # generators/<g> and synthetic/<g> only
            continue
        kind, generator = run.base_name.split("/")
        if kind == "generators" and (grid := _latest_png(root / run.name / "samples")):
            step = grid.stem.removeprefix("step_").lstrip("0")
            lines.append(f"- {generator}: sample grid at step {step}, a row per class: "
                         f"![{generator} samples]({os.path.relpath(grid, out)})")  # fmt: skip
        if kind == "synthetic":
            path = out / "report" / f"synthetic_{generator}.png"
            if synthetic_grid(root / run.name, class_names, path):
                lines.append(
                    f"- {generator}: its synthetic set, first {SET_GRID_COLUMNS} images of each "
                    f"class: ![{generator} set]({os.path.relpath(path, out)})"
                )
    shown = [plan_lib.REAL] + [c for c in [best_condition(results, primary)] if c]
    seed_0 = {c: pathlib.Path(results[c][0]["file"]).parent for c in shown}
    attention = {c: final_evaluator(seed_0[c], "attention") for c in shown}
    maps = {c: {name: attention[c] and _latest_png(seed_0[c] / evaluators.EVALS_DIR
                                                  / attention[c], f"{name}_")
                for name in class_names} for c in shown}  # fmt: skip
    if any(path for by_class in maps.values() for path in by_class.values()):
        lines += [
            "",
            "Attention rollout of the ViT (seed 0) on test images of each class, correct and "
            "wrong predictions side by side:",
            "",
            "| class | " + " | ".join(shown) + " |",
            "|---" * (len(shown) + 1) + "|",
        ]
        for name in class_names:
            cells = [f"![{c} {name}]({os.path.relpath(maps[c][name], out)})" if maps[c][name]
                     else "none" for c in shown]  # fmt: skip
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def environment_section(plan, root: pathlib.Path) -> list[str]:
    """Where the training runs ran (their environment.json): each distinct setup and its runs."""
    setups: dict[str, list[str]] = {}
    for run in plan:
        if run.verb == "train" and (env := environment.read(root / run.name)):
            setups.setdefault(environment.summary(env), []).append(run.name)
    lines = ["## Environment", ""]
    for setup, names in setups.items():
        lines.append(f"- {len(names)} training run(s), e.g. {names[0]}: {setup}")
    if not setups:
        lines.append(f"No training run left an {environment.FILE} (older runs did not write one).")
    return lines


def subgroup_section(results: dict, primary: str) -> list[str]:
    """Balanced accuracy per sex, age band and body site for real-only and the best real +
    synthetic condition (by mean `primary`), and each attribute's gap (best - worst subgroup)."""
    lines = ["## Subgroups", ""]
    real = results[plan_lib.REAL]
    best = best_condition(results, primary)
    if real[0].get("subgroups") is None or best is None:
        note = ("No subgroup metadata in this data (HAM10000 records age, sex and body site; the "
                "digits and DermaMNIST do not), so no subgroup table.")  # fmt: skip
        return [*lines, note]
    lines += [
        f"Test balanced accuracy per subgroup, mean ± std over seeds, for real-only and {best} "
        f"(the best real + synthetic condition by {primary}); subgroups under "
        f"{classification.MIN_SUBGROUP} test images are not scored. Gap: best minus worst "
        "subgroup of an attribute; a smaller gap with synthetic data means it narrowed.",
        "",
        f"| attribute | subgroup | test images | real | {best} |",
        "|---|---|---|---|---|",
    ]

    def scores(runs, attribute, value):
        values = [r["subgroups"][attribute].get(value, {}).get("balanced_accuracy") for r in runs]
        return None if any(v is None for v in values) else values

    for attribute, groups in real[0]["subgroups"].items():
        gaps = {}
        for value, entry in groups.items():
            cells = []
            for condition in (plan_lib.REAL, best):
                values = scores(results[condition], attribute, value)
                cells.append("not scored" if values is None else _mean_std(values))
                if values is not None:
                    gaps.setdefault(condition, []).append(np.mean(values))
            lines.append(f"| {attribute} | {value} | {entry['n']} | " + " | ".join(cells) + " |")
        gap_cells = [f"{max(g) - min(g):.3f}" if len(g := gaps.get(c, [])) > 1 else "n/a"
                     for c in (plan_lib.REAL, best)]  # fmt: skip
        lines.append(f"| {attribute} | gap | | " + " | ".join(gap_cells) + " |")
    return lines


def per_class_f1_plot(results: dict, class_names: list[str], path: pathlib.Path) -> None:
    """Grouped bars: each condition's mean test F1 per class, with the seeds' std."""
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(class_names)), 3.5))
    width = 0.8 / len(results)
    x = np.arange(len(class_names))
    for i, (condition, seeds) in enumerate(results.items()):
        values = np.asarray([[s["metrics"][f"{c}/f1"] for c in class_names] for s in seeds])
        spread = values.std(0, ddof=1) if len(values) > 1 else None  # As the tables' ± std.
        ax.bar(x + i * width, values.mean(0), width, yerr=spread, label=condition)
    ax.set_xticks(x + 0.4 - width / 2, class_names)
    ax.set_ylabel("test F1")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with fileio.atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)


def _generator_of(condition: str, realism: dict) -> str:
    """The one generator whose set a condition reads (real+<g>, synthetic_<g>), else ""."""
    for prefix in ("real+", "synthetic_"):
        name = condition.removeprefix(prefix)
        if condition.startswith(prefix) and name in realism:
            return name
    return ""


def realism_section(realism: dict, has_inception: bool) -> list[str]:
    """Per generator: FD / KD / precision / recall in the ViT's features, the balanced recognised
    share, and Inception's FID / KID when present; then the recognised share and KD per class."""
    if not realism:
        return []
    space = next(iter(realism.values()))["classifier"]["feature_space"]
    lines = [
        "## Realism of each synthetic set",
        "",
        f"Against the real test split. FD and KD: Fréchet and kernel (KID's) distances in the "
        f"real-only seed-0 ViT's feature space ({space}), not FID; precision and recall: the "
        "k-NN manifold coverage (Kynkäänniemi et al.) in that space. Recognised: the share of "
        "each class's images that ViT labels as the class they were generated for, averaged over "
        "classes; its ceiling is that ViT's balanced recall on real test images.",
        "",
        "| generator | images | FD | KD | precision | recall | recognised | ceiling | FID "
        "(Inception) | KID (Inception) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for generator, entry in realism.items():
        ours, named = entry["classifier"]["overall"], entry["recognised"]
        inception_entry = entry.get("inception")
        fid_cells = (
            [f"{inception_entry['overall'][k]:.4g}" for k in ("fid", "kid")]
            if inception_entry else ["not computed: no Inception weights"] * 2
        )  # fmt: skip
        lines.append(
            f"| {generator} | {ours['n_fake']} | {ours['fd']:.4g} | {ours['kd']:.4g} | "
            f"{ours['precision']:.3f} | {ours['recall']:.3f} | {named['balanced']:.3f} | "
            f"{named['ceiling_balanced']:.3f} | " + " | ".join(fid_cells) + " |"
        )
    lines += [
        "",
        "Recognised share per class, beside the reference ViT's recall on real test images of "
        "the class (the ceiling) and their ratio:",
        "",
        *recognition.markdown_header(["generator"]),
    ]
    for generator, entry in realism.items():
        lines += recognition.markdown_rows(entry["recognised"], prefix=[generator])
    lines += [
        "",
        "KD per class (unbiased at small sample sizes, where a per-class Fréchet distance is "
        "not; classes with too few images on either side are left out):",
        "",
        "| generator | class | KD |",
        "|---|---|---|",
    ]
    for generator, entry in realism.items():
        for cls, row in entry["classifier"]["per_class"].items():
            lines.append(f"| {generator} | {cls} | {row['kd']:.4g} |")
    if not has_inception:
        lines += [
            "",
            "Inception columns: no converted Inception weights were found, so FID and KID were "
            "not computed; `ham-synth convert-inception` adds them on a rerun.",
        ]
    return lines


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
    point's real-only runs, with the verdict."""
    primary = study.report.primary_metric
    axes = [field for field, _ in plan_lib.parse_sweep(study.sweep, study)]
    lines = [
        "# Does synthetic data help the classifier? A sweep",
        "",
        f"Sweep over {', '.join(axes)} (`{study.sweep}`): each point is a study; its full report "
        "is points/<point>/report.md. Test "
        f"{primary}, mean ± std over seeds; the change from real-only is paired over seeds at "
        "that point, Holm-corrected within the point.",
        "",
        "| point | condition | " + primary + " | change | 95% interval | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for label, content in contents.items():
        for condition, runs in content["results"].items():
            cell = _mean_std([r["metrics"][primary] for r in runs])
            change = content["changes"][primary].get(condition)
            if change is None:
                lines.append(f"| {label} | {condition} | {cell} | | | |")
                continue
            lines.append(
                f"| {label} | {condition} | {cell} | {_signed(change['mean'])} | "
                f"{_signed(change['low'])} to {_signed(change['high'])} | {change['verdict']} |"
            )
    lines += ["", *[f"- [{label}](points/{label}/report.md)" for label in contents]]
    fileio.write_text(root / REPORT_MD, "\n".join(lines) + "\n")
    content = {"sweep": study.sweep, "points": contents}
    fileio.write_json(root / REPORT_JSON, content, default=str)
    return content


def write_point_report(
    study: ml_collections.ConfigDict, plan: list[plan_lib.Run], root: pathlib.Path, out
) -> dict:
    """One study point's report.md, report.json and report/per_class_f1.png, written to `out`
    from the runs of `plan` under `root`; returns the JSON's content."""
    out.mkdir(parents=True, exist_ok=True)
    results = collect(plan, root)
    real_run = next(r for r in plan if r.base_name.startswith(f"classifiers/{plan_lib.REAL}/"))
    class_names = config_lib.class_names(config_lib.load_workdir_config(root / real_run.name))
    primary = study.report.primary_metric
    changes = {metric: stats.compare(results, metric, plan_lib.REAL) for metric in METRICS.values()}
    class_changes = stats.compare(results, "f1", plan_lib.REAL, class_names)
    seeds = len(results[plan_lib.REAL])
    per_class_f1_plot(results, class_names, out / "report" / "per_class_f1.png")
    realism = collect_realism(plan, root)
    has_inception = any("inception" in entry for entry in realism.values())

    lines = [
        "# Does synthetic data help the classifier?",
        "",
        f"Test-split metrics of the ViT, mean ± std over {seeds} seed(s), each run scored on its "
        "best checkpoint by validation balanced accuracy.",
        "",
        "| training data | " + " | ".join(METRICS) + " | FID | FD (ViT features) |",
        "|---" * (len(METRICS) + 3) + "|",
    ]
    for condition, runs in results.items():
        cells = [_mean_std([r["metrics"][m] for r in runs]) for m in METRICS.values()]
        generator = _generator_of(condition, realism)
        fid = fd = ""
        if generator:
            fd = f"{realism[generator]['classifier']['overall']['fd']:.3g}"
            inception_entry = realism[generator].get("inception")
            fid = f"{inception_entry['overall']['fid']:.3g}" if inception_entry else "no weights"
        lines.append(f"| {condition} | " + " | ".join([*cells, fid, fd]) + " |")
    lines += [
        "",
        "FID and FD score the condition's synthetic set against the real test split (Realism "
        "below); FD is in the real-only ViT's feature space and is not FID."
        + (
            ""
            if has_inception
            else " FID needs Inception weights (`ham-synth "
            "convert-inception`), absent here, so FID is not computed."
        ),
    ]
    lines += [
        "",
        f"## Change from real-only ({primary})",
        "",
        f"Paired over seeds: mean difference, 95% interval (scipy's paired t-test), and p with "
        f"Holm's correction over the {len(changes[primary])} conditions compared "
        f"(alpha {stats.ALPHA}).",
        "",
        "| condition | change | 95% interval | p (Holm) | verdict |",
        "|---|---|---|---|---|",
    ]
    for condition, change in changes[primary].items():
        lines.append(
            f"| {condition[0]} | {_signed(change['mean'])} | "
            f"{_signed(change['low'])} to {_signed(change['high'])} | "
            f"{change['p_holm']:.3g} | {change['verdict']} |"
        )
    lines += [""] + [
        f"- {condition[0]}: {change['verdict']} on {primary} ({_signed(change['mean'])}, 95% "
        f"interval {_signed(change['low'])} to {_signed(change['high'])}, {seeds} seeds)."
        for condition, change in changes[primary].items()
    ]
    if seeds < 5:
        lines += [
            "",
            f"With {seeds} seed(s) the intervals are wide: a real effect of a few points can read "
            "as no measurable effect. More seeds (`seeds`) narrow them.",
        ]
    lines += [
        "",
        "## Per-class F1",
        "",
        "Mean test F1 per class; the change from real-only in brackets, marked * where Holm's "
        f"correction over all {len(class_changes)} condition x class comparisons leaves p < "
        f"{stats.ALPHA}.",
        "",
        "| training data | " + " | ".join(class_names) + " |",
        "|---" * (len(class_names) + 1) + "|",
    ]
    for condition, runs in results.items():
        cells = []
        for cls in class_names:
            cell = f"{np.mean([r['metrics'][f'{cls}/f1'] for r in runs]):.3f}"
            if condition != plan_lib.REAL:
                change = class_changes[(condition, cls)]
                star = "*" if change["p_holm"] < stats.ALPHA else ""
                cell += f" ({_signed(change['mean'])}{star})"
            cells.append(cell)
        lines.append(f"| {condition} | " + " | ".join(cells) + " |")
    lines += ["", "![per-class F1](report/per_class_f1.png)", ""]
    lines += [*subgroup_section(results, primary), ""]
    lines += realism_section(realism, has_inception)
    audits = collect_memorization(plan, root, out)
    lines += ["", *memorization_section(audits)]
    lines += ["", *images_section(plan, root, out, results, primary, class_names)]
    lines += ["", *environment_section(plan, root)]
    lines += ["", "## Runs", ""]
    lines += [f"- `{plan_lib.shell_command(r, root)}`" for r in plan if r.verb != "report"]
    fileio.write_text(out / REPORT_MD, "\n".join(lines) + "\n")

    content = {
        "primary_metric": primary,
        "seeds": seeds,
        "results": results,
        "changes": {m: {k[0]: v for k, v in c.items()} for m, c in changes.items()},
        "per_class_f1_changes": {f"{k[0]}/{k[1]}": v for k, v in class_changes.items()},
        "realism": realism,
        "memorization": audits,
        "study_config": study.to_dict(),
    }
    fileio.write_json(out / REPORT_JSON, content, default=str)
    return content
