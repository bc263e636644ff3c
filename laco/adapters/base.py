"""What laco needs to know about a vision encoder family, and the generic adapter for any other ViT.

An adapter names, for one family of Hugging Face vision models: where the transformer blocks are, how the image
tokens lie in the hidden states (:meth:`EncoderAdapter.layout`, a :class:`~laco.adapters.layout.TokenLayout`:
prefix tokens and a row-major grid for batched ViTs, packed sequences for native-resolution towers), how many
tokens an image of a given size becomes, which compression modes the model supports and what else must change
around the encoder for them (:meth:`EncoderAdapter.install`) and, optionally, the parts of a block's MLP (to
initialise a patch merge from it). One small file per family.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from ..placement import KEEP, MORE, Placement
from .layout import GridLayout, TokenLayout

GridSize = tuple[int, int]
Undo = Callable[[], None]


class CallState(Protocol):
    """What an adapter's hooks may read of the patch state laco keeps for an encoder: the layout of the current
    (or last) forward call's input, so a hook on a module around the encoder follows the same token order."""

    input_layout: TokenLayout | None


@dataclass(frozen=True)
class MlpParts:
    """A pre-norm ViT MLP ``x + scale * fc2(act(fc1(norm(x))))``; ``scale`` is layer scale, if any."""

    norm: nn.Module
    fc1: nn.Linear
    fc2: nn.Linear
    scale: torch.Tensor | None = None


@dataclass(frozen=True)
class AttentionParts:
    """A pre-norm ViT self-attention ``x + scale * out(softmax(q k^T * scaling) v)`` on ``norm(x)``, with
    ``num_heads`` heads; ``q``, ``k``, ``v`` are separate Linears or one fused ``qkv`` Linear (q, k, v stacked along
    its outputs, Qwen-VL's layout). ``scale`` is layer scale, if any; ``scaling`` is the softmax scale (default
    ``head_dim ** -0.5``). For a window-attention merge initialised from the block (``method="laco-window"``)."""

    norm: nn.Module
    out: nn.Linear
    num_heads: int
    q: nn.Linear | None = None
    k: nn.Linear | None = None
    v: nn.Linear | None = None
    qkv: nn.Linear | None = None
    scale: torch.Tensor | None = None
    scaling: float | None = None


def _pair(value) -> GridSize:
    if isinstance(value, (tuple, list)):
        return int(value[0]), int(value[1])
    return int(value), int(value)


class EncoderAdapter:
    """Describes one encoder family. Subclasses set :attr:`model_classes` and :attr:`blocks_path` and register with
    :func:`~laco.adapters.registry.register_adapter`; the defaults describe a batched ViT (``pixel_values`` of shape ``(B, 3, H, W)``, prefix tokens, a row-major grid)."""

    family: str = "generic"
    model_classes: tuple[type[nn.Module], ...] = ()
    blocks_path: str = ""
    rewrites_block_inputs: bool = False
    """Whether blocks after a merge need other arguments than the encoder computed (packed layouts: their
    attention segments and rotary embeddings); laco then puts a forward pre-hook on each of them."""

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        return model.get_submodule(self.blocks_path)

    def num_prefix_tokens(self, model: nn.Module) -> int:
        return 0

    def patch_size(self, model: nn.Module) -> GridSize:
        return _pair(model.config.patch_size)

    def hidden_size(self, model: nn.Module) -> int:
        return int(model.config.hidden_size)

    def default_image_size(self, model: nn.Module) -> GridSize:
        return _pair(model.config.image_size)

    def grid(self, model: nn.Module, pixel_values: torch.Tensor) -> GridSize:
        """The patch grid a batch of images produces (convolutional patch embedding: floor division)."""
        patch_h, patch_w = self.patch_size(model)
        return pixel_values.shape[-2] // patch_h, pixel_values.shape[-1] // patch_w

    def grid_for_image_size(self, model: nn.Module, image_size: int | GridSize) -> GridSize:
        (height, width), (patch_h, patch_w) = _pair(image_size), self.patch_size(model)
        if height < patch_h or width < patch_w:
            raise ValueError(
                f"image size {height}x{width} is smaller than one {patch_h}x{patch_w} patch; pass the size in pixels."
            )
        return height // patch_h, width // patch_w

    def mlp_parts(self, block: nn.Module) -> MlpParts | None:
        """The block's MLP, for ``init="layer"``; ``None`` where it is not a plain two-Linear MLP."""
        return None

    def attention_parts(self, block: nn.Module) -> AttentionParts | None:
        """The block's self-attention, for a window-attention merge initialised from it; ``None`` where it is not a
        plain pre-norm multi-head attention."""
        return None

    # -- token layout ------------------------------------------------------------------------------------------

    def layout(self, model: nn.Module, args: tuple, kwargs: dict[str, Any], placement: Placement) -> TokenLayout | None:
        """The layout of the tokens one call of ``model(*args, **kwargs)`` makes under ``placement``, or ``None``
        when the inputs do not tell (``inputs_embeds``, blocks called directly): then :meth:`fallback_layout` is
        asked."""
        if kwargs.get("attention_mask") is not None:
            raise ValueError(
                "a laco-compressed encoder cannot take an attention_mask over its input tokens: the mask no "
                "longer matches after the merge. Call it without attention_mask."
            )
        pixel_values = args[0] if args else kwargs.get("pixel_values")
        if isinstance(pixel_values, torch.Tensor) and pixel_values.dim() == 4:
            return GridLayout(self.grid(model, pixel_values), self.num_prefix_tokens(model))
        return None

    def fallback_layout(self, model: nn.Module, hidden: torch.Tensor, where: str) -> TokenLayout:
        """A layout inferred from the hidden states alone (a square grid), for calls :meth:`layout` cannot read."""
        return GridLayout.square(hidden.shape[1], self.num_prefix_tokens(model), where)

    def layout_for_image_size(
        self, model: nn.Module, placement: Placement, image_size: int | GridSize | None = None
    ) -> TokenLayout:
        """The input layout of one image of ``image_size`` (default: the model's own) for an encoder compressed
        under ``placement`` (``Placement()``: not compressed), for counting tokens."""
        size = self.default_image_size(model) if image_size is None else image_size
        return GridLayout(self.grid_for_image_size(model, size), self.num_prefix_tokens(model))

    # -- modes and what changes around the encoder ---------------------------------------------------------------

    def resolve_mode(self, model: nn.Module, placement: Placement) -> str:
        """The concrete mode of ``placement`` for ``model``; encoders without a post-encoder merge only add one."""
        if placement.mode == KEEP:
            raise ValueError(
                f"mode={KEEP!r} moves a model's own post-encoder compression inside the encoder, and a "
                f"{self.family} encoder has none; use mode={MORE!r} (or 'auto')."
            )
        return MORE

    def install(self, model: nn.Module, placement: Placement, state: CallState) -> list[Undo]:
        """Change what must change around the encoder for ``placement`` (e.g. replace a post-encoder merger);
        hooks it adds may read ``state`` during a call. Returns the callables that undo it, run in reverse order by
        :func:`laco.remove`."""
        return []


