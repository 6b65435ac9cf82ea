"""The study's plan: its config -> the runs to make, in order, each an ordinary `ham-synth` run.

Stages, in order: what each makes, where under the study's workdir W, and what it depends on.

- generators: `train` each generator -> generators/<name>/; data, generators.<name>.
- synthetic: `sample` each generator -> synthetic/<name>/; its generator, synthetic.*.
- real: `train` the real-only ViT per seed -> classifiers/real/seed_<s>/; data, classifier.
- filtered: with synthetic.filter.min_confidence > 0, `sample` each of synthetic.filter's
  generators again, keeping an image only where the real-only seed-0 ViT gives its class at
  least that probability -> synthetic/<name>:filtered/; its generator and that ViT.
- realism: score each set against the real test split -> realism/<name>/: `evaluate` in the
  real-only seed-0 ViT's feature space (classifier/), and in Inception's when its weights exist
  (inception/); `classify` each image with that ViT for its recognised share (recognised/); its
  set and that ViT.
- conditions: `train` the ViT per seed on real + each set (optionally all sets at once; each
  filtered set as real+<name>:filtered) and on a set alone -> classifiers/<condition>/seed_<s>/;
  real's inputs, the sets read, synthetic.*.
- memorization: `memorization` of each set against the training images, in pixels and that
  ViT's features -> memorization/<name>/; its set and that ViT.
- report: tables, paired intervals and verdicts -> report.md, report.json, report/*.png; every
  run above.

Conditions are named after what the ViT trains on: `real`, `real+<generator>` (and at extra
doses, `real+<generator>:ratio=<r>`), `real+all`,
`synthetic_<generator>` (train on synthetic, test on real: TSTR, read against `real` as a ratio)
and `pretrain_<generator>` (pre-trained on the set under pretraining/<generator>/, then
fine-tuned on real data, at the real-only step budget; against `real`).

Matched controls: a real + synthetic condition draws its real images as the real-only runs do
(the classifier's data.balance_alpha and class weights) and is compared with them. The ratio
policy keeps that draw and replaces a share of each generated class's draws with synthetic
images. The count policies (add, balance) need uniform real draws, so the study then adds
real-only runs drawn that way (`real:uniform`) and compares those conditions with them
(`Run.control`).

Each run has a key: a hash of everything it reads (its resolved config or flags, and its
dependencies' keys, with W written as `$W`, so a moved study keeps its keys). A changed config
changes the keys of exactly the runs that depend on the change. How many images to sample is set
once, by `synthetic`: each class gets what its policy draws (ratio and add: `per_class` of each
generated class; balance: up to the real largest class, or `per_class`, minus the real count),
and at least `tstr_per_class` of every class when the synthetic-only condition is on.
"""

import dataclasses
import functools
import hashlib
import itertools
import json
import pathlib
import re
import shlex

import ml_collections
import numpy as np

from ham_synth import config_lib
from ham_synth.data import pipeline, sources, synthetic
from ham_synth.evaluators import inception

STAGES = ("generators", "synthetic", "real", "filtered", "realism", "conditions", "memorization",
          "report")  # fmt: skip
FILTERED = ":filtered"  # A set kept where the reference ViT is confident: synthetic/<g>:filtered.
TSTR = "synthetic_"  # Trained on a set alone, tested on real data: synthetic_<generator>.
PRETRAIN = "pretrain_"  # Pre-trained on a set, fine-tuned on real data: pretrain_<generator>.
DOSE = ":ratio="  # Real + a set at an extra dose: real+<generator>:ratio=<r>.
REAL = "real"
# The real-only control drawn uniformly (data.balance_alpha=0), which the count policies need.
UNIFORM = "real:uniform"
ALL = "all"
# The classification evaluator's metrics the report can call its primary metric.
PRIMARY_METRICS = ("accuracy", "balanced_accuracy", "precision_macro", "recall_macro", "f1_macro")


