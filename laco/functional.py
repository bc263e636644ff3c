"""Pure tensor operators on token sequences laid out on a 2-D grid.

Every function here takes tokens as ``(batch, H * W, channels)`` in row-major grid order (the order a ViT's
patch embedding produces) together with the grid ``size = (H, W)``. Nothing here owns parameters or state,
so each operator can be tested, compiled and reused on its own.

Channel layout of a merged token is *token-major* ``(dy, dx, c)``: output token ``(i, j)`` is the
concatenation of input tokens ``(f*i + dy, f*j + dx)`` for ``dy, dx`` in row-major order. This is the layout
of InternVL's ``pixel_shuffle`` (ps_version v2) and of Qwen2-VL's ``PatchMerger``, so learned weights are
interchangeable with theirs. ``torch.nn.functional.pixel_unshuffle`` is channel-major ``(c, dy, dx)`` and is
*not* interchangeable without a permutation.

Grids that the factor does not divide (SigLIP-so400m/14 at 384 px has a 27 x 27 grid) follow a ``pad``
policy:

* ``"zero"`` (default): zero-pad on the bottom and right to the next multiple of the factor. Learned
  branches see zeros in the missing slots; the average-pooling shortcut divides by the number of *real*
  tokens in each block, so border tokens are never dragged toward zero.
* ``"error"``: raise a ``ValueError`` that names the grid, the factor and the fix.
"""

from __future__ import annotations

from typing import Literal

import torch

PadPolicy = Literal["zero", "error"]
PAD_POLICIES: tuple[str, ...] = ("zero", "error")
GridSize = tuple[int, int]