class GenericAdapter(EncoderAdapter):
    """Any ViT whose blocks sit in an ``nn.ModuleList`` or ``nn.Sequential`` (timm's ``VisionTransformer.blocks``),
    described by the caller (``laco.apply(model, ..., blocks=...)``; never registered).

    Args:
        blocks: the container of blocks, or its dotted path inside the model (``"blocks"``, ``"encoder.layer"``).
        num_prefix_tokens: CLS/register tokens that lead the sequence (timm's ``num_prefix_tokens``).
        patch_size: patch size, to compute the grid from ``pixel_values``.
        grid: a fixed grid ``(H, W)`` instead, or a callable ``pixel_values -> (H, W)``.
        hidden_size: token width; read from ``model.config`` or ``model.embed_dim`` when omitted.
    """

    family = "generic"

    def __init__(
        self,
        blocks: nn.ModuleList | nn.Sequential | str,
        *,
        num_prefix_tokens: int = 0,
        patch_size: int | GridSize | None = None,
        grid: GridSize | Callable[[torch.Tensor], GridSize] | None = None,
        hidden_size: int | None = None,
    ) -> None:
        if patch_size is None and grid is None:
            raise ValueError("a generic encoder needs patch_size= or grid= so laco can lay tokens on their grid.")
        if num_prefix_tokens < 0:
            raise ValueError(f"num_prefix_tokens must be >= 0, got {num_prefix_tokens}.")
        self._blocks = blocks
        self._num_prefix_tokens = num_prefix_tokens
        self._patch_size = None if patch_size is None else _pair(patch_size)
        self._grid = grid
        self._hidden_size = hidden_size

    def blocks(self, model: nn.Module) -> nn.ModuleList | nn.Sequential:
        blocks = model.get_submodule(self._blocks) if isinstance(self._blocks, str) else self._blocks
        if not isinstance(blocks, (nn.ModuleList, nn.Sequential)):
            raise ValueError(
                f"blocks must be an nn.ModuleList or nn.Sequential of transformer blocks, got {type(blocks).__name__}."
            )
        return blocks

    def num_prefix_tokens(self, model: nn.Module) -> int:
        return self._num_prefix_tokens

    def patch_size(self, model: nn.Module) -> GridSize:
        if self._patch_size is None:
            raise ValueError("this generic encoder was described by grid=, not patch_size=.")
        return self._patch_size

    def hidden_size(self, model: nn.Module) -> int:
        if self._hidden_size is not None:
            return self._hidden_size
        config = getattr(model, "config", None)
        for source, name in ((config, "hidden_size"), (model, "embed_dim"), (model, "num_features")):
            if source is not None and isinstance(getattr(source, name, None), int):
                return getattr(source, name)
        # Pre-norm and post-norm blocks alike normalise over the token width.
        first_block = self.blocks(model)[0]
        norm = next((m for m in first_block.modules() if isinstance(m, (nn.LayerNorm, nn.RMSNorm))), None)
        if norm is not None and len(norm.normalized_shape) == 1:
            return int(norm.normalized_shape[0])
        raise ValueError("cannot infer the token width of this encoder; pass hidden_size= to laco.apply.")

    def default_image_size(self, model: nn.Module) -> GridSize:
        config = getattr(model, "config", None)
        if config is None or not hasattr(config, "image_size"):
            raise ValueError("this encoder has no config.image_size; pass image_size explicitly.")
        return _pair(config.image_size)

    def grid(self, model: nn.Module, pixel_values: torch.Tensor) -> GridSize:
        if callable(self._grid):
            return _pair(self._grid(pixel_values))
        if self._grid is not None:
            return _pair(self._grid)
        return super().grid(model, pixel_values)

    def grid_for_image_size(self, model: nn.Module, image_size: int | GridSize) -> GridSize:
        if self._grid is not None and not callable(self._grid):
            return _pair(self._grid)
        return super().grid_for_image_size(model, image_size)
