"""The TFDS builder `ham10000`: the user's HAM10000 download -> array_record splits, one config
per resolution (`ham10000/64`, `/128`, `/256`). Built and read without TensorFlow.

    ham-synth prepare --source=ham10000 --manual_dir=DIR --data_dir=D --image_size=64
"""

import dataclasses

import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from ham_synth.data import ham10000

NAME = "ham10000"
IMAGE_SIZES = (64, 128, 256)
SPLIT_MEMBERSHIP_FILE = "split_membership.csv"
SKIP_REPORT_FILE = "skipped.csv"

_CITATION = """@article{tschandl2018ham10000,
  title={The HAM10000 dataset, a large collection of multi-source dermatoscopic images of
         common pigmented skin lesions},
  author={Tschandl, Philipp and Rosendahl, Cliff and Kittler, Harald},
  journal={Scientific Data}, volume={5}, pages={180161}, year={2018}}"""


def config_name(image_size: int, split_by: str = "lesion") -> str:
    """`64` (lesion-grouped splits) or `64_image` (image-level splits): separate datasets."""
    return str(image_size) if split_by == "lesion" else f"{image_size}_{split_by}"


class Ham10000Config(tfds.core.BuilderConfig):
    """One stored resolution and split protocol; images are center-cropped to square, then
    downsampled."""

    def __init__(self, *, image_size: int, split_by: str):
        super().__init__(
            name=config_name(image_size, split_by),
            description=f"{image_size}x{image_size} center crops, Lanczos-downsampled, PNG; "
            f"splits grouped by {split_by}.",
        )
        self.image_size = image_size
        self.split_by = split_by


class Ham10000(tfds.core.GeneratorBasedBuilder):
    """HAM10000 with train/val/test grouped by lesion_id and stratified by dx."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {
        "1.0.0": "Lesion-grouped, dx-stratified train/val/test.",
        "1.1.0": "Lesions placed in a seeded random order, not largest first (which sent every "
        "multi-image lesion to train).",
    }
    BUILDER_CONFIGS = [
        Ham10000Config(image_size=s, split_by=by) for by in ham10000.SPLIT_BY for s in IMAGE_SIZES
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
    HAM10000 is not downloaded automatically (licence CC BY-NC 4.0). Download it from the Harvard
    Dataverse ({ham10000.DOWNLOAD_URL}) or Kaggle's "skin-cancer-mnist-ham10000", unzip it, and
    pass the folder that holds {ham10000.METADATA_FILE} and the image folders
    (HAM10000_images_part_1/, HAM10000_images_part_2/; any subfolder works) as --manual_dir.
    """

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # TFDS 4.9.10 finds a packaged builder's file through `importlib_resources`, which
        # etils >= 1.15 no longer installs; the module's own path is what it would return.
        return epath.Path(__file__)

    def __init__(
        self,
        *,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        split_seed: int = 0,
        skip_bad: bool = False,
        isic2018_test_dir: str = "",
        **kwargs,
    ):
        """The split, skip and test-set options only matter when building; a reader ignores
        them. `isic2018_test_dir` adds the official ISIC 2018 test set as split isic2018_test."""
        self._split_options = dict(
            val_fraction=val_fraction, test_fraction=test_fraction, seed=split_seed
        )
        self._skip_bad = skip_bad
        self._isic2018_test_dir = isic2018_test_dir
        self.records: list[ham10000.Record] = []
        self.problems: list[ham10000.Problem] = []
        self.assignment: dict[str, str] = {}
        super().__init__(**kwargs)

    # TFDS prints unknown download sizes and "downloaded" for a manual download; log instead, and
    # let `prepare` print its own summary.
    def _log_download_bytes(self) -> None:
        logging.info("Preparing %s in %s", self.name, self.data_dir)

    def _log_download_done(self) -> None:
        logging.info("Prepared %s in %s", self.name, self.data_dir)

    def _info(self) -> tfds.core.DatasetInfo:
        size = self.builder_config.image_size
        text = tfds.features.Text()
        return tfds.core.DatasetInfo(
            builder=self,
            description="Dermoscopic images of pigmented skin lesions, 7 diagnoses.",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(size, size, 3), encoding_format="png"),
                    "label": tfds.features.ClassLabel(names=ham10000.CLASS_NAMES),
                    "image_id": text,
                    "lesion_id": text,
                    "dx_type": text,
                    "age": tfds.features.Scalar(dtype=np.float32),  # NaN when unknown.
                    "sex": text,
                    "localization": text,
                }
            ),
            supervised_keys=("image", "label"),
            homepage=ham10000.DOWNLOAD_URL,
            citation=_CITATION,
            metadata=tfds.core.MetadataDict(split_options=self._split_options),
        )

    def _split_generators(self, dl_manager):
        self.records, self.problems = ham10000.load_records(
            dl_manager.manual_dir, skip_bad=self._skip_bad
        )
        self.assignment = ham10000.assign_splits(
            self.records, **self._split_options, split_by=self.builder_config.split_by
        )
        names = list(
            ham10000.split_fractions(
                self._split_options["val_fraction"], self._split_options["test_fraction"]
            )
        )
        if self._isic2018_test_dir:
            held_out, problems = ham10000.load_isic2018_test(
                self._isic2018_test_dir, skip_bad=self._skip_bad
            )
            shared = ham10000.check_held_out(self.records, held_out)
            if shared:
                logging.warning(
                    "%d lesion(s) of %s, such as %s, are also in HAM10000's splits.",
                    len(shared),
                    ham10000.ISIC2018_TEST_SPLIT,
                    sorted(shared)[:3],
                )
            self.records += held_out
            self.problems += problems
            self.assignment.update({r.image_id: ham10000.ISIC2018_TEST_SPLIT for r in held_out})
            names.append(ham10000.ISIC2018_TEST_SPLIT)
        return {
            name: self._generate_examples(
                [r for r in self.records if self.assignment[r.image_id] == name]
            )
            for name in names
        }

    def _generate_examples(self, records):
        size = self.builder_config.image_size
        for record in records:
            yield (
                record.image_id,
                {
                    # A PIL image: TFDS encodes it with PIL (a numpy array would need TensorFlow).
                    "image": ham10000.load_square(record.path, size),
                    "label": record.label,
                    "image_id": record.image_id,
                    "lesion_id": record.lesion_id,
                    "dx_type": record.dx_type,
                    "age": np.float32(record.age),
                    "sex": record.sex,
                    "localization": record.localization,
                },
            )


