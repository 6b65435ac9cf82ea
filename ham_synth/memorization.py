"""`ham-synth memorization`: does a synthetic set copy its generator's training images?

For every synthetic image, the nearest training image in pixels (float [0, 1], L2) and in a
classifier's feature space (the real-only ViT's pre-logits); the same for the real test images,
which the generator never saw. Outputs in WORKDIR:

- `memorization.json`: per space, the ratio: the median synthetic->train distance, each over the
  median test->train distance of its image's class (about 1: as close to the training images as
  new real images of the class are; near 0: copies); the same per class against the training
  images of that class; and per synthetic image its nearest training image, distances and flag;
- `closest_pairs.png`: the closest synthetic / training pairs, side by side.

A synthetic image is a near-copy when, in both spaces, it is closer to a training image than
the `quantile` of the test images' nearest-training distances, each distance taken over its
class's median test distance (audit_space says why). Nearest-neighbour distance is not a
membership-inference test and gives no privacy guarantee: a set with no near-copy can still leak
what it was trained on.
"""

import pathlib

import jax
import ml_collections
import numpy as np
from PIL import Image

from ham_synth import fileio, grids, parallel
from ham_synth.data import image_folder, pipeline, sources
from ham_synth.evaluators import features as features_lib

STATEMENT = (
    "Nearest-neighbour distances show whether synthetic images sit closer to training images "
    "than new real images do; they are not a membership-inference test and no privacy guarantee."
)
REPORT = "memorization.json"
PAIRS = "closest_pairs.png"


class Reference:
    """Rows to search, held in float64 with their squared norms, computed once."""

    def __init__(self, rows: np.ndarray):
        self.rows = np.asarray(rows, np.float64)
        self.norms = (self.rows * self.rows).sum(1)


def nearest(queries: np.ndarray, reference: Reference, chunk: int = 512):
    """(int64[N] index, float64[N] distance) of each query's nearest reference row (L2)."""
    index, distance = [], []
    for start in range(0, len(queries), chunk):
        q = np.asarray(queries[start : start + chunk], np.float64)
        squared = (q * q).sum(1)[:, None] + reference.norms[None, :] - 2.0 * q @ reference.rows.T
        best = squared.argmin(1)
        index.append(best)
        distance.append(np.sqrt(np.maximum(squared[np.arange(len(q)), best], 0.0)))
    return np.concatenate(index), np.concatenate(distance)


def audit_space(
    synthetic: np.ndarray,
    test: np.ndarray,
    train: np.ndarray,
    quantile: float,
    labels: tuple[np.ndarray, np.ndarray] | None = None,
):
    """One space's nearest-training rows for the synthetic and test sets, the ratio and the
    near-copy thresholds, with every distance relative to the median test distance of its own
    class (`labels`: synthetic, test; a class the test set lacks, or no labels: all test
    images). The ratio is the median relative synthetic distance; an image's threshold is the
    `quantile` of the relative test distances, pooled over classes, times its class's median.
    Dense classes sit closer to the training images, so absolute distances would read a set
    whose class mix is not the test split's as copies, or hide its copies, by its mix alone;
    pooling keeps the quantile steady where a class has a few test images."""
    train = Reference(train)
    syn_index, syn_distance = nearest(synthetic, train)
    _, test_distance = nearest(test, train)
    syn_labels, test_labels = labels or (np.zeros(len(synthetic)), np.zeros(len(test)))
    scale = class_medians(test_distance, test_labels, syn_labels)
    with np.errstate(divide="ignore", invalid="ignore"):  # A test image equal to a train image.
        ratio = float(np.median(syn_distance / scale))
    thresholds = relative_quantile(test_distance, test_labels, quantile) * scale
    return {
        "index": syn_index,
        "distance": syn_distance,
        "thresholds": thresholds,
        "median_synthetic": float(np.median(syn_distance)),
        "median_test": float(np.median(test_distance)),
        "ratio": ratio,
        "threshold": float(np.quantile(test_distance, quantile)),
    }


