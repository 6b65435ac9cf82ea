"""Vision Transformer (Dosovitskiy et al. 2021) with the module and parameter names of
google-research/vision_transformer and big_vision, so their AugReg `.npz` checkpoints map onto it
key for key: `embedding`, `cls`, `Transformer/posembed_input/pos_embedding`,
`Transformer/encoderblock_N/{LayerNorm_0, MultiHeadDotProductAttention_1, LayerNorm_2,
MlpBlock_3}`, `Transformer/encoder_norm`, `head`.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ham_synth.models import layers

# Named sizes (width, depth, heads, MLP width), as in the ViT and AugReg papers.
SIZES = {
    "Ti": dict(width=192, depth=12, num_heads=3, mlp_dim=768),
    "S": dict(width=384, depth=12, num_heads=6, mlp_dim=1536),
    "B": dict(width=768, depth=12, num_heads=12, mlp_dim=3072),
    "L": dict(width=1024, depth=24, num_heads=16, mlp_dim=4096),
}
POOLS = ("token", "gap")
STEMS = ("patch", "conv", "shifted_patch")


def size_fields(variant: str, **explicit) -> dict[str, int]:
    """width, depth, num_heads and mlp_dim of a named size ("S"; "S/16" ignores the patch here),
    explicit values > 0 taking precedence; without a name all four are needed."""
    name = variant.split("/")[0]
    if name and name not in SIZES:
        raise ValueError(f"model.variant={variant!r}; choose one of {sorted(SIZES)} or ''.")
    fields = dict(SIZES.get(name, {}))
    fields.update({k: v for k, v in explicit.items() if v and v > 0})
    missing = sorted(set(SIZES["S"]) - set(fields))
    if missing:
        raise ValueError(
            f"model.variant is empty and model.{', model.'.join(missing)} not set: name a size "
            f"({', '.join(SIZES)}) or give width, depth, num_heads and mlp_dim."
        )
    return fields


def layer_index(param_name: str, depth: int) -> int:
    """A parameter's depth in the network, for layer-wise lr decay: 0 for the patch embedding
    (or conv stem), class token and position embeddings, i + 1 for encoder block i, depth + 1
    for the final LayerNorm and the head."""
    parts = param_name.split("/")
    if parts[0] in ("embedding", "stem", "cls") or parts[1:2] == ["posembed_input"]:
        return 0
    if parts[1:2] and parts[1].startswith("encoderblock_"):
        return int(parts[1].removeprefix("encoderblock_")) + 1
    return depth + 1


class MlpBlock(nn.Module):
    mlp_dim: int
    dropout: float = 0.0
    dtype: Any = None

    @nn.compact
    def __call__(self, x, *, train: bool):
        width = x.shape[-1]
        dense = dict(
            dtype=self.dtype,
            kernel_init=nn.initializers.xavier_uniform(),
            bias_init=nn.initializers.normal(1e-6),
        )
        # Exact GELU, as timm; big_vision's tanh approximation differs by < 5e-4 per activation.
        x = nn.gelu(nn.Dense(self.mlp_dim, **dense)(x), approximate=False)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = nn.Dense(width, **dense)(x)
        return nn.Dropout(self.dropout, deterministic=not train)(x)


def drop_path(module: nn.Module, x, rate: float, train: bool):
    """Stochastic depth: zeroes a residual branch per example with probability `rate` (scaling
    the kept ones by 1 / (1 - rate)); identity at evaluation."""
    if not train or rate == 0.0:
        return x
    keep = jax.random.bernoulli(module.make_rng("dropout"), 1.0 - rate, (x.shape[0], 1, 1))
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


class ConvStem(nn.Module):
    """Early convolutions (Xiao et al. 2021): log2(patch_size) 3x3 stride-2 convolutions, each a
    LayerNorm and a ReLU after it, widths rising to `width` by doubling, then a 1x1 `embedding`.
    It tokenizes as a patch_size x patch_size patch embedding does, on features that already see
    their neighbours. LayerNorm where the paper has BatchNorm keeps the ViT free of batch
    statistics (one evaluation mode, no state across examples)."""

    width: int
    patch_size: int
    dtype: Any = None

    @nn.compact
    def __call__(self, images):
        p = self.patch_size
        if p < 2 or p & (p - 1):
            raise ValueError(
                f"model.stem='conv' needs model.patch_size to be a power of two >= 2, not {p}."
            )
        num_convs = p.bit_length() - 1
        x = images
        for i in range(num_convs):
            channels = max(self.width >> (num_convs - 1 - i), 1)
            x = nn.Conv(channels, (3, 3), strides=(2, 2), padding=1, use_bias=False,
                        dtype=self.dtype, name=f"conv_{i}")(x)  # fmt: skip
            x = nn.relu(nn.LayerNorm(dtype=self.dtype, name=f"norm_{i}")(x))
        return nn.Conv(self.width, (1, 1), dtype=self.dtype, name="embedding")(x)


def shift(images, dy: int, dx: int):
    """images [B, H, W, C] moved dy rows down and dx columns right (negative: up, left), the
    uncovered border zero (mid-grey in [-1, 1])."""
    h, w = images.shape[1:3]
    padded = jnp.pad(images, ((0, 0), (abs(dy),) * 2, (abs(dx),) * 2, (0, 0)))
    return padded[:, abs(dy) - dy : abs(dy) - dy + h, abs(dx) - dx : abs(dx) - dx + w]


class ShiftedPatchStem(nn.Module):
    """Shifted patch tokenization (Lee et al. 2021, "Vision Transformer for Small-Size
    Datasets"): the image and its four diagonal shifts by half a patch, stacked on channels, cut
    into patch_size x patch_size patches, each flattened, LayerNormed and embedded by a Dense.
    A token then sees its neighbours' pixels, which small-data ViTs lack."""

    width: int
    patch_size: int
    dtype: Any = None

    @nn.compact
    def __call__(self, images):
        p, s = self.patch_size, self.patch_size // 2
        x = jnp.concatenate(
            [images] + [shift(images, dy, dx) for dy in (-s, s) for dx in (-s, s)], axis=-1
        )
        b, h, w, c = x.shape
        x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
        x = nn.LayerNorm(dtype=self.dtype, name="norm")(x.reshape(b, h // p, w // p, p * p * c))
        return nn.Dense(self.width, dtype=self.dtype, name="embedding")(x)


class Encoder1DBlock(nn.Module):
    """Pre-LN block: x + MHSA(LN(x)), then x + MLP(LN(x)). Attention probabilities are sown in
    `intermediates` (`sow_weights`) when applied with mutable=["intermediates"].

    `locality_attention`: locality self-attention (Lee et al. 2021): no token attends to itself,
    and the softmax's temperature is learned, so attention can sharpen onto other tokens on
    small data. `attention_log_scale` is the log of the query-key scale over its default
    1 / sqrt(head width): 0 at init, and weight decay (optim.decay=all) pulls it back to the
    default."""

    num_heads: int
    mlp_dim: int
    dropout: float = 0.0
    attention_dropout: float = 0.0
    drop_path: float = 0.0
    locality_attention: bool = False
    dtype: Any = None

    @nn.compact
    def __call__(self, x, *, train: bool, sow_weights: bool = False):
        attention_fn, mask = layers.fused_attention, None
        if self.locality_attention:
            log_scale = self.param("attention_log_scale", nn.initializers.zeros, ())
            head_width = x.shape[-1] // self.num_heads
            attention_fn = functools.partial(
                attention_fn, scale=jnp.exp(log_scale) / head_width**0.5
            )
            mask = ~jnp.eye(x.shape[1], dtype=bool)
        y = nn.LayerNorm(dtype=self.dtype, name="LayerNorm_0")(x)
        y = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads,
            dtype=self.dtype,
            kernel_init=nn.initializers.xavier_uniform(),
            dropout_rate=self.attention_dropout,
            broadcast_dropout=False,  # Masks per example and head, as google-research's ViT.
            deterministic=not train,
            force_fp32_for_softmax=True,
            attention_fn=attention_fn,
            name="MultiHeadDotProductAttention_1",
        )(y, y, mask=mask, sow_weights=sow_weights)
        y = nn.Dropout(self.dropout, deterministic=not train)(y)
        x = x + drop_path(self, y, self.drop_path, train)
        y = nn.LayerNorm(dtype=self.dtype, name="LayerNorm_2")(x)
        y = MlpBlock(self.mlp_dim, self.dropout, dtype=self.dtype, name="MlpBlock_3")(
            y, train=train
        )
        return x + drop_path(self, y, self.drop_path, train)


class ViT(nn.Module):
    """images float32[B, H, W, 3] in [-1, 1] -> logits float32[B, num_classes].

    `stem="patch"` embeds patch_size x patch_size patches with one strided convolution (the
    AugReg layout); `"conv"` with a ConvStem of the same stride; `"shifted_patch"` with a
    ShiftedPatchStem. `pool="token"` reads the class token, `"gap"` averages the patch tokens.
    Stochastic depth rises linearly from 0 at the first block to `stochastic_depth` at the last.
    `locality_attention` gives every block locality self-attention (Encoder1DBlock).
    """

    num_classes: int
    patch_size: int = 16
    width: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_dim: int = 1536
    pool: str = "token"
    stem: str = "patch"
    dropout: float = 0.0
    attention_dropout: float = 0.0
    stochastic_depth: float = 0.0
    locality_attention: bool = False
    # Activations and matmuls (e.g. bfloat16); None: float32. Params, LayerNorm statistics and
    # the softmax are float32 whatever it is; the logits are returned as float32 (the head
    # computes them in this dtype).
    dtype: Any = None

    def setup(self):
        if self.pool not in POOLS:
            raise ValueError(f"model.pool={self.pool!r}; choose one of {POOLS}.")
        if self.stem not in STEMS:
            raise ValueError(f"model.stem={self.stem!r}; choose one of {STEMS}.")
        if self.width % self.num_heads:
            raise ValueError(
                f"model.width={self.width} must be a multiple of model.num_heads={self.num_heads}."
            )

    @nn.compact
    def __call__(self, images, *, train: bool = False, sow_weights: bool = False):
        b, h, w, _ = images.shape
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(
                f"Image size {h}x{w} is not a multiple of model.patch_size={p}; change one."
            )
        if self.stem == "conv":
            x = ConvStem(self.width, p, dtype=self.dtype, name="stem")(images)
        elif self.stem == "shifted_patch":
            x = ShiftedPatchStem(self.width, p, dtype=self.dtype, name="stem")(images)
        else:
            x = nn.Conv(self.width, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
                        name="embedding")(images)  # fmt: skip
        x = x.reshape(b, -1, self.width)
        if self.pool == "token":
            cls = self.param("cls", nn.initializers.zeros, (1, 1, self.width))
            x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, self.width)).astype(x.dtype), x], 1)
        x = Encoder(
            depth=self.depth,
            num_heads=self.num_heads,
            mlp_dim=self.mlp_dim,
            dropout=self.dropout,
            attention_dropout=self.attention_dropout,
            stochastic_depth=self.stochastic_depth,
            locality_attention=self.locality_attention,
            dtype=self.dtype,
            name="Transformer",
        )(x, train=train, sow_weights=sow_weights)
        x = x[:, 0] if self.pool == "token" else jnp.mean(x, axis=1)
        self.sow("intermediates", "pre_logits", x)
        logits = nn.Dense(
            self.num_classes, dtype=self.dtype, kernel_init=nn.initializers.zeros, name="head"
        )(x)
        return logits.astype(jnp.float32)


