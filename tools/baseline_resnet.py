"""A CNN peer for the classifier's targets: ResNet-18 trained from scratch the way MedMNIST v2
trains it at 28² (Yang et al. 2023), on the split a ViT config trains and is tested on.

    python tools/baseline_resnet.py --config=configs/vit.py:derma28 \\
        --config.data.path=../shared/data/dermamnist_dev/dermamnist_dev.npz --epochs=100

MedMNIST's recipe (its experiments repository, MedMNIST2D): ResNet-18 with a CIFAR stem (3x3
convolution at stride 1, no max-pool) and PyTorch's default initialization (built from timm's
resnet18, whose own initialization is reset), Adam at lr 1e-3 cut 10x at 50% and 75% of the
epochs, batches of 128 drawn in the data's natural class shares, plain cross-entropy, no
augmentation, pixels scaled to [-1, 1], and the epoch with the best val macro ROC AUC kept. Val
and test are scored by the classification evaluator's metrics and, over tau, by post-hoc logit
adjustment against the training split's class shares (as tools/operating_points.py scores a ViT
run). Writes `--out` (default runs/baselines/resnet18_<config>_<data file>_seed<seed>.json).
torch and timm come with the `test` extra.
"""

import copy
import json
import pathlib
import sys
import time
import types

import numpy as np
import torch
from absl import app, flags, logging
from ml_collections import config_flags

from ham_synth import config_lib
from ham_synth.data import pipeline as data_pipeline
from ham_synth.evaluators import classification
from ham_synth.tasks import classify

config_flags.DEFINE_config_file("config", None, "A classifier config, e.g. configs/vit.py:derma28.")
_EPOCHS = flags.DEFINE_integer("epochs", 100, "Epochs over the training split (MedMNIST: 100).")
_BATCH = flags.DEFINE_integer("batch_size", 128, "Training batch size.")
_LR = flags.DEFINE_float("lr", 1e-3, "Adam's learning rate before the two 10x cuts.")
_SEED = flags.DEFINE_integer("seed", 0, "Initialization and data-order seed.")
_TAUS = flags.DEFINE_list("taus", "-0.5,-0.25,0,0.25,0.5,0.75,1", "Logit-adjustment taus.")
_OUT = flags.DEFINE_string("out", None, "JSON path; default runs/baselines/resnet18_<config>.json.")


def read_split(config, split: str) -> tuple[torch.Tensor, np.ndarray, tuple[str, ...]]:
    """(float32[N, C, H, W] pixels in [-1, 1], int[N] labels, class names) of `split`, read as
    evaluation reads it (data.eval_preprocess, no augmentation)."""
    source = data_pipeline.eval_source(config_lib.with_values(config, {"data.split": split}).data)
    images = np.stack([source[i]["image"] for i in range(len(source))])
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return pixels, data_pipeline.source_labels(source), tuple(source.class_names)