def merged_size(size: GridSize, factor: int) -> GridSize:
    """Grid size after merging ``factor x factor`` blocks, rounding up (padding covers the remainder)."""
    height, width = size
    return (-(-height // factor), -(-width // factor))


def check_factor(factor: int) -> None:
    if not isinstance(factor, int) or isinstance(factor, bool) or factor < 2:
        raise ValueError(f"factor must be an integer >= 2 (got {factor!r}); use factor=2 for 2x2 merging.")


def check_tokens(x: torch.Tensor, size: GridSize) -> None:
    """Validate that ``x`` is ``(B, H*W, C)`` for ``size = (H, W)``, with an error that says what to fix."""
    if x.dim() != 3:
        raise ValueError(
            f"expected tokens of shape (batch, H*W, channels), got a {x.dim()}-D tensor of shape "
            f"{tuple(x.shape)}; flatten the grid into one token axis first."
        )
    if len(size) != 2 or any(int(s) < 1 for s in size):
        raise ValueError(f"grid size must be (H, W) with H, W >= 1, got {size!r}.")
    height, width = size
    if x.shape[1] != height * width:
        raise ValueError(
            f"token count {x.shape[1]} does not match grid {height}x{width} = {height * width}; "
            "pass the grid the tokens were laid out on (prefix tokens such as CLS must be split off first)."
        )


def _padding(size: GridSize, factor: int, pad: PadPolicy) -> tuple[int, int]:
    if pad not in PAD_POLICIES:
        raise ValueError(f"unknown pad policy {pad!r}; choose one of {PAD_POLICIES}.")
    height, width = size
    pad_h, pad_w = (-height) % factor, (-width) % factor
    if (pad_h or pad_w) and pad == "error":
        raise ValueError(
            f"grid {height}x{width} is not divisible by factor {factor}; use pad='zero' to pad it to "
            f"{height + pad_h}x{width + pad_w}, or choose an image size whose patch grid is a multiple of {factor}."
        )
    return pad_h, pad_w


def space_to_channel(
    x: torch.Tensor, size: GridSize, factor: int = 2, pad: PadPolicy = "zero"
) -> tuple[torch.Tensor, GridSize]:
    """Merge each ``factor x factor`` block of tokens into one token of ``factor**2 * C`` channels.

    ``(B, H*W, C)`` -> ``(B, ceil(H/f) * ceil(W/f), f*f*C)`` in token-major ``(dy, dx, c)`` order; returns the
    merged tokens and the merged grid size. Without padding this is a view plus one permute/copy.
    """
    check_factor(factor)
    check_tokens(x, size)
    batch, _, channels = x.shape
    height, width = size
    pad_h, pad_w = _padding(size, factor, pad)
    grid = x.reshape(batch, height, width, channels)
    if pad_h or pad_w:
        grid = torch.nn.functional.pad(grid, (0, 0, 0, pad_w, 0, pad_h))
    out_h, out_w = (height + pad_h) // factor, (width + pad_w) // factor
    grid = grid.reshape(batch, out_h, factor, out_w, factor, channels)
    merged = grid.permute(0, 1, 3, 2, 4, 5).reshape(batch, out_h * out_w, factor * factor * channels)
    return merged, (out_h, out_w)


def channel_to_space(
    x: torch.Tensor, size: GridSize, factor: int = 2, out_size: GridSize | None = None
) -> tuple[torch.Tensor, GridSize]:
    """Inverse of :func:`space_to_channel`: ``(B, h*w, f*f*C)`` on grid ``size = (h, w)`` -> ``(B, H*W, C)``.

    ``out_size`` crops the padding that :func:`space_to_channel` added (defaults to ``(f*h, f*w)``).
    """
    check_factor(factor)
    check_tokens(x, size)
    batch, _, merged_channels = x.shape
    if merged_channels % (factor * factor):
        raise ValueError(
            f"channel count {merged_channels} is not a multiple of factor**2 = {factor * factor}; "
            "was this tensor produced by space_to_channel with the same factor?"
        )
    channels = merged_channels // (factor * factor)
    height, width = size
    grid = x.reshape(batch, height, width, factor, factor, channels).permute(0, 1, 3, 2, 4, 5)
    grid = grid.reshape(batch, height * factor, width * factor, channels)
    full = (height * factor, width * factor)
    out_h, out_w = full if out_size is None else out_size
    if not (full[0] - factor < out_h <= full[0] and full[1] - factor < out_w <= full[1]):
        raise ValueError(f"out_size {out_size} cannot come from merged grid {size} with factor {factor}.")
    grid = grid[:, :out_h, :out_w]
    return grid.reshape(batch, out_h * out_w, channels), (out_h, out_w)


def real_token_counts(size: GridSize, factor: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """How many real (unpadded) input tokens each merged token covers, as ``(h*w, 1)``.

    Interior blocks cover ``factor**2`` tokens; blocks on the bottom/right border of a padded grid cover fewer.
    """
    height, width = size
    out_h, out_w = merged_size(size, factor)
    rows = (height - factor * torch.arange(out_h, device=device)).clamp(max=factor)
    cols = (width - factor * torch.arange(out_w, device=device)).clamp(max=factor)
    return (rows[:, None] * cols[None, :]).reshape(-1, 1).to(dtype)


def channel_average(merged: torch.Tensor, factor: int = 2, size: GridSize | None = None) -> torch.Tensor:
    """Average the ``factor**2`` channel groups of merged tokens: ``(B, N, f*f*C)`` -> ``(B, N, C)``.

    Applied to :func:`space_to_channel`'s output this is ``factor x factor`` average pooling: the
    non-parametric LaCo shortcut. Pass the *original* (unpadded) grid ``size`` when the merge padded, so
    border tokens are averaged over their real tokens only.
    """
    check_factor(factor)
    batch, tokens, merged_channels = merged.shape
    groups = factor * factor
    if merged_channels % groups:
        raise ValueError(f"channel count {merged_channels} is not a multiple of factor**2 = {groups}.")
    summed = merged.reshape(batch, tokens, groups, merged_channels // groups).sum(dim=2)
    if size is None or size[0] % factor == 0 and size[1] % factor == 0:
        return summed / groups
    counts = real_token_counts(size, factor, device=merged.device, dtype=merged.dtype)
    if counts.shape[0] != tokens:
        raise ValueError(f"grid {size} with factor {factor} gives {counts.shape[0]} merged tokens, not {tokens}.")
    return summed / counts


def avg_pool_tokens(
    x: torch.Tensor, size: GridSize, factor: int = 2, pad: PadPolicy = "zero"
) -> tuple[torch.Tensor, GridSize]:
    """``factor x factor`` average pooling of grid tokens, counting only real tokens on padded borders."""
    merged, new_size = space_to_channel(x, size, factor, pad)
    return channel_average(merged, factor, size), new_size


def tokens_to_image(x: torch.Tensor, size: GridSize) -> torch.Tensor:
    """``(B, H*W, C)`` -> ``(B, C, H, W)`` for convolutional operators."""
    check_tokens(x, size)
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], size[0], size[1])


def image_to_tokens(x: torch.Tensor) -> tuple[torch.Tensor, GridSize]:
    """``(B, C, H, W)`` -> ``(B, H*W, C)`` and the grid size."""
    return x.flatten(2).transpose(1, 2), (x.shape[2], x.shape[3])


def split_prefix(x: torch.Tensor, num_prefix_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split CLS/register tokens (which lead the sequence) from the grid tokens."""
    return x[:, :num_prefix_tokens], x[:, num_prefix_tokens:]


def real_slots(size: GridSize, factor: int, device=None) -> torch.Tensor:
    """Which slots of each merged token hold a real (unpadded) input token: ``(h*w, factor**2)`` booleans in the
    slot order of :func:`space_to_channel` (``(dy, dx)`` row-major). All true when ``factor`` divides the grid."""
    height, width = size
    out_h, out_w = merged_size(size, factor)
    rows = torch.arange(out_h * factor, device=device) < height
    cols = torch.arange(out_w * factor, device=device) < width
    grid = (rows[:, None] & cols[None, :]).reshape(out_h, factor, out_w, factor)
    return grid.permute(0, 2, 1, 3).reshape(out_h * out_w, factor * factor)


def nearest_real_slots(size: GridSize, factor: int, device=None) -> torch.Tensor:
    """For each merged token, which slot each of its slots reads: itself if real, else the nearest real slot of the
    same window (padding is bottom/right, so the real slots are the window's top-left rectangle). ``(h*w,
    factor**2)`` indices. For ``factor=2`` every real token of a window then appears equally often, so a mean over
    the slots is the mean over the real tokens."""
    height, width = size
    out_h, out_w = merged_size(size, factor)
    steps = torch.arange(factor, device=device)
    real_rows = (height - factor * torch.arange(out_h, device=device)).clamp(max=factor)
    real_cols = (width - factor * torch.arange(out_w, device=device)).clamp(max=factor)
    rows = torch.minimum(steps[None, :], real_rows[:, None] - 1)  # (out_h, factor)
    cols = torch.minimum(steps[None, :], real_cols[:, None] - 1)  # (out_w, factor)
    slots = rows[:, None, :, None] * factor + cols[None, :, None, :]
    return slots.reshape(out_h * out_w, factor * factor)
