"""pytorch-fid built offline with random weights, as the reference our JAX port must equal.

Test helper only (never imported by the package). PyPI's torchvision is a CUDA build that fails
to import beside the CPU torch, so its two operator-registration modules are stubbed; pytorch-fid
only uses torchvision's pure-Python Inception-v3 classes.
"""

import sys
import types
import unittest.mock

import numpy as np
import pytest

torch = pytest.importorskip("torch")
for _name in ("torchvision._meta_registrations", "torchvision._autograd_registrations"):
    sys.modules.setdefault(_name, types.ModuleType(_name))
pytorch_fid_inception = pytest.importorskip("pytorch_fid.inception")
fid_score = pytest.importorskip("pytorch_fid.fid_score")
torchvision_inception = pytest.importorskip("torchvision.models.inception")


def _refuse_download(url, *args, **kwargs):
    raise RuntimeError(f"tests must not download {url}")


# Nothing in the tests may fetch the published weights.
pytorch_fid_inception.load_state_dict_from_url = _refuse_download


def _randomize(model, seed: int) -> None:
    """Random conv weights at a scale that keeps activations O(1) through 94 layers, and random
    BatchNorm affine parameters and running statistics (they start at 0 and 1)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                fan_in = module.weight[0].numel()
                module.weight.normal_(0.0, (2.0 / fan_in) ** 0.5, generator=gen)
            elif isinstance(module, torch.nn.BatchNorm2d):
                c = module.num_features
                module.weight.copy_(0.5 + torch.rand(c, generator=gen))
                module.bias.copy_(0.2 * torch.randn(c, generator=gen))
                module.running_mean.copy_(0.2 * torch.randn(c, generator=gen))
                module.running_var.copy_(0.5 + torch.rand(c, generator=gen))


def write_random_fid_weights(path, seed: int = 0) -> None:
    """Saves a random stand-in for pytorch-fid's published .pth: the same keys and shapes
    (torchvision names, `fc` included), random weights and BatchNorm statistics."""
    lenient_load = lambda self, state_dict, strict=True, assign=False: None  # noqa: E731
    with (
        unittest.mock.patch.object(
            pytorch_fid_inception, "load_state_dict_from_url", lambda *a, **k: {}
        ),
        unittest.mock.patch.object(
            torchvision_inception.Inception3, "load_state_dict", lenient_load
        ),
    ):
        model = pytorch_fid_inception.fid_inception_v3()
    _randomize(model, seed)
    torch.save(model.state_dict(), path)


def load_fid_inception(path, output_blocks=(3,)):
    """pytorch-fid's `InceptionV3(use_fid_inception=True)` in eval mode, loading the weights at
    `path` by its own code (a strict `load_state_dict`) where it would load the published file."""
    load = lambda url, *a, **k: torch.load(path, map_location="cpu", weights_only=True)  # noqa: E731
    with unittest.mock.patch.object(pytorch_fid_inception, "load_state_dict_from_url", load):
        model = pytorch_fid_inception.InceptionV3(
            list(output_blocks), resize_input=True, normalize_input=True, use_fid_inception=True
        )
    return model.eval()


def state_dict_numpy(model) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def run_blocks(model, images_nhwc: np.ndarray) -> list[np.ndarray]:
    """The model's block outputs for float images NHWC in [0, 1], each as NHWC (or [B, C])."""
    x = torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2)))
    with torch.no_grad():
        outputs = model(x)
    return [o.numpy().transpose(0, 2, 3, 1) for o in outputs]


def interpolate_299(images_nhwc: np.ndarray) -> np.ndarray:
    """torch's bilinear resize to 299x299 with align_corners=False, as pytorch-fid resizes."""
    x = torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2)))
    y = torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
    return y.numpy().transpose(0, 2, 3, 1)


calculate_frechet_distance = fid_score.calculate_frechet_distance
