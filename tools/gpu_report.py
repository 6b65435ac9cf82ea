"""One results file from a GPU check's parts (tools/gpu_check.sh), and the markdown tables that
docs/benchmarks.md takes from it.

    python tools/gpu_report.py --bench=B/results.json --study=S --out=O  # O/gpu_check.{json,md}
    python tools/gpu_report.py --results=O/gpu_check.json                # prints the tables again

`--bench` is tools/benchmark.py's results.json, `--study` a study workdir (its report.json and
run markers); either may be missing (a part that ran out of time) or unreadable, and the file
says so, keeping the other.
"""

import json
import math
import pathlib
import statistics
import sys

from absl import app, flags

from ham_synth import fileio
from ham_synth.study import markers

_BENCH = flags.DEFINE_string("bench", "", "tools/benchmark.py's results.json.")
_STUDY = flags.DEFINE_string("study", "", "The mini-study's workdir.")
_OUT = flags.DEFINE_string("out", "", "Where gpu_check.json and gpu_check.md go.")
_RESULTS = flags.DEFINE_string("results", "", "A gpu_check.json to print the tables of.")

METRICS = ("accuracy", "balanced_accuracy", "f1_macro")
NO_RESULTS = "(no results: not run, or stopped before it wrote any)"


def read_json(path: pathlib.Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def study_summary(workdir: pathlib.Path) -> dict | None:
    """The study's per-condition metrics (mean over seeds), its changes from the matched control
    in the primary metric, and each finished run's minutes; None when it wrote no report."""
    report = read_json(workdir / "report.json")
    if report is None:
        return None
    primary = report["primary_metric"]
    conditions = {
        condition: {m: statistics.mean(r["metrics"][m] for r in runs) for m in METRICS}
        | {"seeds": len(runs)}
        for condition, runs in report["results"].items()
    }
    minutes = {name: marker["seconds"] / 60
               for name, marker in markers.finished(workdir).items()
               if marker["stage"] != "report"}  # fmt: skip
    return {
        "primary_metric": primary,
        "num_classes": len(next(iter(report["stream"].values()))),
        "conditions": conditions,
        "changes": report["changes"][primary],
        "minutes": minutes,
    }


def readable(read, path: pathlib.Path | None) -> dict | None:
    """read(path), None without a path, or {"error": ...} when it cannot be read."""
    if path is None:
        return None
    try:
        return read(path)
    except (OSError, ValueError, KeyError, StopIteration) as error:
        return {"error": f"{path}: {type(error).__name__}: {error}"}


def combine(bench: pathlib.Path | None, study: pathlib.Path | None) -> dict:
    return {"benchmark": readable(read_json, bench), "study": readable(study_summary, study)}


def _cell(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def benchmark_table(bench: dict) -> str:
    env = bench["environment"]
    lines = [
        f"{env['device']} ({env['backend']}), {env['date']}; jax {env['versions']['jax']}, "
        f"torch {env['versions']['torch']}; preset {bench['preset']}.",
        "",
        "| case | side | dtype | batch | step (ms) | images/s | MFU | JAX vs peer | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in bench["rows"]:
        vs_peer = f"{r['vs_peer']:.2f}x" if r["vs_peer"] else ""
        lines.append(
            f"| {r['case']} | {r['side']} | {r['dtype']} | {r['images_per_call']} | "
            f"{_cell(r['step_ms'], '.1f')} | {_cell(r['images_per_s'], ',.0f')} | "
            f"{_cell(r['mfu'], '.1%')} | {vs_peer} | {r['note']} |"
        )
    return "\n".join(lines)


def change_text(change: dict | None) -> str:
    """A condition's paired change from its control, with its interval where seeds give one."""
    if change is None:
        return ""
    if math.isnan(change["low"]):
        return f"{change['mean']:+.3f} vs {change['control']} (one seed: no interval)"
    return (
        f"{change['mean']:+.3f} [{change['low']:+.3f}, {change['high']:+.3f}] vs "
        f"{change['control']}"
    )


def study_tables(study: dict) -> str:
    primary, chance = study["primary_metric"], 1 / study["num_classes"]
    lines = [
        f"| condition | seeds | accuracy | balanced accuracy (chance {chance:.3f}) | macro F1 | "
        f"change in {primary} from its control [95% CI] |",
        "|---|---|---|---|---|---|",
    ]
    for condition, m in study["conditions"].items():
        lines.append(
            f"| {condition} | {m['seeds']} | {m['accuracy']:.3f} | "
            f"{m['balanced_accuracy']:.3f} | {m['f1_macro']:.3f} | "
            f"{change_text(study['changes'].get(condition))} |"
        )
    lines += ["", "| run | minutes |", "|---|---|"]
    lines += [f"| {run} | {minutes:.1f} |" for run, minutes in study["minutes"].items()]
    return "\n".join(lines)


def section(title: str, part: dict | None, tables) -> list[str]:
    """A part's heading and its tables, or why it has none."""
    if not part:
        body = NO_RESULTS
    elif "error" in part:
        body = f"(unreadable: {part['error']})"
    else:
        body = tables(part)
    return [f"## {title}", "", body]


def render(results: dict) -> str:
    lines = section("Benchmark", results["benchmark"], benchmark_table)
    lines += ["", *section("Mini-study", results["study"], study_tables)]
    return "\n".join(lines) + "\n"


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if _RESULTS.value:
        print(render(json.loads(pathlib.Path(_RESULTS.value).read_text())))
        return
    if not _OUT.value:
        raise app.UsageError("Pass --out=DIR (with --bench and --study), or --results=FILE.")
    results = combine(
        pathlib.Path(_BENCH.value) if _BENCH.value else None,
        pathlib.Path(_STUDY.value) if _STUDY.value else None,
    )
    out = pathlib.Path(_OUT.value)
    out.mkdir(parents=True, exist_ok=True)
    fileio.write_json(out / "gpu_check.json", results)
    text = render(results)
    fileio.write_text(out / "gpu_check.md", text)
    sys.stdout.write(text)


if __name__ == "__main__":
    app.run(main)
