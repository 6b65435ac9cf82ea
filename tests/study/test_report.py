"""The study report: its numbers equal the runs' metrics files, its intervals and Holm's correction
match closed forms, its verdicts follow them; and one real smoke study end to end."""

import csv
import json
import re

import numpy as np
import pytest
from conftest import REPO
from PIL import Image

from ham_synth import config_lib, grids, metric_writer
from ham_synth.study import collect, report, runner, sections, stats
from ham_synth.study import plan as plan_lib

CLASSES = ["0:akiec", "1:bcc", "2:bkl", "3:df", "4:mel", "5:nv", "6:vasc"]


def fake_runs(root, plan, rng):
    """A metrics.jsonl (the test evaluator's row) and config.json for each classifier run;
    real+vae gains 0.1 balanced accuracy over real at every seed."""
    expected = {}
    # Each classifier run's config.json, as training writes it.
    classifier = config_lib.load_config("configs/vit.py:smoke")
    classifier.data.class_names = ",".join(CLASSES)
    classifier_fields = json.loads(classifier.to_json_best_effort())
    for run in plan:
        folder = root / run.name
        if run.base_name.endswith("/classifier"):  # realism/<g>/classifier: evaluate's metrics.json
            (folder / "eval").mkdir(parents=True)
            row = {"fd": 1.5, "kd": 0.25, "precision": 0.5, "recall": 0.75, "n_fake": 4,
                   "n_real": 10}  # fmt: skip
            # Class-matched subsets: the table reads all four scores and the count from them.
            matched = {**row, "fd": 1.25, "precision": 0.25, "recall": 0.5, "n_fake": 3}
            metrics = {"feature_space": "classifier (step 3 of V)", "overall": row,
                       "matched": matched, "per_class": {"3:df": row}}  # fmt: skip
            (folder / "eval" / "metrics.json").write_text(json.dumps(metrics))
        if run.base_name.endswith("/recognised"):  # 3 of 4 df and 1 of 2 vasc images recognised
            folder.mkdir(parents=True)
            (folder / "predictions.csv").write_text(
                "path,predicted,probability,error\n"
                + "".join(f"3:df/{i}.png,{'3:df' if i else '5:nv'},0.9,\n" for i in range(4))
                + "6:vasc/a.png,6:vasc,0.9,\n6:vasc/b.png,0:akiec,0.9,\n"
                + "6:vasc/c.png,,,cannot decode\n5:nv/a.png,5:nv,0.9,\n"
            )
        if run.stage == "filtered":  # The filter kept 3 of 5 df images drawn.
            folder.mkdir(parents=True)
            summary = {"3:df": {"wanted": 3, "drawn": 5, "kept": 3, "acceptance": 0.6}}
            (folder / "screening.json").write_text(json.dumps(summary))
        if run.stage == "memorization":
            folder.mkdir(parents=True)
            per_class = {"3:df": {"images": 4, "near_copies": 1, "pixels": {"ratio": 0.75},
                                  "features": {"ratio": 0.5}}}  # fmt: skip
            audit = {"quantile": 0.01, "near_copies": 2, "images_audited": 10, "images": [],
                     "pixels": {"ratio": 0.5}, "features": {"ratio": 0.25},
                     "per_class": per_class}  # fmt: skip
            (folder / "memorization.json").write_text(json.dumps(audit))
        if not run.base_name.startswith("classifiers/"):
            continue
        condition, seed = run.base_name.split("/")[1], int(run.name[-1])
        base = 0.5 + 0.02 * seed + (0.1 if condition == "real+vae" else rng.uniform(-0.01, 0.01))
        metrics = {m: base + rng.uniform(-1e-3, 1e-3) for m in sections.METRICS.values()}
        metrics["balanced_accuracy"] = base
        metrics |= {f"{c}/f1": rng.uniform() for c in CLASSES}
        metrics |= {f"{c}/recall": 0.5 if c == "3:df" else 0.8 for c in CLASSES}
        row = {"step": 6, "test/checkpoint_step": 3} | {f"test/{k}": v for k, v in metrics.items()}
        folder.mkdir(parents=True)
        (folder / metric_writer.METRICS_FILE).write_text(
            json.dumps({"step": 3, "val/balanced_accuracy": 0.1}) + "\n" + json.dumps(row) + "\n"
        )
        # The test evaluator's JSON at the checkpoint it used, with subgroups (as HAM10000 has).
        (folder / "evals" / "test").mkdir(parents=True)
        groups = {"female": {"n": 30, "balanced_accuracy": base},
                  "male": {"n": 25, "balanced_accuracy": base - 0.1},
                  "unknown": {"n": 2, "balanced_accuracy": None}}  # fmt: skip
        (folder / "evals" / "test" / "step_0000003.json").write_text(
            json.dumps({"step": 3, "subgroups": {"sex": groups}})
        )
        # The training stream it recorded: real+* runs draw a quarter of each class but nv
        # synthetic, at the real-only shares.
        fake = [0.0 if condition == "real" or c == "5:nv" else 0.25 for c in CLASSES]
        if condition.startswith("synthetic_"):
            fake = [1.0] * 7
        classifier_fields["data"] |= {"class_shares": ",".join(["0.142857"] * 7),
                                      "synthetic_shares": ",".join(map(str, fake))}  # fmt: skip
        (folder / "config.json").write_text(json.dumps(classifier_fields))
        for point in run.points:
            expected[(point, condition, seed)] = metrics
    return expected


