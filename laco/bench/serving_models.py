"""What ``laco bench --engine vllm`` serves: the pair of random-weight checkpoints of a preset, their FLOPs, and the
vision tower timed alone in the serving environment.

Two kinds of preset, one pair each (LaCo first, then its baseline):

* a **batched** preset (LLaVA-OneVision geometry): laco's own LLaVA-style checkpoints, LaCo at ``depth`` against
  external compression (the same 2x2 merge after the last layer), both served by laco's vLLM plugin;
* a **packed** preset (Qwen2.5-VL / Qwen2-VL geometry): a stock ``Qwen2_5_VLForConditionalGeneration`` saved as a
  user has it, ``laco convert``-ed at ``depth`` in ``mode``, against the **stock model**. vLLM's own Qwen2.5-VL class
  cannot run where torchvision is missing (vLLM's CPU environment; ``docs/serving.md``), so the stock model is
  served by laco's class with the merge off (``baseline="laco-class"``: the same transformers tower and tensors,
  vLLM's Qwen2 LLM): the two variants then differ in the merge only. ``baseline="vllm"`` serves the unconverted
  checkpoint with vLLM's class instead, where torchvision exists.

Checkpoints are built in a child process, so the benchmark never holds a multi-GB model while its servers run.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..cost import llm_flops, mllm_flops
from ..cost.native import PackedEncoderGeometry, packed_encoder_flops, packed_mllm_flops
from ..placement import KEEP, Placement
from .presets import NativePreset, any_preset
from .variants import BenchVariant, build_variants, fraction_label

STOCK = "stock"
"""The baseline variant of a packed preset: the unconverted model."""
SOURCE_DIR = "source"
"""Where a packed preset's unconverted checkpoint is saved (beside the variants' folders)."""


@dataclass(frozen=True)
class ServedPair:
    """The two served variants of a run and what their requests look like."""

    variants: list[BenchVariant]  # LaCo first, then its baseline
    packed: bool
    image_size: int  # pixels per side of every request's image


def served_pair(preset_name: str, depth: str, mode: str, image_size: int | None, device: str) -> ServedPair:
    preset = any_preset(preset_name)
    if isinstance(preset, NativePreset):
        placement = Placement(depth, "laco", preset.encoder.merge, mode=mode).resolve(preset.encoder.layers)
        laco = BenchVariant(f"laco@{fraction_label(depth)}", placement, STOCK, "mode", mode == KEEP)
        size = image_size or (448 if device != "cpu" else 224)
        unit = preset.encoder.patch * preset.encoder.merge * (1 if mode == KEEP else preset.encoder.merge)
        if size % unit:
            raise ValueError(f"--image-size {size}: a {mode} request's image must be a multiple of {unit} px.")
        return ServedPair([laco, BenchVariant(STOCK, Placement(), None, "reference")], True, size)
    if mode != KEEP:
        raise ValueError(
            f"--mode {mode} is for Qwen-VL (packed) presets; {preset.name} compares LaCo with external compression."
        )
    if image_size not in (None, preset.resolution):
        raise ValueError(f"--image-size is for Qwen-VL presets; {preset.name} serves {preset.resolution} px images.")
    variants = build_variants(preset.encoder.layers, depths=(depth,), methods=("laco",), two_stage=None)
    return ServedPair([variants[2], variants[1]], False, preset.resolution)


# ----------------------------------------------------------------------------------------------------------------
# FLOPs


def flop_costs(preset_name: str, pair: ServedPair, llm_layers: int | None, prompt_tokens: int, output_tokens: int):
    """Per variant: FLOPs of the tower alone, of the prefill (tower + LLM, time to first token), of one decode step
    (the mean over ``output_tokens``) and of a whole request (prefill + decode)."""
    preset = any_preset(preset_name)
    llm = preset.llm if llm_layers is None else preset.llm.with_layers(llm_layers)
    costs = {}
    for variant in pair.variants:
        if pair.packed:
            kwargs = dict(images=[(pair.image_size, pair.image_size)], mode=variant.placement.mode or KEEP)
            tower = packed_encoder_flops(preset.encoder, variant.placement, **kwargs)
            prefill = packed_mllm_flops(preset.encoder, llm, variant.placement, prompt_tokens=prompt_tokens, **kwargs)
            context = tower.info["llm_tokens"][0] + prompt_tokens
            decode = sum(llm_flops(llm, 1, context=context + step, logits=1).total for step in range(output_tokens))
            tower_total, prefill_total = tower.total, prefill.total
        else:
            common = dict(prompt_tokens=prompt_tokens, answer_tokens=output_tokens)
            tower_total = mllm_flops(preset.encoder, llm, variant.placement, mode="encoder", **common).total
            prefill_total = mllm_flops(preset.encoder, llm, variant.placement, mode="prefill", **common).total
            decode = mllm_flops(preset.encoder, llm, variant.placement, mode="decode", **common).total
        costs[variant.name] = {
            "vit": tower_total,
            "prefill": prefill_total,
            "decode": decode / output_tokens,
            "request": prefill_total + decode,
        }
    return costs


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints


def build_in_child(job: dict[str, Any], name: str) -> None:
    """Build one checkpoint (or a packed preset's source and its conversions) in a child process."""
    code = f"from laco.bench.serving_models import build_job; build_job({json.dumps(job)!r})"
    if subprocess.run([sys.executable, "-c", code]).returncode != 0:
        raise RuntimeError(f"building the {name} checkpoint failed; see its output above.")


def build_job(job: str) -> None:
    data = json.loads(job)
    (_build_packed if data["packed"] else _build_llava)(data)


def _build_llava(data: dict[str, Any]) -> None:
    import torch

    from ..mllm import LacoProcessor
    from ..mllm.processing import ImageTransform
    from .models import random_mllm
    from .tokenizer import bench_tokenizer

    preset = any_preset(data["preset"])
    model = random_mllm(
        preset.encoder, preset.llm, llm_layers=data["llm_layers"], dtype=torch.float32, device=torch.device("cpu"),
        placement=Placement.from_dict(data["placement"]), seed=data["seed"],
    )  # fmt: skip
    processor = LacoProcessor(
        bench_tokenizer(), ImageTransform(preset.resolution, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)), system_prompt=""
    )
    processor.num_image_tokens = model.num_image_tokens(preset.resolution)
    model.config.image_token_index = processor.image_token_id  # the tokenizer's <image>, inside the vocabulary
    model.config.image_seq_length = processor.num_image_tokens
    model.save_pretrained(data["path"])
    processor.save_pretrained(data["path"])


