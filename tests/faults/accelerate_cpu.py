"""Run ``laco`` under an accelerate FSDP or DeepSpeed config, on CPU processes started by torchrun (gloo).

accelerate 1.15 turns FSDP and DeepSpeed on only for GPU-type setups: on a CPU its state machine stops at
MULTI_CPU and ignores the plugin (and ``accelerate launch`` with such a config on a CPU starts independent,
non-distributed processes, which laco now refuses). This test-only shim does what ``accelerate launch`` does on
GPUs, minus the device: it exports the config's ``fsdp_config`` / ``deepspeed_config`` as accelerate's environment
variables and lets the CPU state carry the plugin, so the Trainer takes its real FSDP2 or DeepSpeed path (sharding,
sharded checkpoints, their resume, the gathered final save). Mixed precision is off: CPU autocast would make the
comparison with single-process training a comparison of precisions. DeepSpeed needs ``DS_ACCELERATOR=cpu``.

Usage: ``torchrun --nproc_per_node 2 tests/faults/accelerate_cpu.py configs/accelerate/fsdp.yaml train ...``
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # this checkout's laco, as `python -m laco` from the repository root would import

# accelerate's environment variable for each config key (accelerate/utils/launch.py does the same on GPUs)
_FSDP_ENVIRONMENT = {
    "fsdp_version": "FSDP_VERSION",
    "fsdp_auto_wrap_policy": "FSDP_AUTO_WRAP_POLICY",
    "fsdp_transformer_layer_cls_to_wrap": "FSDP_TRANSFORMER_CLS_TO_WRAP",
    "fsdp_state_dict_type": "FSDP_STATE_DICT_TYPE",
    "fsdp_cpu_ram_efficient_loading": "FSDP_CPU_RAM_EFFICIENT_LOADING",
    "fsdp_reshard_after_forward": "FSDP_RESHARD_AFTER_FORWARD",
    "fsdp_activation_checkpointing": "FSDP_ACTIVATION_CHECKPOINTING",
    "fsdp_offload_params": "FSDP_OFFLOAD_PARAMS",
    "fsdp_sharding_strategy": "FSDP_SHARDING_STRATEGY",
}
_DEEPSPEED_ENVIRONMENT = {
    "zero_stage": "ACCELERATE_DEEPSPEED_ZERO_STAGE",
    "gradient_accumulation_steps": "ACCELERATE_GRADIENT_ACCUMULATION_STEPS",
    "gradient_clipping": "ACCELERATE_GRADIENT_CLIPPING",
    "offload_optimizer_device": "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE",
    "offload_param_device": "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE",
    "zero3_init_flag": "ACCELERATE_DEEPSPEED_ZERO3_INIT",
    "zero3_save_16bit_model": "ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL",
}


def export_environment(config_path: str) -> str:
    """Export the config as accelerate's environment; returns its distributed type (FSDP or DEEPSPEED)."""
    settings = yaml.safe_load(Path(config_path).read_text())
    kind = settings["distributed_type"]
    os.environ["ACCELERATE_MIXED_PRECISION"] = "no"
    section, names, flag = {
        "FSDP": ("fsdp_config", _FSDP_ENVIRONMENT, "ACCELERATE_USE_FSDP"),
        "DEEPSPEED": ("deepspeed_config", _DEEPSPEED_ENVIRONMENT, "ACCELERATE_USE_DEEPSPEED"),
    }[kind]
    os.environ[flag] = "true"
    for key, value in settings[section].items():
        os.environ[names[key]] = str(value).lower() if isinstance(value, bool) else str(value)
    return kind


def let_cpu_state_carry_the_plugin() -> None:
    import accelerate.state
    from accelerate.utils import DistributedType

    original = accelerate.state.AcceleratorState.__init__

    @functools.wraps(original)
    def init(self, *args, fsdp_plugin=None, deepspeed_plugin=None, **kwargs):
        original(self, *args, fsdp_plugin=fsdp_plugin, deepspeed_plugin=deepspeed_plugin, **kwargs)
        if self.distributed_type != DistributedType.MULTI_CPU:
            return
        if fsdp_plugin is not None:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin
        elif deepspeed_plugin is not None:
            deepspeed_plugin.set_mixed_precision("no")
            deepspeed_plugin.select(_from_accelerator_state=True)
            self.deepspeed_plugins = deepspeed_plugin
            self.distributed_type = DistributedType.DEEPSPEED
        else:
            return
        # every later AcceleratorState() copies PartialState's fields over its own: the type must be there too
        accelerate.state.PartialState._shared_state["distributed_type"] = self.distributed_type

    accelerate.state.AcceleratorState.__init__ = init


def wrapping_report(vision: str, llm: str, path: Path) -> None:
    """Shard a fresh LaCo MLLM as the Trainer does, and record which FSDP unit holds each compressor; then check
    that ``laco.remove`` works on the model ``accelerator.unwrap_model`` returns (written by rank 0 to ``path``)."""
    import json

    import torch
    from accelerate import Accelerator
    from torch.distributed.fsdp import FSDPModule

    import laco
    from laco.mllm import build_mllm

    accelerator = Accelerator(cpu=True)
    model, _ = build_mllm(vision, llm, laco.Placement(2), image_size=32)
    optimizer = torch.optim.AdamW(model.parameters())  # FSDP2 prepares a model only together with its optimizer
    model, _ = accelerator.prepare(model, optimizer)
    modules = dict(model.named_modules())
    units = [name for name, module in modules.items() if isinstance(module, FSDPModule)]
    compressors = {}
    for name in modules:
        if name.endswith(".laco_compressor"):
            owner = max((unit for unit in units if name.startswith(unit + ".") or unit == ""), key=len)
            compressors[name] = {"unit": owner, "unit_class": type(modules[owner]).__name__}
    tower = accelerator.unwrap_model(model).model.vision_tower
    laco.remove(tower)
    removed = laco.placement_of(tower) is None and not any(
        n.endswith("laco_compressor") for n, _ in tower.named_modules()
    )
    if accelerator.is_main_process:
        report = {"compressors": compressors, "removed": removed, "units": units, "torch": torch.__version__}
        path.write_text(json.dumps(report, indent=1))
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    export_environment(sys.argv[1])
    let_cpu_state_carry_the_plugin()
    if os.environ.get("LACO_KILL_TARGET"):  # a kill at an exact point, as tests/faults/kill_at.py does
        import kill_at

        kill_at.install(os.environ["LACO_KILL_TARGET"], int(os.environ["LACO_KILL_CALL"]))
    from laco.cli import main

    code = main(sys.argv[2:])
    if os.environ.get("LACO_WRAP_REPORT"):
        vision, llm, report = os.environ["LACO_WRAP_REPORT"].split(os.pathsep)
        wrapping_report(vision, llm, Path(report))
    sys.exit(code)