def test_report_numbers_come_from_the_runs_files(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("HAM_SYNTH_CACHE_DIR", str(tmp_path / "cache"))
    study = config_lib.with_values(
        config_lib.load_config("configs/study.py:smoke"), {"seeds.classifiers": 3}
    )
    plan = plan_lib.make_plan(study, tmp_path)
    expected = {k[1:]: v for k, v in fake_runs(tmp_path, plan, np.random.default_rng(0)).items()}
    content = report.write_report(study, plan, tmp_path)

    for (condition, seed), metrics in expected.items():
        run = content["results"][condition][seed]
        assert run["metrics"] == pytest.approx(metrics)
        assert run["checkpoint_step"] == 3 and run["file"].endswith("metrics.jsonl")
    text = (tmp_path / report.REPORT_MD).read_text()
    for condition in plan_lib.conditions(plan):
        values = [expected[(condition, s)]["f1_macro"] for s in range(3)]
        assert f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}" in text
    changes = content["changes"]["balanced_accuracy"]
    gain = np.mean([expected[("real+vae", s)]["balanced_accuracy"]
                    - expected[("real", s)]["balanced_accuracy"] for s in range(3)])  # fmt: skip
    assert changes["real+vae"]["mean"] == pytest.approx(gain)
    assert changes["real+vae"]["verdict"] == "helped"
    # TSTR is no part of the Holm family: it is read against real-only as a ratio.
    compared = ("real+ddpm", "real+gan", "real+vae", "real+vae:filtered", "pretrain_vae")
    assert set(changes) == set(compared)
    assert changes["real+vae"]["comparisons"] == 5 and changes["real+vae"]["control"] == "real"
    first, second = (p["train.total_steps"] for p in plan_lib.pretrain_steps(study))
    assert f"- pretrain_vae: {first} steps on the vae set alone" in text
    assert f"then {second} on real data" in text
    p_holm = stats.holm([changes[c]["p"] for c in compared])
    assert [changes[c]["p_holm"] for c in compared] == pytest.approx(p_holm)
    assert changes["real+gan"]["verdict"] == "no measurable effect"
    assert f"real+vae: helped on balanced_accuracy against real ({gain:+.3f}" in text
    assert "| real+vae | real | " in text and "unadjusted 95% interval" in text
    assert "The intervals cover classifier seeds only" in text  # One generator seed.
    tstr = [expected[("synthetic_vae", s)]["balanced_accuracy"] for s in range(3)]
    trtr = [expected[("real", s)]["balanced_accuracy"] for s in range(3)]
    assert content["tstr"]["vae"]["ratio"] == pytest.approx(np.mean(tstr) / np.mean(trtr))
    assert f"| vae | {np.mean(tstr):.3f} | {np.mean(trtr):.3f} |" in text
    assert "Balanced accuracy (chance 0.143)" in text
    # The stream table, from each run's recorded shares.
    assert content["stream"]["real+gan"]["3:df"] == {"share": 0.142857, "synthetic_share": 0.25}
    assert content["stream"]["real"]["3:df"]["synthetic_share"] == 0.0
    assert "| real+gan | " + " | ".join(["0.143 (25%)"] * 5 + ["0.143 (0%)", "0.143 (25%)"]) in text
    assert (tmp_path / "report" / "per_class_f1.png").stat().st_size > 0
    # Against the real-only seed-0 ViT's recall on real test images (3:df 0.5, others 0.8).
    named = content["realism"]["vae"]["recognised"]
    assert named["per_class"] == {
        "3:df": {"share": 0.75, "ceiling": 0.5, "ratio": 1.5, "n": 4},
        "6:vasc": {"share": 0.5, "ceiling": 0.8, "ratio": 0.625, "n": 2},
    }
    assert (named["balanced"], named["ceiling_balanced"]) == pytest.approx((0.625, 0.65))
    assert named["chance"] == pytest.approx(1 / 7)
    # nv's images were made for the synthetic-only condition alone: scored apart.
    assert named["tstr_only"]["per_class"] == {"5:nv": {"share": 1.0, "ceiling": 0.8,
                                                        "ratio": 1.25, "n": 1}}  # fmt: skip
    assert "| real+vae | " in text and "| 1.25 |" in text and "no weights" in text
    assert "| vae | 3 of 4 | 1.25 | 0.25 | 0.25 | 0.5 | 0.625 | 0.650 | not computed" in text
    assert "| vae | 3:df | 10 | 4 | 1.5 | 0.25 | 0.500 | 0.750 |" in text
    assert "| vae | 3:df | 4 | 0.750 | 0.500 | 1.500 |" in text
    assert "| vae | balanced (chance 0.143) | 6 | 0.625 | 0.650 | 0.962 |" in text
    assert "| gan | 10 | 2 | 0.500 | 0.250 | [memorization/gan/closest_pairs.png]" in text
    assert content["memorization"]["gan"]["near_copies"] == 2
    assert "| gan | 3:df | 4 | 1 | 0.750 | 0.500 |" in text
    assert content["filtered"]["vae:filtered"]["3:df"]["acceptance"] == 0.6
    assert "| vae:filtered | 3:df | 3 | 5 | 3 | 0.600 |" in text
    # Subgroups: real-only against the best real + synthetic condition (real+vae here).
    assert "| attribute | subgroup | test images | real | real+vae |" in text
    female = [expected[("real", s)]["balanced_accuracy"] for s in range(3)]
    assert f"| sex | female | 30 | {np.mean(female):.3f} ± {np.std(female, ddof=1):.3f} |" in text
    assert "| sex | unknown | 2 | not scored | not scored |" in text
    assert "| sex | gap | | 0.100 | 0.100 |" in text