@dataclasses.dataclass(frozen=True)
class Run:
    """One run of the study: a `ham-synth` verb with its config and flags."""

    name: str  # Its folder under W, e.g. "classifiers/real/seed_0"; also its id.
    stage: str
    verb: str  # train | sample | evaluate | classify | memorization | report
    flags: dict  # The verb's flags (paths under W begin with "$W/").
    config: str = ""  # A config file and variant, e.g. "configs/vit.py:quickstart".
    overrides: dict = dataclasses.field(default_factory=dict)  # "a.b" -> value
    deps: tuple[str, ...] = ()
    key: str = ""  # Hash of its inputs (see the module docstring).
    base_name: str = ""  # Its name within one study point (the same as `name` without a sweep).
    points: tuple[str, ...] = ("",)  # The sweep points that read it ("": no sweep).
    # A classifier run's matched control: the condition it is compared with ("": none).
    control: str = ""

    def command(self, root: pathlib.Path) -> list[str]:
        """The command line that makes this run by hand."""
        argv = ["ham-synth", self.verb]
        if self.config:
            argv.append(f"--config={self.config}")
            argv += [f"--config.{k}={format_value(v)}" for k, v in self.overrides.items()]
        argv += [f"--{k}={resolve(v, root)}" for k, v in self.flags.items()]
        return [resolve(a, root) for a in argv]

    def resolved_config(self, root: pathlib.Path) -> ml_collections.ConfigDict:
        """The run's config: the file's variant with the overrides, paths under `root`."""
        values = {k: resolve(v, root) for k, v in self.overrides.items()}
        return config_lib.with_values(config_lib.load_config(self.config), values)


def resolve(value, root: pathlib.Path):
    """`value` with the "$W" placeholder replaced by the study's workdir."""
    return value.replace("$W", str(root)) if isinstance(value, str) else value


def format_value(value) -> str:
    """A config value as `--config.x=...` parses it back."""
    if isinstance(value, tuple | list):
        return "(" + "".join(f"{format_value(v)}," for v in value) + ")"
    return str(value)


def shell_command(run: Run, root: pathlib.Path) -> str:
    return shlex.join(run.command(root))


