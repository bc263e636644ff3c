"""Run ``laco`` under the FSDP settings of an accelerate config, on CPU processes started by torchrun (gloo).

accelerate 1.15 only turns FSDP on for GPU-type setups: on a CPU its state machine stops at MULTI_CPU and ignores
the FSDP plugin (and ``accelerate launch`` with an FSDP config on a CPU runs independent, non-distributed
processes). This test-only shim does what ``accelerate launch`` does on GPUs, minus the device: it exports the
config's ``fsdp_config`` as accelerate's environment variables and lets the CPU state carry the FSDP plugin, so
the Trainer takes its real FSDP2 path (``fully_shard`` with the config's wrap policy, sharded checkpoints, DCP
resume). Mixed precision is off: CPU autocast would make the comparison with single-process training a
comparison of precisions.

Usage: ``torchrun --nproc_per_node 2 tests/faults/fsdp_cpu.py configs/accelerate/fsdp.yaml train --config ...``
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # this checkout's laco, as `python -m laco` from the repository root would import

# accelerate's environment variable for each fsdp_config key (accelerate/utils/launch.py does the same on GPUs)
_ENVIRONMENT = {
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


def export_fsdp_environment(config_path: str) -> None:
    settings = yaml.safe_load(Path(config_path).read_text())
    os.environ["ACCELERATE_USE_FSDP"] = "true"
    os.environ["ACCELERATE_MIXED_PRECISION"] = "no"
    for key, value in settings["fsdp_config"].items():
        os.environ[_ENVIRONMENT[key]] = str(value).lower() if isinstance(value, bool) else str(value)


def let_cpu_state_carry_fsdp() -> None:
    import accelerate.state
    from accelerate.utils import DistributedType

    original = accelerate.state.AcceleratorState.__init__

    @functools.wraps(original)
    def init(self, *args, fsdp_plugin=None, **kwargs):
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin
            # every later AcceleratorState() copies PartialState's fields over its own: FSDP must be there too
            accelerate.state.PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    accelerate.state.AcceleratorState.__init__ = init


if __name__ == "__main__":
    export_fsdp_environment(sys.argv[1])
    let_cpu_state_carry_fsdp()
    from laco.cli import main

    sys.exit(main(sys.argv[2:]))