def per_class_audit(embedded: dict, labels: list, class_names, quantile: float) -> dict:
    """class -> {"images", "near_copies", space: {ratio, medians, threshold}}: each class's
    synthetic and test images against the training images of the same class. `embedded` maps a
    space to its (synthetic, test, train) rows, `labels` gives their labels in that order; a
    class missing from one of the three is left out."""
    audits = {}
    for label, name in enumerate(class_names):
        masks = [labels_ == label for labels_ in labels]
        if not all(mask.any() for mask in masks):
            continue
        spaces = {space: audit_space(*(r[m] for r, m in zip(rows, masks, strict=True)), quantile)
                  for space, rows in embedded.items()}  # fmt: skip
        audits[name] = {
            "images": int(masks[0].sum()),
            "near_copies": int(near_copies(spaces).sum()),
            **{space: summary(audit) for space, audit in spaces.items()},
        }
    return audits


def class_medians(values, value_labels, labels) -> np.ndarray:
    """float[len(labels)]: the median of the `values` of each label's class; of all the values
    for a class that has none."""
    out = np.full(len(labels), np.median(values), np.float64)
    for label in np.unique(labels):
        of_class = values[value_labels == label]
        if len(of_class):
            out[labels == label] = np.median(of_class)
    return out


def relative_quantile(test_distance, test_labels, quantile: float) -> float:
    """The `quantile` of the test distances, each over its class's median."""
    with np.errstate(divide="ignore", invalid="ignore"):  # A test image equal to a train image.
        relative = test_distance / class_medians(test_distance, test_labels, test_labels)
    return float(np.quantile(relative, quantile))


def near_copies(spaces: dict) -> np.ndarray:
    """bool[N]: the synthetic images under their threshold in every space."""
    return np.logical_and.reduce([a["distance"] < a["thresholds"] for a in spaces.values()])


def summary(space: dict) -> dict:
    """A space's audit without its per-image arrays, for the JSON report."""
    return {k: v for k, v in space.items() if k not in ("index", "distance", "thresholds")}


def pixels(images: np.ndarray) -> np.ndarray:
    """uint8 [N, H, W, C] -> float32 [N, H*W*C] in [0, 1]."""
    return images.reshape(len(images), -1).astype(np.float32) / 255.0


def split_data(data: ml_collections.ConfigDict, split: str) -> ml_collections.ConfigDict:
    copy = ml_collections.ConfigDict(data.to_dict())
    copy.split = split
    return copy