def _build_packed(data: dict[str, Any]) -> None:
    """The stock model saved as a user has it (``source``), then the variant: converted by ``laco convert``, or
    (the stock variant served by laco's class) the source re-labelled with an uncompressed LaCo config."""
    from .tokenizer import qwen_processor

    path, source = Path(data["path"]), Path(data["source"])
    geometry: PackedEncoderGeometry = any_preset(data["preset"]).encoder
    processor = qwen_processor(geometry.family, geometry.patch, geometry.merge, data["image_size"])
    if not (source / "config.json").exists():
        _save_stock_qwen(data, source, processor)
    placement = Placement.from_dict(data["placement"])
    if placement.compressed:
        from ..convert import convert

        convert(source, path, placement, processor=processor, overwrite=True)
    elif data["baseline"] == "laco-class":
        _uncompressed_laco_copy(source, path)


def _save_stock_qwen(data: dict[str, Any], directory: Path, processor: Any) -> None:
    import torch
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
    )

    from .native import tower_config

    preset = any_preset(data["preset"])
    geometry: PackedEncoderGeometry = preset.encoder
    llm = preset.llm if data["llm_layers"] is None else preset.llm.with_layers(data["llm_layers"])
    tokens = {name: processor.tokenizer.convert_tokens_to_ids(token) for name, token in _QWEN_TOKENS.items()}
    half = llm.dim_per_head // 2  # M-RoPE sections over (t, h, w), in Qwen2-VL's 1:1.5:1.5 ratio
    sections = [half // 4, half * 3 // 8, half - half // 4 - half * 3 // 8]
    text = dict(
        hidden_size=llm.width, num_hidden_layers=llm.layers, num_attention_heads=llm.heads,
        num_key_value_heads=llm.kv_heads, intermediate_size=llm.mlp, vocab_size=llm.vocab,
        tie_word_embeddings=llm.tied, max_position_embeddings=4096,
        bos_token_id=processor.tokenizer.eos_token_id, eos_token_id=processor.tokenizer.eos_token_id,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": sections},
    )  # fmt: skip
    config_class, model_class = (
        (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration)
        if geometry.family == "qwen2.5-vl"
        else (Qwen2VLConfig, Qwen2VLForConditionalGeneration)
    )
    config = config_class(
        text_config=text, vision_config=tower_config(geometry).to_dict(), tie_word_embeddings=llm.tied, **tokens
    )
    torch.manual_seed(data["seed"])
    model_class(config).eval().save_pretrained(directory)
    processor.save_pretrained(directory)


_QWEN_TOKENS = {
    "image_token_id": "<|image_pad|>",
    "video_token_id": "<|video_pad|>",
    "vision_start_token_id": "<|vision_start|>",
    "vision_end_token_id": "<|vision_end|>",
}


def _uncompressed_laco_copy(source: Path, path: Path) -> None:
    """``source`` as a LaCo checkpoint with no merge: the same tensors, the LaCo architecture and model type, and
    ``vision_config.laco: null``, so laco's vLLM class serves the stock tower (the processor counts as stock)."""
    from ..digests import write_digests
    from ..patch import CONFIG_ATTRIBUTE, LACO_TYPE_PREFIX

    if path.exists():
        shutil.rmtree(path)
    shutil.copytree(source, path, ignore=shutil.ignore_patterns("bench_*.json"))  # the source's own record
    config = json.loads((path / "config.json").read_text())
    family_type = config["model_type"]
    config["model_type"] = f"{LACO_TYPE_PREFIX}{family_type}"
    config["architectures"] = [f"Laco{name}" for name in config["architectures"]]
    config["vision_config"][CONFIG_ATTRIBUTE] = None
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    processor = json.loads((path / "processor_config.json").read_text())
    processor["processor_class"] = f"Laco{processor['processor_class']}"
    processor["laco_factor"] = 1
    (path / "processor_config.json").write_text(json.dumps(processor, indent=2) + "\n")
    write_digests(path)


# ----------------------------------------------------------------------------------------------------------------
# The tower alone


def tower_timing_job(
    preset: str, paths: dict[str, str], image_size: int, rounds: int, warmup: int, seed: int, dtype: str
) -> str:
    values = dict(preset=preset, paths=paths, image_size=image_size, rounds=rounds, warmup=warmup, seed=seed)
    return json.dumps({**values, "dtype": dtype})


def time_towers(job: str) -> None:
    """Run in the serving environment: each served checkpoint's vision tower, built as laco's vLLM class builds it
    (:func:`laco.serve.qwen_vllm.build_tower`) with the checkpoint's tensors, timed interleaved on one image of the
    requests' size; prints ``{variant: [seconds per round]}`` as the last line."""
    import torch
    from safetensors import safe_open
    from transformers import AutoConfig

    from ..measure.timing import run_interleaved
    from ..serve.qwen_vllm import build_tower, load_tower_weights
    from .native import packed_inputs

    data = json.loads(job)
    torch.set_default_dtype(getattr(torch, data["dtype"]))  # the served dtype, as vLLM sets it for the model
    preset = any_preset(data["preset"])
    pixels, grid_thw = packed_inputs(preset.encoder, [(data["image_size"], data["image_size"])], data["seed"])
    calls = {}
    for name, path in data["paths"].items():
        tower = build_tower(AutoConfig.from_pretrained(path).vision_config)
        tensors = {}
        for file in sorted(Path(path).glob("*.safetensors")):
            with safe_open(file, "pt") as handle:
                for key in handle.keys():
                    if key.startswith(("model.visual.", "visual.")):
                        tensors[key.split("visual.", 1)[1]] = handle.get_tensor(key)
        load_tower_weights(tower, tensors)

        def call(tower=tower) -> None:
            with torch.inference_mode():
                tower(pixels.to(torch.get_default_dtype()), grid_thw=grid_thw)

        calls[name] = call
    samples = run_interleaved(calls, reps=data["rounds"], warmup=data["warmup"])
    print(json.dumps({name: s.seconds for name, s in samples.items()}))


__all__ = ["STOCK", "ServedPair", "build_in_child", "flop_costs", "served_pair", "time_towers"]
