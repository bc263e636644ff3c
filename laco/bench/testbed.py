"""The model of a run, and what each built-in measurement times on it, as ``(prepare, call)`` for one variant.

One model serves every variant (see :mod:`laco.bench.models` for why); ``prepare`` runs untimed before every call
and moves the model to the variant's placement (and sets up a fresh cache). The workloads:

* encoder: the vision tower's forward (inference mode);
* train: a stage-2 training step of the MLLM, everything trainable: forward, the loss ``laco train`` uses
  (:func:`laco.mllm.loss.answer_loss`: the LM head projects the answer tokens only), backward, AdamW step, zero
  grad;
* prefill: time to first token: forward over image + prompt with an empty KV cache, logits of the last token,
  greedy first token;
* decode: ``answer_tokens`` greedy single-token steps with the KV cache left by the prefill.

Calls that run the LLM report the time inside its decoder layers (``stack_*``), which ``--llm-layers`` scales.
"""

from __future__ import annotations

import copy
from functools import partial
from typing import Any

import torch
from torch import nn

from .. import patch as laco_patch
from ..cost import training_activation_bytes
from ..measure import machine
from ..measure.timing import Clock, StackTimer
from ..mllm.loss import answer_loss
from ..placement import Placement
from .measurements import Measurement, Workload
from .models import CompressionSwitch, compile_blocks, decoder_layers, random_encoder, random_mllm
from .presets import BenchPreset
from .settings import OPTIMIZER_LR, ResolvedSettings
from .variants import BenchVariant