def resnet18_cifar_stem(num_classes: int, channels: int) -> torch.nn.Module:
    """ResNet-18 with MedMNIST's 28² stem: a stride-1 3x3 convolution and no max-pool, so the
    four stages run at 28, 14, 7 and 4 pixels."""
    # PyPI's torchvision (which timm imports) is a CUDA build whose operator registrations fail
    # beside the CPU torch; timm's ResNet uses none of them (tests/evaluators/torch_reference.py).
    for name in ("torchvision._meta_registrations", "torchvision._autograd_registrations"):
        sys.modules.setdefault(name, types.ModuleType(name))
    import timm  # noqa: PLC0415  (test extra, after the stubs)

    model = timm.create_model("resnet18", num_classes=num_classes, in_chans=channels)
    model.conv1 = torch.nn.Conv2d(channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = torch.nn.Identity()
    for module in model.modules():  # PyTorch's defaults, as MedMNIST's own ResNet has (timm
        if hasattr(module, "reset_parameters"):  # zeroes each block's last BatchNorm scale).
            module.reset_parameters()
    return model


@torch.no_grad()
def predict_probs(model: torch.nn.Module, pixels: torch.Tensor, batch: int = 500) -> np.ndarray:
    """float64[N, K] softmax of the model in eval mode."""
    model.eval()
    logits = [model(pixels[i : i + batch]) for i in range(0, len(pixels), batch)]
    return torch.softmax(torch.cat(logits), dim=1).double().numpy()


def train(splits: dict, epochs: int, batch: int, lr: float, seed: int) -> tuple:
    """The model at its best val macro ROC AUC, and one log row per epoch; `splits` maps each
    split to read_split's triple."""
    torch.manual_seed(seed)
    x_train, y_train, class_names = splits["train"]
    x_val, y_val, _ = splits["val"]
    model = resnet18_cifar_stem(len(class_names), x_train.shape[1])
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    milestones = [int(0.5 * epochs), int(0.75 * epochs)]
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
    labels = torch.from_numpy(y_train).long()
    best, best_auc, log, start = None, -1.0, [], time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.train()
        order, losses = torch.randperm(len(labels)), []
        for i in range(0, len(order), batch):
            index = order[i : i + batch]
            loss = torch.nn.functional.cross_entropy(model(x_train[index]), labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        schedule.step()
        probs = predict_probs(model, x_val)
        val_auc = classification.macro_roc_auc(y_val, probs, classification.present_classes(y_val))
        val_ba = classification.balanced_accuracy(y_val, probs.argmax(axis=1))
        minutes = (time.perf_counter() - start) / 60
        row = {"epoch": epoch, "train_loss": float(np.mean(losses)), "val/roc_auc_macro": val_auc,
               "val/balanced_accuracy": val_ba, "minutes": minutes}  # fmt: skip
        log.append(row)
        logging.info("[resnet18] %s", ", ".join(f"{k} {v:.4g}" for k, v in row.items()))
        if val_auc > best_auc:
            best, best_auc = copy.deepcopy(model.state_dict()), val_auc
    if best is None:
        raise ValueError(f"val macro ROC AUC was never defined ({log[-1]}): val needs 2+ classes.")
    model.load_state_dict(best)
    return model, log


def score(model, splits: dict, taus) -> dict:
    """Val and test: the evaluator's metrics at tau 0, and accuracy / balanced accuracy per tau
    against the training split's class shares."""
    _, y_train, class_names = splits["train"]
    counts = np.bincount(y_train, minlength=len(class_names))
    log_prior = classify.log_prior(",".join(map(str, counts)), "train class counts",
                                   len(class_names), "tools/baseline_resnet.py")  # fmt: skip
    result = {"rows": [{"tau": tau} for tau in taus]}
    for split in ("val", "test"):
        pixels, labels, _ = splits[split]
        probs = predict_probs(model, pixels)
        result[split], result[f"{split}_details"] = classification.classification_metrics(
            labels, probs, list(class_names)
        )
        swept = classification.tau_scores(probs, labels, log_prior, taus)
        for row, scores in zip(result["rows"], swept, strict=True):
            row |= {f"{split}/{k}": v for k, v in scores.items()}
    return result


def main(argv):
    del argv
    config = flags.FLAGS.config
    splits = {split: read_split(config, split) for split in ("train", "val", "test")}
    model, log = train(splits, _EPOCHS.value, _BATCH.value, _LR.value, _SEED.value)
    result = score(model, splits, [float(t) for t in _TAUS.value])
    best = max(log, key=lambda row: row["val/roc_auc_macro"])
    # The ResNet reads the config's data and splits only: not its augmentation or class draws.
    data = {k: v for k, v in config.data.to_dict().items() if k not in ("augment", "balance_alpha")}
    result |= {"best_epoch": best["epoch"], "log": log, "data": data,
               "recipe": {"epochs": _EPOCHS.value, "batch_size": _BATCH.value, "lr": _LR.value,
                          "seed": _SEED.value, "threads": torch.get_num_threads(),
                          "augment": "none", "class_draws": "natural shares"}}  # fmt: skip
    path, _, arg = config_flags.get_config_filename(flags.FLAGS["config"]).partition(":")
    name = pathlib.Path(config.data.get("path") or config.data.name).stem
    default = f"resnet18_{pathlib.Path(path).stem}_{arg}_{name}_seed{_SEED.value}.json"
    out = pathlib.Path(_OUT.value or f"runs/baselines/{default}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"ResNet-18, {_EPOCHS.value} epochs ({log[-1]['minutes']:.1f} min), best val AUC at "
          f"epoch {best['epoch']}:")  # fmt: skip
    for split in ("val", "test"):
        shown = ("accuracy", "balanced_accuracy", "f1_macro", "roc_auc_macro")
        print(f"  {split}: " + ", ".join(f"{k} {result[split][k]:.4f}" for k in shown))
    print("  tau  " + "  ".join(f"{k:>22s}" for k in result["rows"][0] if k != "tau"))
    for row in result["rows"]:
        values = [v for k, v in row.items() if k != "tau"]
        print(f"{row['tau']:5.2f}  " + "  ".join(f"{v:22.4f}" for v in values))
    print(f"Wrote {out}")


if __name__ == "__main__":
    flags.mark_flag_as_required("config")
    app.run(main)
