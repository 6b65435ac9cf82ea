"""The study report's markdown, one section per function: the results and their changes from
each condition's matched control, TSTR, the training streams, per-class F1, subgroups, realism,
memorization, images and environment."""

import glob
import math
import os
import pathlib

import numpy as np

from ham_synth import environment, evaluators, memorization
from ham_synth.evaluators import classification, recognition
from ham_synth.study import collect, figures, stats
from ham_synth.study import plan as plan_lib

# Column title -> the test evaluator's metric.
METRICS = {
    "Accuracy": "accuracy",
    "Balanced accuracy": "balanced_accuracy",
    "Precision (macro)": "precision_macro",
    "Recall (macro)": "recall_macro",
    "F1 (macro)": "f1_macro",
}


def mean_std(values) -> str:
    values = np.asarray(values, np.float64)
    std = values.std(ddof=1) if len(values) > 1 else float("nan")
    return f"{values.mean():.3f} ± {std:.3f}" if len(values) > 1 else f"{values.mean():.3f}"


def signed(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:+.3f}"


def memorization_section(audits: dict) -> list[str]:
    if not audits:
        return []
    lines = [
        "## Memorization",
        "",
        "Each generator's seed-0 set as sampled (the sets of other generator seeds and the "
        "filtered sets are not audited). For every image of it, the nearest training image in "
        "pixels and in the real-only "
        "ViT's features, each distance over the median real test->train distance of its "
        "image's class (a set's class mix would otherwise read as closeness). Ratio: the median "
        "of these (about 1: as close as new real images of the class; near 0: copies). A "
        "near-copy is closer to a training image, in both spaces, than the "
        f"{next(iter(audits.values()))['quantile']:g} quantile of the test images' relative "
        "distances, pooled over classes.",
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
    lines += [
        "",
        "Per class, each class's synthetic and test images against the training images of that "
        "class (near-copies by that class's test distances):",
        "",
        "| generator | class | images | near-copies | ratio (pixels) | ratio (features) |",
        "|---|---|---|---|---|---|",
    ]
    for generator, audit in audits.items():
        for cls, entry in audit.get("per_class", {}).items():
            lines.append(
                f"| {generator} | {cls} | {entry['images']} | {entry['near_copies']} | "
                f"{entry['pixels']['ratio']:.3f} | {entry['features']['ratio']:.3f} |"
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
            if figures.synthetic_grid(root / run.name, class_names, path):
                lines.append(
                    f"- {generator}: its synthetic set, first {figures.SET_GRID_COLUMNS} images "
                    f"of each class: ![{generator} set]({os.path.relpath(path, out)})"
                )
    shown = [plan_lib.REAL] + [c for c in [best_condition(results, primary)] if c]
    seed_0 = {c: pathlib.Path(results[c][0]["file"]).parent for c in shown}
    attention = {c: collect.final_evaluator(seed_0[c], "attention") for c in shown}
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


def subgroup_section(results: dict, primary: str, controls: dict[str, str]) -> list[str]:
    """Balanced accuracy per sex, age band and body site for the best real + synthetic condition
    (by mean `primary`) and its matched control, and each attribute's gap (best - worst
    subgroup)."""
    lines = ["## Subgroups", ""]
    best = best_condition(results, primary)
    if results[plan_lib.REAL][0].get("subgroups") is None or best is None:
        note = ("No subgroup metadata in this data (HAM10000 records age, sex and body site; the "
                "digits and DermaMNIST do not), so no subgroup table.")  # fmt: skip
        return [*lines, note]
    control = controls.get(best, plan_lib.REAL)
    lines += [
        f"Test balanced accuracy per subgroup, mean ± std over seeds, for {best} (the real + "
        f"synthetic condition with the best mean test {primary}, picked after the fact) and its "
        f"matched control, {control}; subgroups under {classification.MIN_SUBGROUP} test images "
        "are not scored. Gap: best minus worst subgroup of an attribute, a mean over seeds with "
        "no interval or test: a difference between the two gaps describes these runs, it is no "
        "finding.",
        "",
        f"| attribute | subgroup | test images | {control} | {best} |",
        "|---|---|---|---|---|",
    ]

    def scores(runs, attribute, value):
        values = [r["subgroups"][attribute].get(value, {}).get("balanced_accuracy") for r in runs]
        return None if any(v is None for v in values) else values

    for attribute, groups in results[control][0]["subgroups"].items():
        gaps = {}
        for value, entry in groups.items():
            cells = []
            for condition in (control, best):
                values = scores(results[condition], attribute, value)
                cells.append("not scored" if values is None else mean_std(values))
                if values is not None:
                    gaps.setdefault(condition, []).append(np.mean(values))
            lines.append(f"| {attribute} | {value} | {entry['n']} | " + " | ".join(cells) + " |")
        gap_cells = [f"{max(g) - min(g):.3f}" if len(g := gaps.get(c, [])) > 1 else "n/a"
                     for c in (control, best)]  # fmt: skip
        lines.append(f"| {attribute} | gap | | " + " | ".join(gap_cells) + " |")
    return lines


def _generator_of(condition: str, realism: dict) -> str:
    """The one generator whose set a condition reads (real+<g>, synthetic_<g>), else ""."""
    for prefix in ("real+", plan_lib.TSTR):
        name = condition.removeprefix(prefix).split(plan_lib.DOSE)[0]  # Any dose: its set.
        if condition.startswith(prefix) and name in realism:
            return name
    return ""


def matched_cells(metrics: dict, names) -> list[str]:
    """An evaluation's class-matched values of `names` (evaluate's "matched"), or n/a."""
    matched = metrics.get("matched")
    return [f"{matched[n]:.4g}" if matched else "n/a" for n in names]


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
        f"real-only seed-0 ViT's feature space ({space}), not FID, on both sides subsampled to "
        "the test split's class mix (class-matched: the set's own mix would read as realism; "
        "n/a when the set lacks a test class, or has too few images of one to keep every class "
        "in the mix); precision and recall: the k-NN manifold coverage (Kynkäänniemi et al.) in "
        "that space, on the same subsets. Images: the synthetic subset scored, of the set's "
        "whole; a distance on fewer images reads higher, so compare sets at equal counts. "
        "Recognised: the share of each class's "
        "images that ViT labels as the class they were generated for, averaged over the classes "
        "the real + synthetic conditions take; its ceiling is that ViT's balanced recall on "
        "real test images of those classes.",
        "",
        "| generator | images | FD | KD | precision | recall | recognised | ceiling | FID "
        "(Inception) | KID (Inception) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for generator, entry in realism.items():
        named = entry["recognised"]
        fd, kd, precision, recall = matched_cells(
            entry["classifier"], ("fd", "kd", "precision", "recall")
        )
        matched, overall = entry["classifier"].get("matched"), entry["classifier"]["overall"]
        scored = f"{matched['n_fake'] if matched else 0} of {overall['n_fake']}"
        inception_entry = entry.get("inception")
        fid_cells = (
            matched_cells(inception_entry, ("fid", "kid"))
            if inception_entry else ["not computed: no Inception weights"] * 2
        )  # fmt: skip
        lines.append(
            f"| {generator} | {scored} | {fd} | {kd} | {precision} | {recall} | "
            f"{named['balanced']:.3f} | "
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
    tstr_only = {g: e["recognised"]["tstr_only"] for g, e in realism.items()
                 if e["recognised"].get("tstr_only")}  # fmt: skip
    if tstr_only:
        lines += [
            "",
            "The images made only for the synthetic-only condition (classes no real + synthetic "
            "condition takes), scored apart:",
            "",
            *recognition.markdown_header(["generator"]),
        ]
        for generator, entry in tstr_only.items():
            lines += recognition.markdown_rows(entry, prefix=[generator])
    lines += [
        "",
        "Per class: the set's class-c images against the real test images of class c, in the "
        "ViT's features (KD is unbiased at small sample sizes, where FD is not; classes with "
        "too few images on either side are left out):",
        "",
        "| generator | class | real | synthetic | FD | KD | precision | recall |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for generator, entry in realism.items():
        for cls, row in entry["classifier"]["per_class"].items():
            lines.append(
                f"| {generator} | {cls} | {row['n_real']} | {row['n_fake']} | {row['fd']:.4g} | "
                f"{row['kd']:.4g} | {row['precision']:.3f} | {row['recall']:.3f} |"
            )
    if not has_inception:
        lines += [
            "",
            "Inception columns: no converted Inception weights were found, so FID and KID were "
            "not computed; `ham-synth convert-inception` adds them on a rerun.",
        ]
    return lines


def results_table(results: dict, realism: dict, has_inception: bool, num_classes: int) -> list:
    """Every condition's test metrics, mean ± std over seeds, with chance beside balanced
    accuracy and its set's FID and FD."""
    titles = [f"{t} (chance {1 / num_classes:.3f})" if m == "balanced_accuracy" else t
              for t, m in METRICS.items()]  # fmt: skip
    seeds = len(next(iter(results.values())))
    lines = [
        f"Test-split metrics of the ViT, mean ± std over {seeds} seed(s), each run scored on its "
        "best checkpoint by validation balanced accuracy.",
        "",
        "| training data | " + " | ".join(titles) + " | FID | FD (ViT features) |",
        "|---" * (len(METRICS) + 3) + "|",
    ]
    for condition, runs in results.items():
        cells = [mean_std([r["metrics"][m] for r in runs]) for m in METRICS.values()]
        generator = _generator_of(condition, realism)
        fid = fd = ""
        if generator:
            fd = matched_cells(realism[generator]["classifier"], ("fd",))[0]
            inception_entry = realism[generator].get("inception")
            fid = matched_cells(inception_entry, ("fid",))[0] if inception_entry else "no weights"
        lines.append(f"| {condition} | " + " | ".join([*cells, fid, fd]) + " |")
    return [
        *lines,
        "",
        "FID and FD score the condition's synthetic set against the real test split, both "
        "subsampled to the split's class mix (Realism below); FD is in the real-only ViT's "
        "feature space and is not FID."
        + ("" if has_inception else " FID needs Inception weights (`ham-synth "
           "convert-inception`), absent here, so FID is not computed."),
    ]  # fmt: skip


def _family_size(changes: dict) -> int:
    """How many comparisons Holm's correction ran over (stats.compare leaves out the untestable)."""
    return next(iter(changes.values()))["comparisons"] if changes else 0


def changes_section(changes: dict, primary: str, seeds: int, generator_seeds: int) -> list:
    """Each compared condition's paired change from its matched control, with Holm's p and the
    verdict, and a sentence per condition."""
    if generator_seeds > 1:
        variance = (
            f"Classifier seed s reads the sets of generator seed s mod {generator_seeds}, so "
            "the intervals cover the generators' variance as well as the classifiers'."
        )
    else:
        variance = (
            "The intervals cover classifier seeds only: every condition reads one generator "
            "run and one synthetic set (seeds.generators raises that)."
        )
    lines = [
        f"## Change from the matched control ({primary})",
        "",
        "Each real + synthetic condition against the real-only runs that draw their real images "
        "as it does (its control; the training-stream table shows both). Paired over seeds: "
        "mean difference, its unadjusted 95% interval (scipy's paired t-test), and p with Holm's "
        f"correction over the {_family_size(changes)} comparisons that could be tested (alpha "
        f"{stats.ALPHA}); the verdict follows the adjusted p. {variance}",
        "",
        "| condition | control | change | unadjusted 95% interval | p (Holm) | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for (condition, _), change in changes.items():
        lines.append(
            f"| {condition} | {change['control']} | {signed(change['mean'])} | "
            f"{signed(change['low'])} to {signed(change['high'])} | "
            f"{change['p_holm']:.3g} | {change['verdict']} |"
        )
    lines += [""] + [
        f"- {condition}: {change['verdict']} on {primary} against {change['control']} "
        f"({signed(change['mean'])}, unadjusted 95% interval {signed(change['low'])} to "
        f"{signed(change['high'])}, {seeds} seeds)."
        for (condition, _), change in changes.items()
    ]
    if seeds < 5:
        lines += [
            "",
            f"With {seeds} seed(s) the intervals are wide: a real effect of a few points can read "
            "as no measurable effect. More seeds (`seeds.classifiers`) narrow them.",
        ]
    return lines


def tstr_section(tstr: dict, primary: str) -> list[str]:
    """Train on synthetic, test on real, against train on real (TRTR): a ratio, no verdict."""
    if not tstr:
        return []
    lines = [
        "## Train on synthetic, test on real (TSTR)",
        "",
        f"A ViT trained on a set alone, tested on real images, against the real-only runs "
        f"(TRTR): the ratio of the mean {primary}. A synthetic set is not expected to beat real "
        "data, so there is no verdict; 1 would mean the set teaches as much as the real data.",
        "",
        f"| generator | TSTR {primary} | TRTR {primary} | ratio |",
        "|---|---|---|---|",
    ]
    for generator, entry in tstr.items():
        lines.append(
            f"| {generator} | {entry['tstr']:.3f} | {entry['trtr']:.3f} | {entry['ratio']:.3f} |"
        )
    return lines


def class_mix_shifted(streams: dict, controls: dict[str, str]) -> list[str]:
    """The compared conditions whose class shares differ from their control's (a count policy
    adds images to the real draws), beyond the 6 digits the trainer records."""
    return [
        condition
        for condition, control in controls.items()
        if condition in streams and control in streams
        and any(abs(entry["share"] - streams[control][cls]["share"]) > 1e-5
                for cls, entry in streams[condition].items())
    ]  # fmt: skip


def stream_section(streams: dict, class_names: list[str], controls: dict[str, str]) -> list:
    """Per condition, each class's expected share of the training draws and the synthetic share
    within it (the comparison's matching, visible), and whether a condition's class mix differs
    from its control's."""
    shifted = class_mix_shifted(streams, controls)
    matching = (
        "A real + synthetic condition and its control differ only in the bracketed shares."
        if not shifted
        else f"The class shares of {', '.join(shifted)} differ from the control's too: the "
        "synthetic images are added to the real draws, which moves the class mix, so the change "
        "from the control is that of the added images and the new class mix together."
    )
    lines = [
        "## Training streams",
        "",
        "Each class's expected share of a condition's training draws, and in brackets the share "
        f"of those draws that are synthetic images, as the runs recorded them. {matching}",
        "",
        "| training data | " + " | ".join(class_names) + " |",
        "|---" * (len(class_names) + 1) + "|",
    ]
    for condition, by_class in streams.items():
        cells = [f"{by_class[c]['share']:.3f} ({by_class[c]['synthetic_share']:.0%})"
                 for c in class_names]  # fmt: skip
        lines.append(f"| {condition} | " + " | ".join(cells) + " |")
    return lines


def per_class_f1_section(
    results: dict, class_changes: dict, class_names: list[str], tested: list[str]
) -> list:
    """Mean test F1 per class and condition (the `tested` classes; the others have no test
    images), with each compared condition's change from its control."""
    untested = [c for c in class_names if c not in tested]
    lines = [
        "## Per-class F1",
        "",
        "Mean test F1 per class; for a compared condition, the change from its control in "
        f"brackets, marked * where Holm's correction over the {_family_size(class_changes)} "
        f"condition x class comparisons that could be tested leaves p < {stats.ALPHA}.",
        "",
        *([f"Not scored, with no test images: {', '.join(untested)}.", ""] if untested else []),
        "| training data | " + " | ".join(tested) + " |",
        "|---" * (len(tested) + 1) + "|",
    ]
    for condition, runs in results.items():
        cells = []
        for cls in tested:
            cell = f"{np.mean([r['metrics'][f'{cls}/f1'] for r in runs]):.3f}"
            if (change := class_changes.get((condition, cls))) is not None:
                star = "*" if change["p_holm"] < stats.ALPHA else ""
                cell += f" ({signed(change['mean'])}{star})"
            cells.append(cell)
        lines.append(f"| {condition} | " + " | ".join(cells) + " |")
    return [*lines, "", "![per-class F1](report/per_class_f1.png)"]


def filtering_section(screened: dict, min_confidence: float) -> list[str]:
    """Per filtered set and class: images wanted, drawn and kept, and the acceptance rate."""
    if not screened:
        return []
    lines = [
        "## Filtered sets",
        "",
        f"Each image kept only where the real-only seed-0 ViT gives its class a probability of at "
        f"least {min_confidence:g}; a dropped image is drawn again, up to a limit. Acceptance: "
        "kept over drawn. A class the ViT rarely recognises keeps few images.",
        "",
        "| set | class | wanted | drawn | kept | acceptance |",
        "|---|---|---|---|---|---|",
    ]
    for name, by_class in screened.items():
        for cls, c in by_class.items():
            lines.append(f"| {name} | {cls} | {c['wanted']} | {c['drawn']} | {c['kept']} | "
                         f"{c['acceptance']:.3f} |")  # fmt: skip
    return lines


def pretraining_section(study) -> list[str]:
    """How each pre-training condition split the real-only step budget."""
    generators = plan_lib.pretrained(study)
    if not generators:
        return []
    first, second = (part["train.total_steps"] for part in plan_lib.pretrain_steps(study))
    lines = ["## Synthetic pre-training", ""]
    for g in generators:
        lines.append(
            f"- {plan_lib.PRETRAIN}{g}: {first} steps on the {g} set alone "
            f"(pretraining/{g}/), then {second} on real data from that run's last checkpoint, as "
            f"the real-only runs draw it: {first + second} steps in all, real-only's budget."
        )
    return lines