def test_a_sweep_report_tabulates_its_points(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("HAM_SYNTH_CACHE_DIR", str(tmp_path / "cache"))
    study = config_lib.with_values(
        config_lib.load_config("configs/study.py:smoke"),
        {"seeds.classifiers": 3, "sweep": "synthetic.per_class=20,30"},
    )
    plan = plan_lib.make_plan(study, tmp_path)
    expected = fake_runs(tmp_path, plan, np.random.default_rng(1))
    content = report.write_report(study, plan, tmp_path)
    text = (tmp_path / report.REPORT_MD).read_text()
    for point in ("synthetic.per_class=20", "synthetic.per_class=30"):
        assert (tmp_path / "points" / point / report.REPORT_MD).exists()
        assert f"- [{point}](points/{point}/report.md)" in text
        results = content["points"][point]["results"]
        for condition in plan_lib.conditions(plan):
            assert f"| {point} | {condition} |" in text
            for seed in range(3):
                metrics = results[condition][seed]["metrics"]
                assert metrics == pytest.approx(expected[(point, condition, seed)])
    # Under the ratio policy per_class leaves the stream's synthetic share as it was (fake_runs:
    # a quarter of 6 of 7 equally drawn classes at both points), so the plot's x is per_class.
    assert not report.shares_tell_points_apart(content["points"])
    assert "![change against synthetic.per_class]" in text
    assert (tmp_path / "report" / "sweep_synthetic.per_class.png").stat().st_size > 0
    values = {"synthetic.per_class=20": 20, "synthetic.per_class=30": 30}
    dose = report.sweep_series(content["points"], values, "balanced_accuracy", dose=True)
    for point, (x, mean, low, high) in zip(values, dose["real+gan"], strict=True):
        change = content["points"][point]["changes"]["balanced_accuracy"]["real+gan"]
        assert x == pytest.approx(6 * 0.142857 * 0.25)
        assert (mean, low, high) == (change["mean"], change["low"], change["high"])
    axis = report.sweep_series(content["points"], values, "balanced_accuracy", dose=False)
    assert [x for x, *_ in axis["real+gan"]] == [20, 30]


@pytest.mark.slow
def test_smoke_study_end_to_end(tmp_path, monkeypatch):
    """One generator, one seed: every run real, the report has every condition, a rerun skips
    everything, and val and test stay real in every condition."""
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("HAM_SYNTH_CACHE_DIR", str(tmp_path / "cache"))
    study = config_lib.load_config("configs/study.py:smoke")
    with study.unlocked():
        del study.generators["ddpm"], study.generators["gan"]
        study.seeds.classifiers = 1
    made = runner.run_study(study, tmp_path)
    assert len(made) == 13
    text = (tmp_path / report.REPORT_MD).read_text()
    for condition in ("real", "real+vae", "real+vae:filtered", "synthetic_vae", "pretrain_vae"):
        assert f"| {condition} |" in text
    with open(tmp_path / "synthetic" / "vae:filtered" / "manifest.csv") as f:
        confidences = [float(row["confidence"]) for row in csv.DictReader(f)]
    assert confidences and min(confidences) >= study.synthetic.filter.min_confidence
    assert "| vae | 6:vasc |" in text  # Realism per class.
    assert (tmp_path / "memorization" / "vae" / "closest_pairs.png").stat().st_size > 0
    # Images: the generator's sample grid, the set's per-class grid, attention maps; every link
    # resolves to a file of the workdir.
    links = re.findall(r"!\[[^]]*\]\(([^)]+)\)", text)
    assert "report/synthetic_vae.png" in links
    assert any(link.startswith("generators/vae/samples/step_") for link in links)
    assert any("classifiers/real/seed_0/evals/attention/" in link for link in links)
    assert all((tmp_path / link).is_file() for link in links), links
    with Image.open(tmp_path / "report" / "synthetic_vae.png") as grid:  # 7 classes of 8x8.
        assert grid.height == grids.display_scale(8) * (7 * (8 + 1) + 1)
    assert "training run(s), e.g. generators/vae: cpu (" in text
    assert runner.run_study(study, tmp_path) == []

    real_sizes = None
    for condition in ("real", "real+vae", "synthetic_vae"):
        workdir = tmp_path / "classifiers" / condition / "seed_0"
        rows = metric_writer.read_metrics(workdir)
        share = [r["train/synthetic_share"] for r in rows if "train/synthetic_share" in r]
        assert (np.mean(share) > 0) == (condition != "real")
        if condition == "synthetic_vae":
            assert min(share) == 1.0
        sizes = {}
        for split in ("val", "test"):
            record = json.loads(sorted((workdir / "evals" / split).glob("*.json"))[-1].read_text())
            sizes[split] = record["num_examples"]
        real_sizes = real_sizes or sizes
        assert sizes == real_sizes == {"val": 126, "test": 126}


def test_the_report_finds_the_final_evaluators_by_type_in_the_run_config(tmp_path):
    fields = json.loads(config_lib.load_config("configs/vit.py:smoke").to_json_best_effort())
    evals = fields["evals"]
    evals["held_out"] = dict(evals["test"])  # A second final classification evaluator.
    del evals["attention"]
    (tmp_path / "config.json").write_text(json.dumps(fields))
    assert collect.final_evaluator(tmp_path, "attention") is None
    with pytest.raises(ValueError, match=r"one 'classification' evaluator.*\['held_out', 'test'\]"):
        collect.final_evaluator(tmp_path, "classification")
    del evals["test"]
    (tmp_path / "config.json").write_text(json.dumps(fields))
    assert collect.final_evaluator(tmp_path, "classification") == "held_out"


def test_the_dose_series_puts_each_dose_at_its_streams_synthetic_share():
    change = {"mean": 0.01, "low": -0.02, "high": 0.04}
    changes = {"real+ddpm": change, "real+ddpm:ratio=0.5": {**change, "mean": 0.03},
               "real+gan": change}  # fmt: skip

    def stream(fake):  # Half the draws of a class that is half the stream: fake / 2 synthetic.
        return {
            "a": {"share": 0.5, "synthetic_share": fake},
            "b": {"share": 0.5, "synthetic_share": 0.0},
        }

    streams = {"real+ddpm": stream(0.25), "real+ddpm:ratio=0.5": stream(0.5),
               "real+gan": stream(0.25)}  # fmt: skip
    series = report.dose_series(changes, streams, ["ddpm"])
    assert series == {"ddpm": [(0.125, 0.01, -0.02, 0.04), (0.25, 0.03, -0.02, 0.04)]}


def _stream(fake: float, share_a: float = 0.5):
    """Two classes; class a draws `fake` of its images synthetic."""
    return {"a": {"share": share_a, "synthetic_share": fake},
            "b": {"share": 1 - share_a, "synthetic_share": 0.0}}  # fmt: skip


def test_the_dose_plot_takes_the_streams_share_only_where_it_tells_the_points_apart():
    change = {"mean": 0.01, "low": -0.02, "high": 0.04}

    def point(fake):
        return {"stream": {"real": _stream(0.0), "real+g": _stream(fake),
                           "pretrain_g": _stream(0.0)},
                "changes": {"ba": {"real+g": change, "pretrain_g": change}}}  # fmt: skip

    ratios = {"ratio=0.1": point(0.1), "ratio=0.5": point(0.5)}
    assert report.shares_tell_points_apart(ratios)
    assert not report.shares_tell_points_apart({"n=10": point(0.25), "n=30": point(0.25)})
    # Pre-training draws no synthetic images in its stream: no place on a dose axis.
    series = report.sweep_series(ratios, {"ratio=0.1": 0.1, "ratio=0.5": 0.5}, "ba", dose=True)
    assert series == {"real+g": [(0.05, 0.01, -0.02, 0.04), (0.25, 0.01, -0.02, 0.04)]}


def test_the_stream_table_says_when_a_condition_moves_the_class_mix_too():
    controls = {"real+g": "real:uniform"}
    matched = {"real:uniform": _stream(0.0, 0.8), "real+g": _stream(0.3, 0.8)}
    text = "\n".join(sections.stream_section(matched, ["a", "b"], controls))
    assert "differ only in the bracketed shares" in text
    added = {"real:uniform": _stream(0.0, 0.8), "real+g": _stream(0.6, 0.6)}  # add: a grows
    text = "\n".join(sections.stream_section(added, ["a", "b"], controls))
    assert "differ only" not in text
    assert "The class shares of real+g differ from the control's too" in text


def test_subgroups_set_the_best_condition_against_its_matched_control():
    """The gap of sex narrows against real-only (0.20 -> 0.06) but widens against the matched
    control (0.04 -> 0.06): the table shows the latter."""

    def runs(score, gap):
        sex = {"f": {"n": 30, "balanced_accuracy": score},
               "m": {"n": 30, "balanced_accuracy": score - gap}}  # fmt: skip
        return [{"metrics": {"balanced_accuracy": score}, "subgroups": {"sex": sex}}] * 2

    results = {"real": runs(0.5, 0.2), "real:uniform": runs(0.55, 0.04),
               "real+g": runs(0.6, 0.06)}  # fmt: skip
    text = "\n".join(sections.subgroup_section(results, "balanced_accuracy",
                                               {"real+g": "real:uniform"}))  # fmt: skip
    assert "| attribute | subgroup | test images | real:uniform | real+g |" in text
    assert "| sex | gap | | 0.040 | 0.060 |" in text
    assert "picked after the fact" in text and "it is no finding" in text


def test_a_class_without_test_images_is_left_out_of_the_per_class_table():
    scored = {"a/f1": 0.5, "b/f1": 0.25}  # c: no test images, so no c/f1.
    results = {"real": [{"metrics": scored}] * 2, "real+g": [{"metrics": scored}] * 2}
    tested = collect.tested_classes(results, ["a", "b", "c"])
    assert tested == ["a", "b"]
    changes = stats.compare(results, "f1", {"real+g": "real"}, tested)
    text = "\n".join(sections.per_class_f1_section(results, changes, ["a", "b", "c"], tested))
    assert "Not scored, with no test images: c." in text
    assert "| training data | a | b |" in text and "| real | 0.500 | 0.250 |" in text