class AddPositionEmbs(nn.Module):
    """x + a learned `pos_embedding` [1, tokens, width]."""

    @nn.compact
    def __call__(self, x):
        shape = (1, *x.shape[1:])
        pos = self.param("pos_embedding", nn.initializers.normal(stddev=0.02), shape)
        return x + pos.astype(x.dtype)


class Encoder(nn.Module):
    """Learned position embeddings, dropout, `depth` blocks and a final LayerNorm."""

    depth: int
    num_heads: int
    mlp_dim: int
    dropout: float = 0.0
    attention_dropout: float = 0.0
    stochastic_depth: float = 0.0
    locality_attention: bool = False
    dtype: Any = None

    @nn.compact
    def __call__(self, x, *, train: bool, sow_weights: bool = False):
        x = AddPositionEmbs(name="posembed_input")(x)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        for i in range(self.depth):
            rate = self.stochastic_depth * i / max(self.depth - 1, 1)
            x = Encoder1DBlock(
                self.num_heads,
                self.mlp_dim,
                self.dropout,
                self.attention_dropout,
                rate,
                self.locality_attention,
                dtype=self.dtype,
                name=f"encoderblock_{i}",
            )(x, train=train, sow_weights=sow_weights)
        return nn.LayerNorm(dtype=self.dtype, name="encoder_norm")(x)