def read_all(source) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images [N, H, W, C], labels [N]) of every record, each image decoded once."""
    images = np.stack([source[i]["image"] for i in range(len(source))])
    return images, pipeline.source_labels(source)


def closest_pairs_png(path, synthetic, train, pairs, captions) -> None:
    """Rows of (synthetic | nearest training image), the closest pairs first."""
    tiles = [np.concatenate([synthetic[s], np.full_like(synthetic[s][:, :2], 255), train[t]], 1)
             for s, t in pairs]  # fmt: skip
    scale = grids.display_scale(synthetic.shape[1])
    grid = grids.make_grid(np.stack(tiles).astype(np.float32) / 127.5 - 1, rows=len(tiles))
    image = Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), 0)
    with fileio.atomic_write(path, "wb") as f:
        grids.label_rows(image, captions).save(f, format="PNG")


def audit(
    data: ml_collections.ConfigDict,
    fake_dir: str,
    net: features_lib.FeatureNet,
    *,
    quantile: float = 0.01,
    batch_size: int = 64,
    mesh=None,
) -> tuple[dict, dict, dict]:
    """The audit of `fake_dir` against `data`'s train split, with its test split as the unseen
    real images: (the JSON report, {set: (images, labels)}, {space: nearest rows})."""
    mesh = mesh or parallel.make_mesh()
    batch_size = parallel.round_to_devices(batch_size, mesh)
    train_source = sources.get_source(split_data(data, "train"))
    test_source = sources.get_source(split_data(data, "test"))
    class_names = train_source.class_names
    fake_source = sources.get_source(image_folder.folder_like(data, fake_dir, class_names))
    sets = {n: read_all(s) for n, s in (("train", train_source), ("test", test_source),
                                         ("synthetic", fake_source))}  # fmt: skip
    order = ("synthetic", "test", "train")
    embedded = {
        "pixels": [pixels(sets[n][0]) for n in order],
        "features": [features_lib.image_features(net, sets[n][0], batch_size, mesh)
                     for n in order],
    }  # fmt: skip
    labels = (sets["synthetic"][1], sets["test"][1])
    spaces = {name: audit_space(*rows, quantile, labels) for name, rows in embedded.items()}
    flagged = near_copies(spaces)
    fake_paths = [str(pathlib.Path(p).relative_to(fake_dir)) for p in fake_source.paths]
    images = [
        {
            "file": fake_paths[i],
            "class": class_names[sets["synthetic"][1][i]],
            "near_copy": bool(flagged[i]),
            **{f"{name}_nearest_train": int(space["index"][i]) for name, space in spaces.items()},
            **{f"{name}_distance": float(space["distance"][i]) for name, space in spaces.items()},
        }
        for i in range(len(fake_paths))
    ]
    return (
        {
            "fake_dir": str(fake_dir),
            "feature_space": net.name,
            "quantile": quantile,
            "near_copies": int(flagged.sum()),
            "images_audited": len(images),
            **{name: summary(space) for name, space in spaces.items()},
            "per_class": per_class_audit(
                embedded, [sets[n][1] for n in order], class_names, quantile
            ),
            "statement": STATEMENT,
            "images": images,
        },
        sets,
        spaces,
    )


def near_copy_screen(
    data: ml_collections.ConfigDict,
    *,
    classifier_workdir: str = "",
    quantile: float = 0.01,
    batch_size: int = 64,
    mesh=None,
):
    """A function (uint8 images [N, H, W, C], their labels [N]) -> bool[N]: near-copies of
    `data`'s training images by the audit's rule (each image against its class's test images),
    in pixels (and in a classifier's features when one is given); for `sample
    --exclude_near_copies`. The training and test images are read once, here."""
    mesh = mesh or parallel.make_mesh()
    batch_size = parallel.round_to_devices(batch_size, mesh)
    train = read_all(sources.get_source(split_data(data, "train")))[0]
    test, test_labels = read_all(sources.get_source(split_data(data, "test")))
    spaces = [(pixels, Reference(pixels(train)), pixels(test))]
    if classifier_workdir:
        net = features_lib.get_feature_net(
            "classifier", mesh, classifier_workdir=classifier_workdir
        )

        def embed(images):
            return features_lib.image_features(net, images, batch_size, mesh)

        spaces.append((embed, Reference(embed(train)), embed(test)))
    test_distances = [nearest(ref_test, ref_train)[1] for _, ref_train, ref_test in spaces]
    relative = [relative_quantile(d, test_labels, quantile) for d in test_distances]

    def screen(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
        flags = [
            nearest(embed_fn(images), ref_train)[1]
            < q * class_medians(distance, test_labels, labels)
            for (embed_fn, ref_train, _), distance, q in zip(
                spaces, test_distances, relative, strict=True
            )
        ]
        return np.logical_and.reduce(flags)

    return screen


def run(
    config: ml_collections.ConfigDict,
    workdir: str,
    fake_dir: str,
    classifier_workdir: str,
    quantile: float = 0.01,
) -> dict:
    """The `memorization` verb: audits `fake_dir` against `config.data`; writes the JSON and the
    closest-pairs PNG into WORKDIR."""
    mesh = parallel.make_mesh()
    net = features_lib.get_feature_net("classifier", mesh, classifier_workdir=classifier_workdir)
    report, sets, spaces = audit(config.data, fake_dir, net, quantile=quantile, mesh=mesh)
    out = pathlib.Path(workdir)
    if jax.process_index() == 0:
        out.mkdir(parents=True, exist_ok=True)
        fileio.write_json(out / REPORT, report)
        order = np.argsort(spaces["pixels"]["distance"])[:8]
        pairs = [(int(i), int(spaces["pixels"]["index"][i])) for i in order]
        captions = [f"{report['images'][i]['class']} d={spaces['pixels']['distance'][i]:.2f}"
                    for i in order]  # fmt: skip
        closest_pairs_png(out / PAIRS, sets["synthetic"][0], sets["train"][0],
                          pairs, captions)  # fmt: skip
        print(
            f"{report['near_copies']} of {report['images_audited']} synthetic images are "
            f"near-copies; distance ratio to train (synthetic over test, by class): pixels "
            f"{report['pixels']['ratio']:.3f}, features {report['features']['ratio']:.3f}. "
            f"Wrote {out}"
        )
    return report
