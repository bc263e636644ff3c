"""Train a compressor inside a frozen pretrained encoder against an attention probe, cheaply.

The encoder layers *before* the first compression are frozen and see the same images in every variant and seed,
so their outputs are computed once per task (:func:`prefix_features`) and reused. A study cell then runs only what
differs: the compressor(s), the frozen layers after the merge (gradients flow through them to the compressor), the
encoder's final norm and a small attention probe that reads every remaining patch token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from .. import functional as F
from ..adapters import resolve_encoder
from ..patch import build_compressor_for_block
from ..placement import Placement
from ..pretrained import preprocess_images


@torch.no_grad()
def prefix_features(
    encoder: nn.Module,
    images: np.ndarray,
    layers: list[int],
    image_size: int,
    batch_size: int = 64,
    progress: bool = True,
) -> dict[int, torch.Tensor]:
    """Outputs of blocks ``layers`` (1-based; 0 is the embedding output) for ``images``, stored in bfloat16."""
    encoder.eval()
    outputs: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    for start in tqdm(range(0, len(images), batch_size), desc="encoder prefix", unit="batch", disable=not progress):
        batch = [Image.fromarray(image) for image in images[start : start + batch_size]]
        hidden = encoder(preprocess_images(batch, image_size), output_hidden_states=True).hidden_states
        for layer in layers:
            outputs[layer].append(hidden[layer].to(torch.bfloat16))
    return {layer: torch.cat(chunks) for layer, chunks in outputs.items()}


class AttentionProbe(nn.Module):
    """One learned query attending over all tokens, then a linear classifier (keeps spatial information usable)."""

    def __init__(self, dim: int, num_classes: int, num_heads: int = 4) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        self.attention = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.query, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        pooled, _ = self.attention(self.query.expand(tokens.shape[0], -1, -1), tokens, tokens, need_weights=False)
        return self.head(self.norm(pooled[:, 0]))


class CompressedSuffix(nn.Module):
    """Compressors + the frozen encoder after the first merge + final norm + attention probe."""

    def __init__(self, encoder: nn.Module, placement: Placement, num_classes: int, grid: tuple[int, int]) -> None:
        super().__init__()
        encoder, self.adapter = resolve_encoder(encoder)
        blocks = self.adapter.blocks(encoder)
        self.depth = len(blocks)
        self.prefix = self.adapter.num_prefix_tokens(encoder)
        self.placement = placement.resolve(self.depth)
        self.input_grid = grid
        dim = self.adapter.hidden_size(encoder)
        self.compressors = nn.ModuleDict(
            {
                str(k): build_compressor_for_block(self.placement, dim, self.adapter, blocks[k - 1])
                for k in self.placement.layers
            }
        )
        # frozen parts are referenced, not copied: they are shared by every cell of a study
        self._frozen = {"blocks": blocks, "norm": _final_norm(encoder)}
        self.probe = AttentionProbe(dim, num_classes)

    def forward(self, cached: torch.Tensor) -> torch.Tensor:
        """``cached`` is the output of block :func:`start_layer`."""
        x = cached.float()
        grid = self.input_grid
        start = start_layer(self.placement, self.depth)
        blocks = self._frozen["blocks"]
        for layer in range(start, self.depth + 1):
            if str(layer) in self.compressors:
                prefix, tokens = F.split_prefix(x, self.prefix)
                tokens, grid = self.compressors[str(layer)](tokens, grid)
                x = torch.cat([prefix, tokens], dim=1)
            if layer < self.depth:
                x = blocks[layer](x)
        x = self._frozen["norm"](x)
        return self.probe(x[:, self.prefix :])


def start_layer(placement: Placement, depth: int) -> int:
    """The block whose (cached) output a cell starts from: the first merge's, or the last block's without one."""
    return placement.layers[0] if placement.compressed else depth


def _final_norm(encoder: nn.Module) -> nn.Module:
    for name in ("layernorm", "post_layernorm", "rms_norm"):
        module = getattr(encoder, name, None)
        if isinstance(module, nn.Module):
            return module
    return nn.Identity()


@dataclass
class CellResult:
    accuracy: float
    train_loss: float
    seconds: float
    trainable_parameters: int


def train_cell(
    model: CompressedSuffix,
    train_inputs: torch.Tensor,
    train_labels: torch.Tensor,
    test_inputs: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    steps: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    precision: str = "bf16",
    progress: bool = False,
) -> CellResult:
    """Train compressor + probe for ``steps`` (AdamW, cosine decay), then score test accuracy.

    ``precision`` (``bf16`` or ``fp32``) is the autocast the cell computes in; parameters stay float32.
    """
    import time

    if precision not in ("bf16", "fp32"):
        raise ValueError(f"a study cell computes in bf16 or fp32, not {precision!r}.")
    reduced = precision == "bf16"
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    started = time.perf_counter()
    model.train()
    losses = []
    order = torch.empty(0, dtype=torch.long)
    for _ in tqdm(range(steps), desc="cell", leave=False, disable=not progress):
        if len(order) < batch_size:
            order = torch.cat([order, torch.randperm(len(train_labels), generator=generator)])
        index, order = order[:batch_size], order[batch_size:]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=reduced):
            logits = model(train_inputs[index])
        loss = nn.functional.cross_entropy(logits.float(), train_labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    model.eval()
    correct = 0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=reduced):
        for start in range(0, len(test_labels), 256):
            logits = model(test_inputs[start : start + 256])
            correct += (logits.argmax(-1) == test_labels[start : start + 256]).sum().item()
    return CellResult(
        accuracy=correct / len(test_labels),
        train_loss=float(np.mean(losses[-max(1, steps // 10) :])),
        seconds=round(time.perf_counter() - started, 2),
        trainable_parameters=sum(p.numel() for p in parameters),
    )
