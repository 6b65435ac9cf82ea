"""Task registry: `get_task(config.task)(config) -> Task`."""

from ham_synth.tasks import classify, ddpm, gan, vae

_TASKS = {
    "classify": classify.make_task,
    "ddpm": ddpm.make_task,
    "gan": gan.make_task,
    "vae": vae.make_task,
}


def get_task(name: str):
    if name not in _TASKS:
        raise KeyError(f"Unknown task {name!r}; choose one of {sorted(_TASKS)}.")
    return _TASKS[name]