# --- Reading a prepared split: the `ham10000` data source ---


# Age bands for subgroup metrics (years; the upper bound excluded), as HAM10000 records ages in
# steps of 5.
AGE_BANDS = ((0, 30, "<30"), (30, 45, "30-44"), (45, 60, "45-59"), (60, 75, "60-74"),
             (75, 200, "75+"))  # fmt: skip


def age_band(age: float) -> str:
    if not np.isfinite(age):
        return "unknown"
    return next((name for low, high, name in AGE_BANDS if low <= age < high), "unknown")


@dataclasses.dataclass(frozen=True)
class Ham10000Source:
    """A prepared split read through `tfds.data_source` (array_record, random access, no TF)."""

    records: object  # tfds ArrayRecordDataSource: decoded dicts with bytes for text fields.
    labels: np.ndarray  # int32[N], read without decoding the images.
    # Per record: sex, age band and body site (the `subgroups` of subgroup metrics).
    subgroups: dict[str, np.ndarray] | None = None
    class_names: tuple[str, ...] = ham10000.CLASS_NAMES

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        return {
            "image": record["image"],
            "label": np.int32(record["label"]),
            "index": index,
            "image_id": record["image_id"].decode(),
            "lesion_id": record["lesion_id"].decode(),
        }


def make_ham10000(data: ml_collections.ConfigDict) -> Ham10000Source:
    """`ham10000/<data.image_size>` from `data.data_dir` (TFDS's default when empty)."""
    if data.image_size not in IMAGE_SIZES:
        raise ValueError(
            f"data.image_size={data.image_size}; HAM10000 is prepared at {IMAGE_SIZES}."
        )
    split_by = data.split_by
    if split_by not in ham10000.SPLIT_BY:
        raise ValueError(f"data.split_by={split_by!r}; choose one of {ham10000.SPLIT_BY}.")
    name = config_name(data.image_size, split_by)
    builder = Ham10000(config=name, data_dir=data.data_dir or None)
    if not builder.is_prepared():
        raise FileNotFoundError(
            f"No prepared ham10000/{name} in {builder.data_dir}. Run `ham-synth prepare "
            f"--source=ham10000 --manual_dir=DOWNLOAD --data_dir={data.data_dir or 'D'} "
            f"--image_size={data.image_size} --split_by={split_by}` and set "
            "--config.data.data_dir to that data_dir."
        )
    prepared = list(builder.info.splits)
    if data.split not in (*prepared, "all"):
        raise ValueError(f"data.split={data.split!r}; {builder.data_dir} has splits {prepared}.")
    # "all" is HAM10000's own images; the external isic2018_test set stays held out.
    own = [s for s in prepared if s in ham10000.SPLIT_NAMES]
    split = "+".join(own) if data.split == "all" else data.split
    undecoded = builder.as_data_source(split, decoders={"image": tfds.decode.SkipDecoding()})
    # One pass over the undecoded records, keeping only their small fields (not the PNG bytes).
    labels, subgroups = [], {"sex": [], "age": [], "localization": []}
    for i in range(len(undecoded)):
        row = undecoded[i]
        labels.append(row["label"])
        subgroups["sex"].append(row["sex"].decode() or "unknown")
        subgroups["age"].append(age_band(float(row["age"])))
        subgroups["localization"].append(row["localization"].decode() or "unknown")
    subgroups = {k: np.asarray(v, dtype=str) for k, v in subgroups.items()}
    return Ham10000Source(builder.as_data_source(split), np.asarray(labels, np.int32), subgroups)
