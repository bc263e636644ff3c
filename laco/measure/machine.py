"""What a reader needs to weigh a run's numbers: the machine (CPU, cores, memory, GPU, library versions), and
how busy other processes kept it while the run timed, and where and when the run happened (:class:`RunStart`).
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from .timing import usable_cores

BUSY_CORES_WARNING = 0.25
"""Other processes keeping this many cores busy on average make timings noisy enough to say so."""


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_gib: float
    capability: str
    cuda: str | None
    cudnn: int | None


@dataclass(frozen=True)
class Machine:
    """The machine a run timed on; ``other_processes_cores`` is filled in once the run is over."""

    cpu: str
    logical_cores: int | None
    usable_cores: int
    torch_threads: int
    torch_interop_threads: int
    memory_gib: float | None
    platform: str
    python: str
    torch: str
    transformers: str
    device: str
    gpu: Gpu | None
    other_processes_cores: float | None = None

    @classmethod
    def describe(cls, device: torch.device) -> Machine:
        import transformers

        gpu = None
        if device.type == "cuda":
            props = torch.cuda.get_device_properties(device)
            gpu = Gpu(
                name=props.name,
                memory_gib=round(props.total_memory / 2**30, 1),
                capability=f"{props.major}.{props.minor}",
                cuda=torch.version.cuda,
                cudnn=torch.backends.cudnn.version(),
            )
        return cls(
            cpu=_cpu_model(),
            logical_cores=os.cpu_count(),
            usable_cores=usable_cores(),
            torch_threads=torch.get_num_threads(),
            torch_interop_threads=torch.get_num_interop_threads(),
            memory_gib=memory_gib("MemTotal"),
            platform=platform.platform(),
            python=platform.python_version(),
            torch=torch.__version__,
            transformers=transformers.__version__,
            device=str(device),
            gpu=gpu,
        )

    def with_load(self, load: CpuLoad) -> Machine:
        """This machine with the cores other processes kept busy since ``load`` was taken."""
        others = load.other_processes_cores()
        return replace(self, other_processes_cores=None if others is None else round(others, 2))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def checkout_commit() -> str | None:
    """The checkout's commit (``+dirty`` with uncommitted changes to tracked files), for reports; ``None`` outside
    a git checkout."""
    import subprocess

    checkout = Path(__file__).resolve().parents[2]

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=checkout, capture_output=True, text=True)

    try:
        commit, dirty = git("rev-parse", "--short", "HEAD"), git("status", "--porcelain", "--untracked-files=no")
    except OSError:
        return None
    return commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") if commit.returncode == 0 else None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_gib(field_name: str) -> float | None:
    """A ``/proc/meminfo`` field (``MemTotal``, ``MemAvailable``) in GiB; ``None`` where there is no such file."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith(field_name + ":"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def available_memory_bytes(device: torch.device) -> float | None:
    """Memory free for new tensors on ``device``; ``None`` where the machine does not say."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    gib = memory_gib("MemAvailable")
    return None if gib is None else gib * 2**30


@dataclass(frozen=True)
class CpuLoad:
    """A snapshot of CPU time from ``/proc`` (Linux): the whole machine's busy seconds, this process's, and the
    wall clock. Two snapshots tell how many cores other processes kept busy in between, the main source of noise
    in CPU timings."""

    busy: float
    own: float
    wall: float

    @classmethod
    def now(cls) -> CpuLoad | None:
        try:
            ticks = os.sysconf("SC_CLK_TCK")
            with open("/proc/stat") as handle:
                fields = [int(v) for v in handle.readline().split()[1:]]
            with open("/proc/self/stat") as handle:
                own = handle.read().rsplit(")", 1)[1].split()
        except (OSError, ValueError, AttributeError):
            return None
        user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
        busy = user + nice + system + irq + softirq + steal
        return cls(busy / ticks, (int(own[11]) + int(own[12])) / ticks, time.perf_counter())

    def other_processes_cores(self, later: CpuLoad | None = None) -> float | None:
        """Average number of cores that processes other than this one kept busy since this snapshot."""
        later = later or CpuLoad.now()
        if later is None or later.wall <= self.wall:
            return None
        return max(0.0, ((later.busy - self.busy) - (later.own - self.own)) / (later.wall - self.wall))


def load_average() -> list[float] | None:
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:  # no load average on this platform
        return None


@dataclass(frozen=True)
class RunStart:
    """Taken before a run times anything: the date, the load average and a CPU snapshot, which its
    ``provenance`` and the machine's ``other_processes_cores`` are measured from."""

    date: float = field(default_factory=time.time)
    load_average: list[float] | None = field(default_factory=load_average)
    load: CpuLoad | None = field(default_factory=CpuLoad.now)

    def provenance(self, cpu: str) -> dict[str, Any]:
        """Where and when the run happened, and how loaded the machine was at its start and now."""
        return {
            "commit": checkout_commit(),
            "date": time.strftime("%Y-%m-%d %H:%M", time.localtime(self.date)),
            "cpu": cpu,
            "load_average_start": self.load_average,
            "load_average_end": load_average(),
        }

    def machine(self, device: torch.device) -> Machine:
        """:meth:`Machine.describe` of ``device``, with the cores other processes kept busy since the start."""
        machine = Machine.describe(device)
        return machine if self.load is None else machine.with_load(self.load)


def provenance_text(provenance: dict) -> str:
    """Commit, date and how loaded the machine was: what every engine's report names."""
    load = [p[0] if p else float("nan") for p in (provenance["load_average_start"], provenance["load_average_end"])]
    return (
        f"commit {provenance['commit']}, {provenance['date']}; load average {load[0]:.1f} at start, "
        f"{load[1]:.1f} at end"
    )


def machine_text(m: dict, execution: str | None = None) -> str:
    """The device (and how the model ran on it), threads, CPU, memory, GPU and library versions of a machine's
    :meth:`Machine.to_dict` (with ``vllm`` where a server ran), and the cores other processes kept busy."""
    others = m.get("other_processes_cores")
    return (
        f"{m.get('device', '')}{' ' + execution if execution else ''}, {m.get('torch_threads')} thread(s) on "
        f"{m.get('cpu')} ({m.get('usable_cores')} cores, {m.get('memory_gib')} GiB)"
        + (f", GPU {m['gpu']['name']}" if m.get("gpu") else "")
        + f"; torch {m.get('torch')}, transformers {m.get('transformers')}"
        + (f", vLLM {m['vllm']}" if m.get("vllm") else "")
        + (f"; other processes kept {others:.2f} cores busy" if others is not None else "")
    )
