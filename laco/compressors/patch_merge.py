"""LaCo's Patch Merge Layer (PML) and InternVL-style pixel-shuffle, which is the same merge without the shortcut."""

from __future__ import annotations

import copy
from typing import Literal

import torch
from torch import nn

from .. import functional as F
from ..functional import GridSize
from .base import TokenCompressor, register

Init = Literal["zero", "default", "layer", "ffn_reuse"]
INITS: tuple[str, ...] = ("zero", "default", "layer", "ffn_reuse")
MLP_RATIO = 4
"""The usual ViT MLP width over token width, for ``init="ffn_reuse"``'s default ``hidden_dim`` when no block gives it."""


@register("laco")
class PatchMerge(TokenCompressor):
    """LaCo's Patch Merge Layer: ``MLP(LayerNorm(space_to_channel(x))) + AvgPool(x)``.

    Each ``factor x factor`` block of tokens is concatenated into one token of ``factor**2 * dim`` channels
    (token-major layout), normalised, and projected back to ``out_dim`` by a two-layer GELU MLP. The
    non-parametric shortcut adds the block's average, which keeps the next pretrained layer's input close to
    what it was trained on.

    Args:
        dim: width of the incoming tokens.
        factor: merge ``factor x factor`` neighbourhoods of tokens (2 gives 4x fewer tokens).
        out_dim: output width; defaults to ``dim`` as needed inside an encoder.
        hidden_dim: width of the MLP's hidden layer; defaults to ``dim`` (about a tenth of a ViT layer's cost
            at the incoming token count), and for ``init="ffn_reuse"`` to ``factor**2`` times the layer's MLP width
            (``factor**2 * 4 * dim`` when built without a layer).
        shortcut: add the average-pooling residual.
        init: ``"zero"`` zero-initialises the last Linear, so an untrained PML is exactly average pooling and
            a pretrained encoder works from step 0; ``"default"`` is PyTorch's initialisation; ``"layer"``
            starts the MLP as a copy of an encoder layer's own MLP applied to the window's normalised
            concatenation, ``fc1`` tiled and divided by ``factor**2`` (see :meth:`init_from_mlp`);
            ``"ffn_reuse"`` runs the layer's MLP on each token of the window and averages (see
            :meth:`init_from_ffn`: the norm becomes per token, ``fc1`` block-diagonal). ``laco.apply`` initialises
            ``"layer"`` and ``"ffn_reuse"`` from the layer the PML follows.
        branch_scale: if set, multiply the learned branch by a learnable per-channel scale initialised to this
            value (LayerScale), which puts the branch on the scale of the residual stream.
        pad: policy for grids the factor does not divide (see :mod:`laco.functional`).

    Shape: ``forward(x, size)`` takes ``(B, H*W, dim)`` with ``size = (H, W)`` and returns
    ``(B, ceil(H/f)*ceil(W/f), out_dim)`` and the merged size.
    """

    def __init__(
        self,
        dim: int,
        factor: int = 2,
        *,
        hidden_dim: int | None = None,
        shortcut: bool = True,
        init: Init = "zero",
        branch_scale: float | None = None,
        **options,
    ) -> None:
        super().__init__(dim, factor, shortcut=shortcut, **options)  # out_dim, pad: TokenCompressor's
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}; choose one of {INITS}.")
        if init == "zero" and not shortcut:
            raise ValueError(
                "init='zero' without the shortcut makes the merge output all zeros; use init='default', "
                "or keep shortcut=True."
            )
        merged = factor * factor * dim
        if hidden_dim is None:
            hidden_dim = factor * factor * MLP_RATIO * dim if init == "ffn_reuse" else dim
        self.hidden_dim = hidden_dim
        self.init = init
        # "ffn_reuse" reuses a per-token pre-norm MLP, so its norm is per token; the PML's normalises the window
        self.token_norm = self.token_norm or init == "ffn_reuse"
        self.norm = nn.LayerNorm(dim if self.token_norm else merged)
        self.fc1 = nn.Linear(merged, self.hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(self.hidden_dim, self.out_dim)
        self.branch_scale = (
            nn.Parameter(torch.full((self.out_dim,), float(branch_scale))) if branch_scale is not None else None
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.norm.reset_parameters()
        self.fc1.reset_parameters()
        self.fc2.reset_parameters()
        if self.init == "zero":
            nn.init.zeros_(self.fc2.weight)
            nn.init.zeros_(self.fc2.bias)

    token_norm: bool = False
    """Whether the norm before the MLP is applied to each token of the window (width ``dim``) rather than to their
    concatenation (width ``factor**2 * dim``)."""

    @torch.no_grad()
    def init_from_mlp(
        self, norm: nn.Module, fc1: nn.Linear, fc2: nn.Linear, output_scale: torch.Tensor | None = None
    ) -> None:
        """Start the learned branch as a copy of a pre-norm ViT MLP applied to the block's mean token.

        ``fc1`` sees the concatenation of ``factor**2`` tokens, so its weight is the original weight tiled
        ``factor**2`` times and divided by ``factor**2``: on a block of identical tokens the branch then computes
        exactly the original ``fc2(act(fc1(norm(token))))`` (times ``output_scale``, e.g. layer scale).
        """
        groups = self.factor * self.factor
        if fc1.in_features != self.dim or fc2.out_features != self.out_dim:
            raise ValueError(
                f"cannot initialise a PatchMerge of width {self.dim}->{self.out_dim} from an MLP of width "
                f"{fc1.in_features}->{fc2.out_features}."
            )
        if fc1.out_features != self.hidden_dim:
            raise ValueError(
                f"init='layer' needs hidden_dim equal to the layer's MLP width {fc1.out_features}, "
                f"got {self.hidden_dim}."
            )
        if getattr(norm, "weight", None) is not None:
            self.norm.weight.copy_(norm.weight.repeat(groups))
        if getattr(norm, "bias", None) is not None:
            self.norm.bias.copy_(norm.bias.repeat(groups))
        self.fc1.weight.copy_(fc1.weight.repeat(1, groups) / groups)
        if fc1.bias is not None:
            self.fc1.bias.copy_(fc1.bias)
        else:
            self.fc1.bias.zero_()
        scale = torch.ones(self.out_dim, device=fc2.weight.device) if output_scale is None else output_scale
        self.fc2.weight.copy_(fc2.weight * scale[:, None])
        self.fc2.bias.copy_((fc2.bias if fc2.bias is not None else torch.zeros_like(scale)) * scale)

    @torch.no_grad()
    def init_from_ffn(
        self,
        norm: nn.Module,
        fc1: nn.Linear,
        fc2: nn.Linear,
        output_scale: torch.Tensor | None = None,
        act: nn.Module | None = None,
    ) -> None:
        """Start the learned branch as the mean of a pre-norm ViT MLP applied to each token of the window.

        With ``g = factor**2`` tokens: the norm is ``norm`` (per token), ``fc1`` is ``blockdiag(F1, ..., F1)``
        (``g C -> g H``, bias tiled), ``fc2`` is ``[F2 | ... | F2] / g`` (``g H -> C``, bias as is), and ``act`` is
        the MLP's own activation. ``output_scale`` (layer scale) is folded into ``fc2``. On a window of identical
        tokens the branch is exactly ``scale * fc2(act(fc1(norm(token))))``.
        """
        groups = self.factor * self.factor
        if not self.token_norm:
            raise ValueError(
                f"init_from_ffn needs a per-token norm; build the merge with init='ffn_reuse', not {self.init!r}."
            )
        if fc1.in_features != self.dim or fc2.out_features != self.out_dim:
            raise ValueError(
                f"cannot initialise a PatchMerge of width {self.dim}->{self.out_dim} from an MLP of width "
                f"{fc1.in_features}->{fc2.out_features}."
            )
        if self.hidden_dim != groups * fc1.out_features:
            raise ValueError(
                f"init='ffn_reuse' needs hidden_dim = {groups} x the layer's MLP width {fc1.out_features} = "
                f"{groups * fc1.out_features}, got {self.hidden_dim}; leave hidden_dim unset."
            )
        self.norm = copy_norm(norm, self.norm)
        if act is not None:
            self.act = copy.deepcopy(act)
        self.fc1.weight.copy_(torch.block_diag(*[fc1.weight] * groups))
        self.fc1.bias.copy_(fc1.bias.repeat(groups) if fc1.bias is not None else torch.zeros_like(self.fc1.bias))
        scale = torch.ones(self.out_dim, device=fc2.weight.device) if output_scale is None else output_scale
        self.fc2.weight.copy_(torch.cat([fc2.weight * scale[:, None]] * groups, dim=1) / groups)
        self.fc2.bias.copy_((fc2.bias if fc2.bias is not None else torch.zeros_like(scale)) * scale)

    uses_stacked = True
    neighbourhood_wise = True

    def normalise(self, stacked: torch.Tensor, size: GridSize) -> torch.Tensor:
        """The MLP's input: the window normalised as one vector, or token by token. Per token, a padded slot reads
        the nearest real token of its window, so the per-token FFN reuse averages real tokens only (exactly for
        2x2 windows); the window-wide norm keeps the plain PML's zeros there."""
        if not self.token_norm:
            return self.norm(stacked)
        batch, windows, _ = stacked.shape
        groups = self.factor * self.factor
        normed = self.norm(stacked.reshape(batch, windows, groups, self.dim))
        if size[0] % self.factor or size[1] % self.factor:
            slots = F.nearest_real_slots(size, self.factor, stacked.device)
            normed = normed.gather(2, slots[None, :, :, None].expand(batch, -1, -1, self.dim))
        return normed.reshape(batch, windows, groups * self.dim)

    def compress(self, x: torch.Tensor, size: GridSize, stacked: torch.Tensor) -> tuple[torch.Tensor, GridSize]:
        y = self.fc2(self.act(self.fc1(self.normalise(stacked, size))))
        if self.branch_scale is not None:
            y = y * self.branch_scale
        return y, self.output_size(size)

    def compress_flops(self, size: GridSize, out: GridSize) -> int:
        tokens = out[0] * out[1]
        merged = self.factor * self.factor * self.dim
        return 2 * tokens * (merged * self.hidden_dim + self.hidden_dim * self.out_dim)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, hidden_dim={self.hidden_dim}, init={self.init!r}"


def copy_norm(source: nn.Module, target: nn.Module) -> nn.Module:
    """``target`` holding ``source``'s weights (and epsilon), or a copy of ``source`` when it is another kind of norm
    (RMSNorm): laco rebuilds the merge from the same block on every load, so the kind is the same each time."""
    if (
        type(source) is nn.LayerNorm
        and type(target) is nn.LayerNorm
        and source.normalized_shape == target.normalized_shape
    ):
        target.eps = source.eps
        for name in ("weight", "bias"):
            parameter, value = getattr(target, name), getattr(source, name)
            if parameter is not None and value is not None:
                parameter.copy_(value)
            elif parameter is not None:  # a norm without affine weights: the identity affine
                parameter.fill_(1.0 if name == "weight" else 0.0)
        return target
    return copy.deepcopy(source)


@register("pixel_shuffle")
class PixelShuffle(PatchMerge):
    """InternVL-style pixel-shuffle connector: the same merge and MLP as LaCo, without the shortcut.

    Defaults to PyTorch's initialisation, since a zero-initialised branch without a shortcut outputs zeros.
    """

    def __init__(
        self,
        dim: int,
        factor: int = 2,
        *,
        shortcut: bool = False,
        init: Init = "default",
        **options,
    ) -> None:
        super().__init__(dim, factor, shortcut=shortcut, init=init, **options)
