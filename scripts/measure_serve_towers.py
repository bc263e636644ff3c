"""Which vision tower should a served laco model run? Time and compare the two candidates (serving env only):

* transformers' SigLIP encoder with laco.apply (what laco.serve runs: the module laco trained, any family);
* vLLM's own SigLIP tower (fused qkv, vLLM's encoder attention) with the same LaCo merge hooked onto its block
  list through laco's generic adapter.

Random weights at the SigLIP-so400m/14 @384 geometry (LLaVA-OneVision's tower), the same weights in both, one
image per call, LaCo after layer 7 of 27 and after the last layer (external). Prints medians and the largest
difference between the two towers' outputs.

    .venv-serve/bin/python scripts/measure_serve_towers.py [--reps 5] [--layers 27]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def _vllm_context():
    """vLLM's layers need a (single-process) parallel state and a current config to be built outside an engine."""
    from vllm.config import VllmConfig, set_current_vllm_config
    from vllm.distributed import init_distributed_environment, initialize_model_parallel

    from laco.serve.launch import free_port

    config = VllmConfig()
    with set_current_vllm_config(config):
        init_distributed_environment(
            world_size=1, rank=0, local_rank=0, distributed_init_method=f"tcp://127.0.0.1:{free_port()}", backend="gloo"
        )
        initialize_model_parallel(1, 1)
    return set_current_vllm_config(config)


def _interleaved(first, second, reps: int) -> tuple[float, float, float]:
    """Medians of ``first`` and ``second`` timed alternately (order swapped each round), and of their per-round
    ratio: on a shared machine the load changes between rounds, a round's pair sees the same load."""
    first(), second()  # warm-up
    times = {0: [], 1: []}
    for rep in range(reps):
        for index in (0, 1) if rep % 2 == 0 else (1, 0):
            started = time.perf_counter()
            (first, second)[index]()
            times[index].append(time.perf_counter() - started)
    ratios = [a / b for a, b in zip(times[0], times[1])]
    return statistics.median(times[0]), statistics.median(times[1]), statistics.median(ratios)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--layers", type=int, default=27, help="encoder depth (27: so400m)")
    args = parser.parse_args()

    import laco
    from laco.bench.models import vision_config
    from laco.cost import ENCODERS

    torch.manual_seed(0)
    geometry = ENCODERS["siglip-so400m"].with_layers(args.layers)
    config = vision_config(geometry, attn_implementation="eager")
    from transformers import SiglipVisionModel as HfSiglip

    pixels = torch.randn(1, 3, geometry.image_size, geometry.image_size)
    with _vllm_context():
        from vllm.model_executor.models.siglip import SiglipVisionModel as VllmSiglip

        vllm_tower = VllmSiglip(config, require_post_norm=False).eval()
        hf_tower = HfSiglip(config).eval()
        weights = ((k, v) for k, v in hf_tower.state_dict().items() if not k.startswith("post_layernorm"))
        vllm_tower.vision_model.load_weights(weights)
        for module in vllm_tower.modules():  # what vLLM's loader does next: pack weights for its CPU GEMM kernels
            if getattr(module, "quant_method", None) is not None:
                module.quant_method.process_weights_after_loading(module)
        for placement, layer in (("laco@1/4", "1/4"), ("external", args.layers)):
            for implementation in ("eager", "sdpa"):
                hf_tower.set_attn_implementation(implementation)
                laco.apply(hf_tower, layer)
                laco.apply(
                    vllm_tower, layer, blocks="vision_model.encoder.layers", patch_size=14, hidden_size=geometry.width
                )
                for hf_merge, vllm_merge in zip(
                    laco.attached_compressors(hf_tower), laco.attached_compressors(vllm_tower)
                ):
                    vllm_merge.load_state_dict(hf_merge.state_dict())
                with torch.inference_mode():
                    # LLaVA reads the last hidden state before the post-norm; vLLM's tower without post-norm returns it.
                    hf_out = hf_tower(pixels, output_hidden_states=True).hidden_states[-1]
                    vllm_out = vllm_tower(pixels)
                    hf_time, vllm_time, ratio = _interleaved(
                        lambda: hf_tower(pixels, output_hidden_states=True), lambda: vllm_tower(pixels), args.reps
                    )
                difference = (hf_out[0] - vllm_out.reshape(hf_out[0].shape)).abs().max()
                print(
                    f"{placement:9s} transformers[{implementation}] {hf_time * 1000:7.0f} ms   vLLM tower "
                    f"{vllm_time * 1000:7.0f} ms   transformers/vLLM {ratio:.2f} (median of paired rounds)   "
                    f"tokens out {hf_out.shape[1]}/{vllm_out.shape[-2]}   max |diff| {difference:.2e}",
                    flush=True,
                )
                laco.remove(hf_tower)
                laco.remove(vllm_tower)


if __name__ == "__main__":
    main()
