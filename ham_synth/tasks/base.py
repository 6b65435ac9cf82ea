"""The Task contract: the pure functions a model family gives the one trainer.

The trainer owns the mesh, jit, logging, checkpoints and evaluators; a family owns its losses and
its predict functions.
"""

import dataclasses
import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from ham_synth import optim, parallel
from ham_synth import state as state_lib

# {"image": float32[B, H, W, C] in [-1, 1], "label": int32[B], "index": int32[B] record ids,
#  "synthetic": bool[B] (a data.synthetic image)}
Batch = Mapping[str, jax.Array]
Metrics = dict[str, jax.Array]  # Scalars, keyed `train/<name>`.
# (params, batch, rng, step) -> (scalar loss, {name: scalar}).
LossFn = Callable[[Any, Batch, jax.Array, jax.Array], tuple[jax.Array, Metrics]]

# predict_fns["sample"](variables, labels int32[N], rng, *, <settings>) -> float32[N, H, W, C] in
# [-1, 1]: the generators' predict function, which the samples and fid evaluators and `sample` use.
SAMPLE = "sample"
# A classifier's predict functions, which the classification, attention and feature evaluators use:
# predict_fns["predict"](variables, images float32[N, H, W, 3] in [-1, 1]) -> float32[N, classes]
PREDICT = "predict"
# predict_fns["attention"](variables, images) -> float32[depth, N, heads, tokens, tokens]: every
# block's attention probabilities (the attention evaluator's rollout).
ATTENTION = "attention"
# predict_fns["features"](variables, images) -> float32[N, width]: the pooled representation the
# head reads (class token or patch mean after the final LayerNorm), a feature space for realism.
FEATURES = "features"


@dataclasses.dataclass(frozen=True)
class Task:
    """What a model family supplies; every field is a pure, jittable function."""

    init: Callable[[jax.Array, Batch], state_lib.TrainState]  # (rng, example batch) -> state
    train_step: Callable[[state_lib.TrainState, Batch, jax.Array], tuple[Any, Metrics]]
    # name -> fn(variables, *inputs, **settings), `variables` from state.eval_variables. Settings
    # are keyword-only with the config's values as defaults; they are static under jit, so a new
    # value retraces that one function and never rebuilds the task.
    predict_fns: Mapping[str, Callable[..., Any]] = dataclasses.field(default_factory=dict)
    # Step-0 state -> the same with external pretrained weights (a model field names them, e.g.
    # the ViT's model.init_from_npz); None when this run's config names none.
    # workdir.initial_state calls it, and refuses it beside init_from.
    load_external: Callable[[state_lib.TrainState], state_lib.TrainState] | None = None
    # Config fields the family reads only when it makes the step-0 state (e.g. the ViT's
    # model.init_from_npz, which load_external reads): a resume never re-applies them, so it may
    # change them (run_config.check_resume).
    init_fields: tuple[str, ...] = ()


def num_classes(config) -> int:
    """config.data.num_classes, which sizes the class embeddings; 0 means the data has not been
    read yet (`pipeline.make_train_dataset` fills it in)."""
    if config.data.num_classes < 1:
        raise ValueError(
            f"data.num_classes={config.data.num_classes}: build the task from the config that "
            "pipeline.make_train_dataset returns, or set --config.data.num_classes."
        )
    return config.data.num_classes


def predict_settings(fn: Callable) -> dict[str, Any]:
    """A predict function's settings: its keyword-only parameters and their defaults."""
    parameters = inspect.signature(fn).parameters.values()
    return {p.name: p.default for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY}


def get_predict_fn(task: Task, name: str, family: str) -> Callable:
    if name not in task.predict_fns:
        raise ValueError(
            f"The {family!r} family has no {name!r} predict function; it has "
            f"{sorted(task.predict_fns) or 'none'}."
        )
    return task.predict_fns[name]