def flatten(tree: ml_collections.ConfigDict | dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    flat = {}
    for key, value in dict(tree).items():
        if isinstance(value, ml_collections.ConfigDict | dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = tuple(value) if isinstance(value, list) else value
    return flat


def _key(content: dict) -> str:
    text = json.dumps(content, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _with_key(run: Run, keys: dict[str, str], root: pathlib.Path) -> Run:
    """`run` with its key: its flags, its resolved config and its dependencies' keys."""
    config = run.resolved_config(root).to_dict() if run.config else {}
    content = {
        "verb": run.verb,
        "flags": run.flags,
        "config": json.loads(json.dumps(config, default=str).replace(str(root), "$W")),
        "deps": [keys[d] for d in run.deps],
    }
    return dataclasses.replace(run, key=_key(content))


def classifier_config(study: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The real-only classifier runs' config: its file's variant, the study's data and the
    classifier overrides."""
    values = {**data_values(study), **flatten(study.classifier.overrides)}
    return config_lib.with_values(config_lib.load_config(study.classifier.config), values)


def real_train_counts(study: ml_collections.ConfigDict) -> tuple[tuple[str, ...], np.ndarray]:
    """(class names, int64[K] train images per class) of the study's data."""
    source = sources.get_source(classifier_config(study).data)
    labels = pipeline.source_labels(source)
    return tuple(source.class_names), np.bincount(labels, minlength=len(source.class_names))


def data_values(study: ml_collections.ConfigDict) -> dict:
    """The `data.*` fields every run of the study shares."""
    return {f"data.{k}": v for k, v in flatten(study.data).items()}


def generated_classes(study, class_names, real_counts: np.ndarray) -> list[str]:
    """The classes sampled for mixing: `synthetic.classes`, or all but the largest."""
    named = config_lib.named_classes(study.synthetic.classes, class_names, "synthetic.classes")
    return named or [
        n for n, c in zip(class_names, real_counts, strict=True) if c < max(real_counts)
    ]


def sample_counts(
    study: ml_collections.ConfigDict, class_names: tuple[str, ...], real_counts: np.ndarray
) -> dict[str, int]:
    """Images to sample per class: what the mixing policy draws for the classes
    `synthetic.classes` names (empty: all but the largest), and at least `tstr_per_class` of
    every class when a classifier trains on a set alone (synthetic-only or pre-training)."""
    block = study.synthetic
    generated = generated_classes(study, class_names, real_counts)
    available = np.asarray([block.per_class if n in generated else 0 for n in class_names])
    wanted = synthetic.wanted_counts(block, available, real_counts)
    wanted = np.where(np.isin(class_names, generated), wanted, 0)
    if synthetic_only(study) or pretrained(study):  # A classifier trains on the set alone.
        wanted = np.maximum(wanted, block.tstr_per_class)
    return {name: int(n) for name, n in zip(class_names, wanted, strict=True) if n > 0}


def named_generators(study: ml_collections.ConfigDict, text: str, field: str) -> list[str]:
    """The comma-separated generator names in `text` (study field `field`), each one of the
    study's generators."""
    names = [g.strip() for g in text.split(",") if g.strip()]
    unknown = sorted(set(names) - set(study.generators))
    if unknown:
        raise ValueError(f"{field} names {unknown}; the generators are {list(study.generators)}.")
    return names


def synthetic_only(study: ml_collections.ConfigDict) -> list[str]:
    """The generators whose sets also train a classifier alone (conditions.synthetic_only)."""
    return named_generators(study, study.conditions.synthetic_only, "conditions.synthetic_only")


def pretrained(study: ml_collections.ConfigDict) -> list[str]:
    """The generators whose sets pre-train a classifier that then fine-tunes on real data
    (conditions.pretrain)."""
    return named_generators(study, study.conditions.pretrain, "conditions.pretrain")


def pretrain_steps(study: ml_collections.ConfigDict) -> tuple[dict, dict]:
    """({field: value} of the pre-training on a set, of the fine-tuning on real data): the
    real-only runs' train.total_steps split by conditions.pretrain_fraction, each part warming
    up for its share of the real-only warmup."""
    fraction = study.conditions.pretrain_fraction
    if not 0 < fraction < 1:
        raise ValueError(
            f"conditions.pretrain_fraction={fraction}; give the share of the real-only step "
            "budget spent pre-training on synthetic images, in (0, 1)."
        )
    config = classifier_config(study)
    total, warmup = config.train.total_steps, config.optim.warmup_steps
    first = max(1, round(total * fraction))
    if first >= total:
        raise ValueError(f"train.total_steps={total} is too short to split for pre-training.")

    def part(steps):
        return {"train.total_steps": steps, "optim.warmup_steps": round(warmup * steps / total)}

    return part(first), part(total - first)


def doses(study: ml_collections.ConfigDict) -> list[tuple[str, float]]:
    """(generator, ratio) of each extra dose (conditions.dose): real + that generator's set with
    that share of each generated class's draws synthetic."""
    block = study.conditions.dose
    try:
        ratios = [float(r) for r in block.ratios.split(",") if r.strip()]
    except ValueError:
        ratios = [-1.0]  # Refused below, naming the field.
    names = named_generators(study, block.generators, "conditions.dose.generators")
    if not ratios or not names:
        return []
    if study.synthetic.policy != "ratio" or not all(0 < r < 1 for r in ratios):
        raise ValueError(
            f"conditions.dose.ratios={block.ratios!r}: extra doses are ratios in (0, 1) of the "
            f"ratio policy (synthetic.policy={study.synthetic.policy!r})."
        )
    return [(g, r) for g in names for r in ratios if r != study.synthetic.ratio]


def filtered(study: ml_collections.ConfigDict) -> list[str]:
    """The generators whose sets are also filtered by the reference ViT (synthetic.filter)."""
    block = study.synthetic.filter
    if not 0 <= block.min_confidence <= 1:
        raise ValueError(
            f"synthetic.filter.min_confidence={block.min_confidence}; give a probability (0: off)."
        )
    if not block.min_confidence:
        return []
    names = named_generators(study, block.generators, "synthetic.filter.generators")
    return names or list(study.generators)


def check(study: ml_collections.ConfigDict) -> None:
    """Refuses study fields no plan can be made of, naming the field."""
    seeds = study.seeds
    if seeds.classifiers < 1:
        raise ValueError(
            f"seeds.classifiers={seeds.classifiers}; train the classifier at least once per "
            "condition."
        )
    if not 1 <= seeds.generators <= seeds.classifiers:
        raise ValueError(
            f"seeds.generators={seeds.generators}; give 1 to seeds.classifiers "
            f"({seeds.classifiers}): classifier seed s reads generator seed s mod it."
        )
    if study.report.primary_metric not in PRIMARY_METRICS:
        raise ValueError(
            f"report.primary_metric={study.report.primary_metric!r}; choose one of "
            f"{PRIMARY_METRICS}."
        )
    if not 0 <= study.memorization.quantile <= 1:
        raise ValueError(
            f"memorization.quantile={study.memorization.quantile}; give one in [0, 1]."
        )
    block = study.synthetic
    if block.policy not in ("add", "balance", "ratio"):
        raise ValueError(
            f"synthetic.policy={block.policy!r}; the study mixes with add, balance or ratio (the "
            "synthetic-only condition is conditions.synthetic_only)."
        )
    if block.policy != "balance" and block.per_class < 1:
        raise ValueError(
            f"synthetic.per_class={block.per_class}: the {block.policy!r} policy samples "
            "per_class images of each generated class; set it above 0."
        )
    if block.policy == "balance" and block.filter.min_confidence:
        raise ValueError(
            "synthetic.filter with policy 'balance': a filtered set holds however many images "
            "passed, and 'balance' tops every class up to a fixed count it may not hold. Use "
            "policy 'ratio' or 'add', or set synthetic.filter.min_confidence=0."
        )


def instance(set_name: str, generator_seed: int) -> str:
    """A set's (or generator's) name at a generator seed: `ddpm` at seed 0, `ddpm@1` at seed 1;
    a suffix stays last (`ddpm@1:filtered`)."""
    base, colon, suffix = set_name.partition(":")
    return f"{base}@{generator_seed}{colon}{suffix}" if generator_seed else set_name


def point_runs(study: ml_collections.ConfigDict) -> list[Run]:
    """The runs of one study (one sweep point), in dependency order, without keys or report."""
    check(study)
    class_names, real_counts = real_train_counts(study)
    counts = sample_counts(study, class_names, real_counts)
    if not counts:
        raise ValueError(
            f"synthetic: the policy asks for no synthetic image (train counts "
            f"{dict(zip(class_names, real_counts.tolist(), strict=True))}); raise "
            "synthetic.per_class or name synthetic.classes."
        )
    mixed = generated_classes(study, class_names, real_counts)
    runs = _generator_runs(study, counts)
    runs += _classifier_runs(study, REAL, "real")
    runs += _filtered_runs(study, {c: n for c, n in counts.items() if c in mixed})
    runs += _realism_runs(study)
    runs += _condition_runs(study, mixed)
    runs += _memorization_runs(study)
    runs.sort(key=lambda r: STAGES.index(r.stage))  # Stable: generators in config order.
    return runs


def _screening(study) -> dict:
    """`sample`'s near-copy flags, when the study excludes near-copies."""
    if not study.memorization.exclude_near_copies:
        return {}
    return {"exclude_near_copies": True, "quantile": study.memorization.quantile}


def _sample_run(study, name, seed, counts, stage, suffix="", flags=None, deps=()) -> Run:
    """`sample` of generator `name` at generator seed `seed` -> synthetic/<instance><suffix>."""
    made = instance(name, seed)
    sampler_settings = flatten(study.generators[name].sample)
    return Run(
        f"synthetic/{made}{suffix}",
        stage,
        "sample",
        {
            "workdir": f"$W/generators/{made}",
            "num_per_class": ",".join(f"{c}={n}" for c, n in counts.items()),
            "out_dir": f"$W/synthetic/{made}{suffix}",
            **{config_lib.SAMPLE_SETTING + k: v for k, v in sampler_settings.items()},
            **({"seed": seed} if seed else {}),
            **_screening(study),
            **(flags or {}),
        },
        deps=(f"generators/{made}", *deps),
    )


def _generator_runs(study, counts: dict[str, int]) -> list[Run]:
    """Each generator trained, and its set sampled, at every generator seed."""
    runs = []
    for name, generator in study.generators.items():
        for seed in range(study.seeds.generators):
            made = instance(name, seed)
            runs.append(
                Run(
                    f"generators/{made}",
                    "generators",
                    "train",
                    {"workdir": f"$W/generators/{made}"},
                    generator.config,
                    {**data_values(study), **flatten(generator.overrides),
                     **({"seed": seed} if seed else {})},
                )
            )  # fmt: skip
            runs.append(_sample_run(study, name, seed, counts, "synthetic"))
    return runs


def _filtered_runs(study, counts: dict[str, int]) -> list[Run]:
    """Each of synthetic.filter's generators sampled again, at every generator seed, keeping the
    images the reference ViT labels as their class with synthetic.filter.min_confidence."""
    block = study.synthetic.filter
    flags = {"filter_workdir": f"$W/{reference_classifier()}",
             "min_confidence": block.min_confidence, "max_draws": block.max_draws}  # fmt: skip
    return [
        _sample_run(
            study, name, seed, counts, "filtered", FILTERED, flags, (reference_classifier(),)
        )  # fmt: skip
        for name in filtered(study)
        for seed in range(study.seeds.generators)
    ]


def _condition_runs(study, mixed: list[str]) -> list[Run]:
    """The classifiers on real + each set (its `mixed` classes), on a filtered set, on a set
    alone and pre-trained on one, each against its matched control."""
    block = study.synthetic
    mix = {f"data.synthetic.{k}": block[k] for k in ("policy", "per_class", "ratio", "loss_weight")}
    # Only the classes generated for mixing: images made for the synthetic-only condition alone
    # (tstr_per_class of the other classes) stay out of real + synthetic.
    mix["data.synthetic.classes"] = ",".join(mixed)
    runs, control = [], REAL
    if block.policy in synthetic.COUNT_POLICIES and classifier_config(study).data.balance_alpha:
        # A count policy mixes with uniformly drawn real images; its matched control is a
        # real-only run drawn the same way, not the class-balanced real-only runs.
        control = UNIFORM
        mix["data.balance_alpha"] = 0.0
        runs += _classifier_runs(study, UNIFORM, "real", {"data.balance_alpha": 0.0})
    mixes = {f"real+{g}": [g] for g in study.generators}
    if study.conditions.real_plus_all and len(study.generators) > 1:
        mixes[f"real+{ALL}"] = list(study.generators)
    for condition, sets in mixes.items():
        runs += _classifier_runs(study, condition, "conditions", mix, sets, control)
    for g, ratio in doses(study):
        runs += _classifier_runs(study, f"real+{g}{DOSE}{ratio:g}", "conditions",
                                 {**mix, "data.synthetic.ratio": ratio}, [g], control)  # fmt: skip
    # A filtered set holds what passed the filter: every image of it (per_class 0).
    for name in filtered(study):
        runs += _classifier_runs(study, f"real+{name}{FILTERED}", "conditions",
                                 {**mix, "data.synthetic.per_class": 0}, [f"{name}{FILTERED}"],
                                 control)  # fmt: skip
    only = {"data.synthetic.policy": "only", "data.synthetic.per_class": 0}
    for g in synthetic_only(study):
        runs += _classifier_runs(study, f"{TSTR}{g}", "conditions", only, [g])
    for g in pretrained(study):
        runs += _pretrain_runs(study, g, only)
    return runs


def _memorization_runs(study) -> list[Run]:
    """Each generator's seed-0 set audited against the training images."""
    return [
        Run(
            f"memorization/{g}",
            "memorization",
            "memorization",
            {"workdir": f"$W/memorization/{g}", "fake_dir": f"$W/synthetic/{g}",
             "classifier_workdir": f"$W/{reference_classifier()}",
             "quantile": study.memorization.quantile},
            study.classifier.config,
            {**data_values(study), **flatten(study.classifier.overrides)},
            (f"synthetic/{g}", reference_classifier()),
        )
        for g in study.generators
    ]  # fmt: skip


def parse_sweep(spec: str, config: ml_collections.ConfigDict) -> list[tuple[str, list]]:
    """`"synthetic.per_class=100,300;data.train_fraction=0.25,1.0"` -> [(field, values)], each
    value typed as the field of `config` (a study's, or any run's) it sets."""
    axes = []
    for item in filter(None, (part.strip() for part in spec.split(";"))):
        field, _, values = item.partition("=")
        field = field.strip()
        try:
            current = functools.reduce(getattr, field.split("."), config)
        except AttributeError:
            raise ValueError(
                f"sweep axis {field!r} is not a field of the config (e.g. a study's "
                "synthetic.per_class, data.train_fraction, seeds.classifiers)."
            ) from None
        if not isinstance(current, bool | int | float | str):
            raise ValueError(
                f"sweep axis {field!r} is a {type(current).__name__}; sweep a number, string or "
                "bool field (e.g. generators.ddpm.overrides.train.total_steps)."
            )
        try:
            axes.append((field, [_typed(v.strip(), current) for v in values.split(",")
                                 if v.strip()]))  # fmt: skip
        except ValueError as error:
            raise ValueError(f"sweep axis {field!r}: {error}") from None
        if not axes[-1][1]:
            raise ValueError(f"sweep axis {field!r} has no values: write {field}=v1,v2.")
    return axes


def _typed(text: str, like):
    """`text` as the type of the field value `like`; bools must say true or false."""
    if isinstance(like, bool):
        if text.lower() not in ("true", "false"):
            raise ValueError(f"{text!r} is not true or false")
        return text.lower() == "true"
    return type(like)(text)


def sweep_points(spec: str, config: ml_collections.ConfigDict) -> list[tuple[str, dict]]:
    """(label, {field: value}) for every point of the sweep `spec` over `config`'s fields;
    [("", {})] for an empty spec."""
    axes = parse_sweep(spec, config)
    grid = itertools.product(*[[(field, v) for v in values] for field, values in axes])
    return [(point_label(point), dict(point)) for point in grid]


def point_label(point) -> str:
    """A folder name for a sweep point: `field=value` pairs joined by `__`, with no `,` (it
    separates data.synthetic.dirs) and no `/`."""
    text = "__".join(f"{field}={value}" for field, value in point)
    return re.sub(r"[,/:\s]", "-", text)


def _renamed(run: Run, renames: dict[str, str]) -> Run:
    """`run` reading its dependencies from their folders after renaming."""

    def fix(value):
        if not isinstance(value, str):
            return value
        for old, new in renames.items():  # Whole path components only: vae, not vae_big.
            value = re.sub(re.escape(f"$W/{old}") + r"(?=/|,|$)", f"$W/{new}", value)
        return value

    return dataclasses.replace(
        run,
        flags={k: fix(v) for k, v in run.flags.items()},
        overrides={k: fix(v) for k, v in run.overrides.items()},
        deps=tuple(renames.get(d, d) for d in run.deps),
    )


def make_plan(study: ml_collections.ConfigDict, root: pathlib.Path) -> list[Run]:
    """Every run of the study, in dependency order, each with its key, then the report.

    With a sweep, each point of the grid is a study; a run that is the same at several points
    (same key: e.g. the generators when only the mixing policy varies) is made once, under its
    own name; a run that differs gets one folder per distinct version,
    points/<first point's label>/<name>. Run.points says which points read each run."""
    points = [(label, point_runs(config_lib.with_values(study, values)))
              for label, values in sweep_points(study.sweep, study)]  # fmt: skip
    order = list(dict.fromkeys(r.name for _, runs in points for r in runs))
    by_point = {label: {r.name: r for r in runs} for label, runs in points}
    renames: dict[str, dict[str, str]] = {label: {} for label, _ in points}
    keys: dict[str, str] = {}
    plan = []
    for name in order:
        versions: dict[str, list] = {}  # key -> [(label, run)]
        for label, _ in points:
            if name in by_point[label]:
                run = _with_key(_renamed(by_point[label][name], renames[label]), keys, root)
                versions.setdefault(run.key, []).append((label, run))
        for key, users in versions.items():
            new_name = name if len(versions) == 1 else f"points/{users[0][0]}/{name}"
            for label, _ in users:
                renames[label][name] = new_name
            run = users[0][1]
            renamed = dataclasses.replace(run, name=new_name, base_name=name,
                                          points=tuple(label for label, _ in users))  # fmt: skip
            if new_name != name:  # Its own outputs move too; its key stays.
                renamed = _renamed(renamed, {name: new_name})
            keys[new_name] = key
            plan.append(renamed)
    plan.append(
        _with_key(Run("report", "report", "report",
                      {"primary_metric": study.report.primary_metric},
                      deps=tuple(r.name for r in plan),
                      base_name="report", points=tuple(label for label, _ in points)),
                  keys, root)
    )  # fmt: skip
    return plan


def reference_classifier() -> str:
    """The real-only seed-0 ViT: the study's domain feature network, and the labeller of the
    recognised share."""
    return f"classifiers/{REAL}/seed_0"


def inception_weights(study: ml_collections.ConfigDict) -> pathlib.Path | None:
    """The converted Inception weights the realism stage uses, when they exist."""
    path = pathlib.Path(study.realism.inception_weights or inception.default_weights_path())
    return path if path.is_file() else None


def _realism_runs(study) -> list[Run]:
    """Per generator: its set scored in the reference ViT's features (and Inception's, when the
    weights exist) against the real test split, and labelled by that ViT (recognised share)."""
    test_data = {**data_values(study), **flatten(study.classifier.overrides), "data.split": "test"}
    reference = reference_classifier()
    weights = inception_weights(study)
    runs = []
    for g in study.generators:
        scored = {"fake_dir": f"$W/synthetic/{g}"}
        runs.append(
            Run(
                f"realism/{g}/classifier",
                "realism",
                "evaluate",
                {"workdir": f"$W/realism/{g}/classifier", **scored, "features": "classifier",
                 "classifier_workdir": f"$W/{reference}"},
                study.classifier.config,
                test_data,
                (f"synthetic/{g}", reference),
            )
        )  # fmt: skip
        if weights is not None:
            runs.append(
                Run(
                    f"realism/{g}/inception",
                    "realism",
                    "evaluate",
                    {"workdir": f"$W/realism/{g}/inception", **scored,
                     "inception_weights": str(weights)},
                    study.classifier.config,
                    test_data,
                    (f"synthetic/{g}",),
                )
            )  # fmt: skip
        runs.append(
            Run(
                f"realism/{g}/recognised",
                "realism",
                "classify",
                {"workdir": f"$W/{reference}", "images": f"$W/synthetic/{g}",
                 "out_csv": f"$W/realism/{g}/recognised/predictions.csv"},
                deps=(f"synthetic/{g}", reference),
            )
        )  # fmt: skip
    return runs


def _classifier_runs(study, condition: str, stage: str, values=None, sets=(),
                     control="") -> list[Run]:  # fmt: skip
    """The ViT runs of one condition, one per classifier seed s: the classifier config with
    `values` over it, reading the synthetic `sets` (synthetic/<set>, each at generator seed
    s mod seeds.generators; none: real data only), compared with `control`."""
    runs = []
    for seed in range(study.seeds.classifiers):
        made = [instance(name, seed % study.seeds.generators) for name in sets]
        dirs = {"data.synthetic.dirs": ",".join(f"$W/synthetic/{name}" for name in made)}
        runs.append(
            Run(
                f"classifiers/{condition}/seed_{seed}",
                stage,
                "train",
                {"workdir": f"$W/classifiers/{condition}/seed_{seed}"},
                study.classifier.config,
                {
                    **data_values(study),
                    **flatten(study.classifier.overrides),
                    "seed": seed,
                    **(dirs if sets else {}),
                    **(values or {}),
                    **(flatten(study.classifier.other_seeds) if seed else {}),
                },
                tuple(f"synthetic/{name}" for name in made),
                control=control,
            )
        )
    return runs


def _pretrain_runs(study, generator: str, only: dict) -> list[Run]:
    """Per seed: a ViT trained on `generator`'s set alone (pretraining/<g>/seed_<s>), then
    fine-tuned from its last checkpoint on real data under the real-only policy (condition
    pretrain_<g>), the two at the real-only runs' total step budget."""
    first, second = pretrain_steps(study)
    condition = f"{PRETRAIN}{generator}"
    runs = []
    for pre, tuned in zip(
        _classifier_runs(study, condition, "conditions", {**only, **first}, [generator]),
        _classifier_runs(study, condition, "conditions", second, control=REAL),
        strict=True,
    ):
        name = pre.name.replace(f"classifiers/{condition}/", f"pretraining/{generator}/", 1)
        pre = dataclasses.replace(pre, name=name, flags={"workdir": f"$W/{name}"})
        runs += [pre, dataclasses.replace(tuned, overrides={**tuned.overrides,
                                                             "init_from": f"$W/{name}"},
                                          deps=(name,))]  # fmt: skip
    return runs


def controls(plan: list[Run]) -> dict[str, str]:
    """condition -> its matched control, for every condition compared with one."""
    return {
        r.base_name.split("/")[1]: r.control
        for r in plan
        if r.base_name.startswith("classifiers/") and r.control
    }


def conditions(plan: list[Run]) -> list[str]:
    """Condition names in plan order, `real` first."""
    names = [r.base_name.split("/")[1] for r in plan if r.base_name.startswith("classifiers/")]
    return list(dict.fromkeys(names))
