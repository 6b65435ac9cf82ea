"""A run's config on disk: `config.json` (the config it runs with now), `config_history.jsonl`
(one row per start), and what a resumed run may change.

A resumed run may run longer, log, checkpoint and evaluate on another schedule, or use other
devices (RESUMABLE_FIELDS); any other change would make its checkpoints mean something else, so
it is refused with the changed fields named, unless `--allow_config_change`.
"""

import datetime
import json
import pathlib

import ml_collections

from ham_synth import config_lib, fileio

CONFIG_FILE = "config.json"
HISTORY_FILE = "config_history.jsonl"
# Fields (and groups of fields) a resumed run may change.
RESUMABLE_FIELDS = (
    "train.total_steps",
    "train.log_every_steps",
    "train.ckpt_every_steps",
    "train.keep_checkpoints",
    "train.num_devices",
    "data.read_threads",
    "evals",
    # Read at step 0 only (workdir.py): a resume never re-applies it; a family's own such fields
    # are its Task's init_fields.
    "init_from",
)


class ConfigChangedError(ValueError):
    """A resume with a config that differs in fields outside RESUMABLE_FIELDS."""


def _flat(config: ml_collections.ConfigDict) -> dict[str, object]:
    """{"train.total_steps": 600, ...}, values as config.json holds them."""
    return config_lib.flat_fields(json.loads(config.to_json_best_effort()))


def changes(old: ml_collections.ConfigDict, new: ml_collections.ConfigDict) -> dict[str, list]:
    """{field: [old value, new value]} for every field that differs (None where absent)."""
    before, after = _flat(old), _flat(new)
    return {
        key: [before.get(key), after.get(key)]
        for key in sorted(before.keys() | after.keys())
        if before.get(key) != after.get(key)
    }


# ...and in every optimizer group (optim.*, optim.<group>.*): how long the schedule runs, which
# a resume may stretch or pin like train.total_steps.
RESUMABLE_OPTIM_FIELDS = ("schedule_steps",)


def is_resumable(field: str, family_fields: tuple[str, ...] = ()) -> bool:
    """Whether a resume may change `field`: RESUMABLE_FIELDS, any optimizer group's
    RESUMABLE_OPTIM_FIELDS, and the family's own (its Task's init_fields)."""
    if field.startswith("optim.") and field.rsplit(".", 1)[-1] in RESUMABLE_OPTIM_FIELDS:
        return True
    return any(field == f or field.startswith(f + ".") for f in RESUMABLE_FIELDS + family_fields)


def check_resume(
    workdir: pathlib.Path,
    config: ml_collections.ConfigDict,
    allow_change: bool = False,
    family_fields: tuple[str, ...] = (),
) -> dict[str, list]:
    """The changes from the config `workdir` last ran with; raises ConfigChangedError naming
    those a resume may not make (is_resumable), unless `allow_change`."""
    changed = changes(config_lib.load_workdir_config(workdir), config)
    refused = {k: v for k, v in changed.items() if not is_resumable(k, family_fields)}
    if refused and not allow_change:
        named = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in refused.items())
        raise ConfigChangedError(
            f"{workdir} resumes from its checkpoint, but the config changed where a resume may "
            f"not: {named}. Rerun with the config in {workdir / CONFIG_FILE}, train in a new "
            "--workdir, or pass --allow_config_change to resume with the change anyway "
            f"(recorded in {HISTORY_FILE}). A resume may change "
            f"{', '.join(RESUMABLE_FIELDS + family_fields)} and optim schedule_steps."
        )
    return changed


def record(
    workdir: pathlib.Path,
    config: ml_collections.ConfigDict,
    resumed_from: int | None,
    changed: dict[str, list],
) -> None:
    """Writes config.json and appends this start to config_history.jsonl."""
    fileio.write_text(workdir / CONFIG_FILE, config.to_json_best_effort(indent=2) + "\n")
    row = {
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "resumed_from_step": resumed_from,
        "changed": changed,
        "config": json.loads(config.to_json_best_effort()),
    }
    with open(workdir / HISTORY_FILE, "a") as f:
        f.write(json.dumps(row) + "\n")
