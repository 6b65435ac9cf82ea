"""A study's run markers, W/markers/<run name>.json: each run's key, command, stage and whether
(and in how many seconds) it finished. runner.py writes and reads them; reports read them."""

import json
import pathlib

from ham_synth import fileio

FOLDER = "markers"


def path(root: pathlib.Path, name: str) -> pathlib.Path:
    return root / FOLDER / f"{name}.json"


def read(root: pathlib.Path, name: str) -> dict | None:
    marker = path(root, name)
    return json.loads(marker.read_text()) if marker.exists() else None


def write(root: pathlib.Path, name: str, **fields) -> None:
    marker = path(root, name)
    marker.parent.mkdir(parents=True, exist_ok=True)
    fileio.write_json(marker, fields)


def finished(root: pathlib.Path) -> dict[str, dict]:
    """run name -> marker, for every run under root whose marker says it finished."""
    folder = root / FOLDER
    done = {}
    for marker in sorted(folder.rglob("*.json")):
        fields = json.loads(marker.read_text())
        if fields.get("done"):
            done[marker.relative_to(folder).with_suffix("").as_posix()] = fields
    return done