@functools.cache
def jit_predict(fn: Callable, mesh: jax.sharding.Mesh) -> Callable:
    """`fn` under jit with its settings static and its output split over the batch; cached per
    function and mesh, so evaluators that share it compile once. Callers put the inputs on the
    mesh (parallel.batch_sharded) and pass replicated variables."""
    return jax.jit(
        fn, out_shardings=parallel.batch_sharded(mesh), static_argnames=tuple(predict_settings(fn))
    )


def make_init(
    init_variables: Callable[[jax.Array, Batch], Mapping[str, Any]],
    tx: optax.GradientTransformation,
) -> Callable[[jax.Array, Batch], state_lib.TrainState]:
    """State at step 0 from a flax variables initializer: `params` are optimized (the EMA starts
    at them), every other collection becomes the model state."""

    def init(rng, batch):
        variables = dict(init_variables(rng, batch))
        params = variables.pop("params")
        return state_lib.TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=tx.init(params),
            ema_params=params,
            model_state=variables,
        )

    return init


def apply_update(params, opt_state, grads, tx: optax.GradientTransformation):
    """One optimizer update; the GAN calls it once per network."""
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


def split_microbatches(batch: Batch, accum_steps: int) -> Batch:
    """[B, ...] -> [accum_steps, B / accum_steps, ...]; microbatch i takes examples i, i + k,
    i + 2k, ..., so each one is spread over the devices of the batch-sharded mesh (evenly when
    accum_steps divides the batch on each device)."""

    def split(x):
        if x.shape[0] % accum_steps:
            raise ValueError(
                f"train.grad_accum_steps={accum_steps} must divide train.batch_size ({x.shape[0]})."
            )
        return x.reshape(x.shape[0] // accum_steps, accum_steps, *x.shape[1:]).swapaxes(0, 1)

    return jax.tree.map(split, batch)


def accumulate_grads(loss_fn: LossFn, params, batch: Batch, rng, step, accum_steps: int):
    """((loss, aux), grads) of `loss_fn`, averaged over `accum_steps` microbatches run one after
    another (lax.scan), so a batch that does not fit in memory at once still trains. Each
    microbatch draws its own rng (folded with its index): equal to the full batch for
    deterministic losses, and in expectation otherwise."""
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if accum_steps == 1:
        return grad_fn(params, batch, rng, step)

    def body(total, inputs):
        index, microbatch = inputs
        out = grad_fn(params, microbatch, jax.random.fold_in(rng, index), step)
        return jax.tree.map(jnp.add, total, out), None

    micro = split_microbatches(batch, accum_steps)
    zeros = jax.tree.map(
        jnp.zeros_like,
        jax.eval_shape(grad_fn, params, jax.tree.map(lambda x: x[0], micro), rng, step),
    )
    total, _ = jax.lax.scan(body, zeros, (jnp.arange(accum_steps), micro))
    return jax.tree.map(lambda x: x / accum_steps, total)


def make_simple_step(loss_fn: LossFn, optimizer: optim.Optimizer, accum_steps: int = 1):
    """train_step for families with one loss over one params tree (VAE, DDPM, classifier);
    `accum_steps` > 1 accumulates gradients over that many microbatches of each batch."""
    if accum_steps < 1:
        raise ValueError(f"train.grad_accum_steps={accum_steps} must be at least 1.")

    def train_step(state, batch, rng):
        (loss, aux), grads = accumulate_grads(
            loss_fn, state.params, batch, rng, state.step, accum_steps
        )
        params, opt_state = apply_update(state.params, state.opt_state, grads, optimizer.tx)
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            opt_state=opt_state,
            ema_params=state_lib.ema_update(
                state.ema_params, params, optimizer.ema_decay, state.step + 1
            ),
        )
        metrics = {
            "train/loss": loss,
            "train/grad_norm": optax.tree.norm(grads),
            "train/lr": optimizer.schedule(state.step),  # The lr of the update just applied.
        }
        metrics.update({f"train/{name}": value for name, value in aux.items()})
        return new_state, metrics

    return train_step