class Inputs:
    """Fixed random pixels and token ids; image placeholders first, then prompt, then answer."""

    def __init__(self, preset: BenchPreset, batch: int, device: torch.device, dtype: torch.dtype, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        size = preset.resolution
        self.pixel_values = torch.randn(batch, preset.encoder.channels, size, size, generator=generator).to(
            device, dtype
        )
        self.batch, self.device = batch, device
        vocab = preset.llm.vocab if preset.llm is not None else 2
        self.image_token = vocab - 1
        text = preset.prompt_tokens + preset.answer_tokens
        self.text = torch.randint(0, vocab - 1, (batch, text), generator=generator)
        self.prompt_tokens, self.answer_tokens = preset.prompt_tokens, preset.answer_tokens

    def ids(self, image_tokens: int, with_answer: bool) -> torch.Tensor:
        text = self.text if with_answer else self.text[:, : self.prompt_tokens]
        image = torch.full((self.batch, image_tokens), self.image_token, dtype=torch.long)
        return torch.cat([image, text], dim=1).to(self.device)

    def labels(self, ids: torch.Tensor) -> torch.Tensor:
        labels = ids.clone()
        labels[:, : ids.shape[1] - self.answer_tokens] = -100  # only the answer is learned, as in LLaVA's SFT
        return labels


class Testbed:
    """The built model (an encoder, or an MLLM with its vision tower) switched between the variants' placements.

    ``stack`` times the LLM's decoder layers (``None`` for an encoder alone); ``prefill_cache`` keeps each
    variant's prefill, which its decode steps start from.
    """

    def __init__(self, settings: ResolvedSettings) -> None:
        self.settings = settings
        self.preset, self.device, self.dtype = settings.preset, settings.device, settings.dtype
        self.clock = Clock(self.device)
        torch.set_num_threads(settings.threads)
        seed = settings.requested.seed
        self.inputs = Inputs(self.preset, settings.batch, self.device, self.dtype, seed)
        self.stack: StackTimer | None = None
        if self.preset.llm is None:
            self.model = random_encoder(self.preset.encoder, dtype=self.dtype, device=self.device, seed=seed)
            self.tower = self.model
        else:
            built = {"llm_layers": settings.llm_layers, "dtype": self.dtype, "device": self.device, "seed": seed}
            self.model = random_mllm(self.preset.encoder, self.preset.llm, **built)
            self.tower = self.model.model.vision_tower
            self.stack = StackTimer(decoder_layers(self.model), self.clock).attach()
        self.switch = CompressionSwitch(self.tower)
        if settings.requested.compile:
            compile_blocks(
                [*self.switch.adapter.blocks(self.switch.encoder), *(self.stack.layers if self.stack else ())]
            )
        self._optimizers: dict[str, torch.optim.Optimizer] = {}
        if any(spec.training for spec in settings.measurements):
            # Before any placement is active, so no compressor lands in the shared optimizers.
            stack_params = list(decoder_layers(self.model).parameters())
            stack_ids = {id(p) for p in stack_params}
            rest = [p for p in self.model.parameters() if id(p) not in stack_ids]
            self._optimizers = {"rest": self._optimizer(rest), "stack": self._optimizer(stack_params)}
        self._variant_optimizers: dict[Placement, torch.optim.Optimizer | None] = {}
        self.prefill_cache: dict[str, Any] = {}

    def activate(self, variant: BenchVariant) -> list[nn.Module]:
        """Compress as ``variant`` says; returns its compressor modules."""
        return self.switch.activate(variant.placement)

    def image_tokens(self, variant: BenchVariant) -> int:
        """Visual tokens the model puts into its LLM (or its encoder outputs) under ``variant``'s placement."""
        self.activate(variant)
        if self.preset.llm is None:
            return laco_patch.num_tokens(self.tower, self.preset.resolution)
        return self.model.num_image_tokens(self.preset.resolution)

    def _optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        fused = self.device.type in ("cpu", "cuda")
        return torch.optim.AdamW(params, lr=OPTIMIZER_LR, weight_decay=0.0, fused=fused)

    def optimizers(
        self, variant: BenchVariant
    ) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer, torch.optim.Optimizer | None]:
        """(rest of the model, LLM decoder stack, this placement's compressors), so the stack's share of the
        optimizer step can be scaled with ``--llm-layers``."""
        if variant.placement not in self._variant_optimizers:
            params = [p for module in self.activate(variant) for p in module.parameters()]
            self._variant_optimizers[variant.placement] = self._optimizer(params) if params else None
        return self._optimizers["rest"], self._optimizers["stack"], self._variant_optimizers[variant.placement]

    def check_training_memory(self) -> None:
        """Refuse a training step that cannot fit, before spending minutes to find out (on a CPU the OS would
        kill the process without a Python error)."""
        settings = self.settings
        params = sum(p.numel() for p in self.model.parameters())
        element = torch.tensor([], dtype=self.dtype).element_size()
        state = params * element * 4  # weights, gradients, AdamW's two moments
        activations = training_activation_bytes(  # the uncompressed variant: the largest
            self.preset.encoder, settings.built_llm, None, element_bytes=element, **settings.cost_inputs
        )
        free = machine.available_memory_bytes(self.device)
        available = None if free is None else free + params * element  # the weights are already allocated
        if available is not None and state + activations > 0.9 * available:
            raise MemoryError(
                f"a training step of {params / 1e9:.2f}B parameters in {self.dtype} at batch {settings.batch} needs "
                f"~{(state + activations) / 2**30:.1f} GiB ({state / 2**30:.1f} for weights, gradients and AdamW "
                f"state, ~{activations / 2**30:.1f} for the uncompressed model's activations), but "
                f"~{available / 2**30:.1f} GiB is available. Use a smaller --batch, time fewer LLM layers "
                "(--llm-layers), use --dtype bfloat16, or leave train out of --measure."
            )

    # ------------------------------------------------------------------------------------------------------------
    # Workloads

    def workload(self, spec: Measurement, variant: BenchVariant) -> Workload:
        """``(prepare, call)`` of ``spec`` for ``variant``."""
        if isinstance(spec.workload, str):
            return getattr(self, spec.workload)(variant)
        return spec.workload(self, variant)

    def encoder_forward(self, variant: BenchVariant) -> Workload:
        pixel_values = self.inputs.pixel_values

        def call() -> None:
            with torch.inference_mode():
                self.tower(pixel_values=pixel_values)

        return partial(self.activate, variant), call

    def train_step(self, variant: BenchVariant) -> Workload:
        ids = self.inputs.ids(self.image_tokens(variant), with_answer=True)
        batch = {"input_ids": ids, "pixel_values": self.inputs.pixel_values, "labels": self.inputs.labels(ids)}
        model, clock, stack = self.model, self.clock, self.stack

        def call() -> dict[str, float]:
            rest, stack_optimizer, own = self.optimizers(variant)
            stack.reset()
            t0 = clock.mark()
            loss, _ = answer_loss(model, batch)
            t1 = clock.mark()
            loss.backward()
            t2 = clock.mark()
            rest.step()
            if own is not None:
                own.step()
            t3 = clock.mark()
            stack_optimizer.step()
            t4 = clock.mark()
            model.zero_grad(set_to_none=True)
            t5 = clock.mark()
            return {
                "forward": clock.seconds(t0, t1),
                "backward": clock.seconds(t1, t2),
                "optimizer": clock.seconds(t2, t5),
                "stack_forward": stack.forward_seconds(),
                "stack_backward": stack.backward_seconds(),
                "stack_optimizer": clock.seconds(t3, t4),
            }

        return partial(self.activate, variant), call

    def _new_cache(self):
        from transformers import DynamicCache

        return DynamicCache(config=self.model.config.text_config)

    def _first_token(self, ids: torch.Tensor, cache) -> torch.Tensor:
        """Prefill ``cache`` with image + prompt and pick the first answer token greedily (logits of the last only)."""
        out = self.model(
            input_ids=ids, pixel_values=self.inputs.pixel_values, cache=cache, use_cache=True, logits_to_keep=1
        )
        return out.logits[:, -1:].argmax(-1)

    def prefill(self, variant: BenchVariant) -> Workload:
        ids = self.inputs.ids(self.image_tokens(variant), with_answer=False)
        state: dict[str, Any] = {}

        def prepare() -> None:
            self.activate(variant)
            state["cache"] = self._new_cache()

        def call() -> dict[str, float]:
            self.stack.reset()
            with torch.inference_mode():
                self._first_token(ids, state["cache"])
            return {"stack_forward": self.stack.forward_seconds()}

        return prepare, call

    def decode(self, variant: BenchVariant) -> Workload:
        steps = self.inputs.answer_tokens
        state: dict[str, Any] = {}

        def prepare() -> None:
            self.activate(variant)
            if variant.name not in self.prefill_cache:  # the first token and the KV cache after the prompt, untimed
                ids, cache = self.inputs.ids(self.image_tokens(variant), with_answer=False), self._new_cache()
                with torch.inference_mode():
                    self.prefill_cache[variant.name] = self._first_token(ids, cache), cache
            token, cache = self.prefill_cache[variant.name]
            state["token"], state["cache"] = token, copy.deepcopy(cache)  # every round decodes from the same prefix

        def call() -> dict[str, float]:
            self.stack.reset()
            token, cache = state["token"], state["cache"]
            with torch.inference_mode():
                for _ in range(steps):
                    out = self.model(input_ids=token, cache=cache, use_cache=True)
                    token = out.logits[:, -1:].argmax(-1)
            return {"stack_forward": self.stack.forward_seconds()}

        return prepare, call
