"""The command line, table, JSON and plot of ``laco bench --engine vllm`` (:mod:`laco.bench.serving`)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from .serving import VARIANTS, ServingResult, ServingSettings, run

METRICS = (("ttft", "ttft_s", "TTFT (s)"), ("requests_per_s", "requests_per_s", "requests/s"),
           ("output_tokens_per_s", "output_tokens_per_s", "output tokens/s"))  # fmt: skip


def format_table(result: ServingResult) -> str:
    laco, external = VARIANTS
    lines = [
        f"| metric | {laco} | {external} | LaCo speed-up | FLOP bound | of bound |",
        "|---|---|---|---|---|---|",
    ]
    for key, metric, label in METRICS:
        ratio, bound = result.ratios[key], result.bounds[key]
        lines.append(
            f"| {label} | {result.medians[laco][metric]:.3f} | {result.medians[external][metric]:.3f} | "
            f"**{ratio:.2f}x** | {bound:.2f}x | {ratio / bound:.2f} |"
        )
    return "\n".join(lines)


def format_summary(result: ServingResult) -> str:
    s, m = result.settings, result.machine
    rounds = ", ".join("/".join(order) for order in result.order)
    return (
        f"{s['preset']} served by vLLM {m.get('vllm')} ({'float32, eager' if s['device'] == 'cpu' else 'bfloat16'}, "
        f"LLM layers: {s['llm_layers'] or 'all'}), {result.image_tokens} image + {result.prompt_tokens} text tokens "
        f"per request; TTFT: one request alone, max_tokens 1; throughput: {s['requests']} concurrent requests of "
        f"{s['output_tokens']} tokens; medians of {s['rounds']} rounds after {s['warmup']} warm-up (order: {rounds}). "
        f"Machine: {m.get('cpu')}, {m.get('usable_cores')} cores, {m.get('memory_gib')} GiB"
        f"{', GPU ' + m['gpu']['name'] if m.get('gpu') else ''}; commit {m.get('commit')}."
    )


def write_json(result: ServingResult, path: Path) -> Path:
    path.write_text(json.dumps(asdict(result), indent=1) + "\n")
    return path


def write_plot(result: ServingResult, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [label for _, _, label in METRICS]
    ratios = [result.ratios[key] for key, _, _ in METRICS]
    bounds = [result.bounds[key] for key, _, _ in METRICS]
    figure, axis = plt.subplots(figsize=(6.4, 3.6))
    positions = range(len(labels))
    axis.bar([p - 0.2 for p in positions], ratios, 0.4, label="measured (vLLM)")
    axis.bar([p + 0.2 for p in positions], bounds, 0.4, label="FLOP bound", color="lightgray", edgecolor="gray")
    axis.axhline(1.0, color="black", linewidth=0.8)
    axis.set_xticks(list(positions), labels)
    axis.set_ylabel("LaCo@1/4 over external")
    axis.set_title(f"{result.settings['preset']} served by vLLM ({result.machine.get('cpu', '')[:40]})", fontsize=9)
    for position, ratio in zip(positions, ratios):
        axis.text(position - 0.2, ratio, f"{ratio:.2f}x", ha="center", va="bottom", fontsize=8)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="laco bench --engine vllm",
        description="LaCo against external compression, each served by `vllm serve` (random weights at a preset's "
        "geometry): TTFT, requests/s and output tokens/s side by side, next to the FLOP bound.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    defaults = ServingSettings()
    parser.add_argument("--engine", choices=["vllm"], default="vllm", help="(this command's engine)")
    parser.add_argument("--preset", default=defaults.preset, help="a preset with an LLM (laco bench --list-presets)")
    parser.add_argument("--depth", default=defaults.depth, help="LaCo's merge depth (external is after the last layer)")
    parser.add_argument("--requests", type=int, default=defaults.requests, help="concurrent requests per round")
    parser.add_argument("--output-tokens", type=int, default=defaults.output_tokens, help="tokens per answer")
    parser.add_argument("--rounds", type=int, default=defaults.rounds, help="timed rounds (order alternates)")
    parser.add_argument("--warmup", type=int, default=defaults.warmup, help="untimed rounds first")
    parser.add_argument("--llm-layers", type=int, default=None, help="serve only N LLM layers (default: all)")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda with a CUDA build of vLLM in --serve-python")
    parser.add_argument("--serve-python", default=None, help="Python of the vLLM environment (default .venv-serve)")
    parser.add_argument("--keep-models", action="store_true", help="keep the saved checkpoints for another run")
    parser.add_argument(
        "--out", default=None, help="directory for serving.json/.md/.png (default runs/bench-vllm-<time>)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = ServingSettings(
        preset=args.preset, depth=args.depth, requests=args.requests, output_tokens=args.output_tokens,
        rounds=args.rounds, warmup=args.warmup, llm_layers=args.llm_layers, device=args.device,
        serve_python=args.serve_python, keep_models=args.keep_models,
    )  # fmt: skip
    if settings.requests < 1 or settings.rounds < 1 or settings.output_tokens < 1:
        print("laco bench: error: --requests, --rounds and --output-tokens must be >= 1", file=sys.stderr)
        return 2
    out = Path(args.out or f"runs/bench-vllm-{time.strftime('%Y%m%d-%H%M%S')}")
    # A plain SIGTERM would end Python without unwinding, leaving both vLLM servers running: exit through
    # SystemExit instead, so the servers are stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    from ..serve.launch import ServeUnavailable

    try:
        result = run(settings, out)
    except (ServeUnavailable, ValueError) as error:
        print(f"laco bench: error: {error}", file=sys.stderr)
        return 2
    table, summary = format_table(result), format_summary(result)
    (out / "serving.md").write_text(f"{table}\n\n{summary}\n")
    print(f"\n{table}\n\n{summary}\n")
    print(
        f"files: {write_json(result, out / 'serving.json')}, {write_plot(result, out / 'serving.png')}, {out / 'serving.md'}"
    )
    return 0
