"""Run the study grid: resumable, cached per cell, with encoder cost next to every accuracy.

Every (task, variant, seed) cell writes ``cells/<task>/<variant>/seed<seed>.json`` when it finishes; a rerun skips
finished cells, so a killed study continues where it stopped. The frozen encoder prefix of each task is cached in
``features/<task>.safetensors`` (with a fingerprint of what produced it), and encoder cost per variant in
``costs.json``.

With ``jobs > 1`` the pending cells are dealt round-robin to worker processes with ``threads // jobs`` torch
threads each: a cell's tensors are small (batch 32 of 17-65 tokens of width 384), so two one-thread processes
get more out of two cores than one two-thread process. Encoder costs and features are computed once, first,
in the parent; the workers only read those caches and write their own cell files.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .. import patch as laco_patch
from ..adapters import resolve_encoder
from ..measure.flop_counting import flop_counter_mode
from ..measure.timing import usable_cores
from ..precision import choose as choose_precision
from ..pretrained import load_dinov2_small
from .grid import StudyConfig, StudyVariant
from .probe import CompressedSuffix, prefix_features, start_layer, train_cell
from .report import write_report
from .tasks import load_task


def _atomic_write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(temporary, path)


def cell_path(root: Path, task: str, variant: StudyVariant, seed: int) -> Path:
    safe = variant.name.replace("/", "_").replace("@", "_at_").replace("+", "_")
    return root / "cells" / task / safe / f"seed{seed}.json"


class Study:
    def __init__(self, config: StudyConfig, progress: bool = True) -> None:
        # "auto" is resolved once, here: cells of one study must all compute in the same precision
        self.config = replace(config, precision=choose_precision(config.precision, "cpu").name)
        self.root = Path(config.output_dir)
        self.progress = progress
        self.encoder = load_dinov2_small().eval().requires_grad_(False)
        _, self.adapter = resolve_encoder(self.encoder)
        self.depth = len(self.adapter.blocks(self.encoder))
        patch = self.adapter.patch_size(self.encoder)
        self.grid = (config.image_size // patch[0], config.image_size // patch[1])
        self.position = 0  # of the progress bar, one line per worker process

    # -------------------------------------------------------------------------------------------------------------

    def run(self) -> list[dict[str, Any]]:
        config = self.config
        if config.jobs < 1:
            raise ValueError(f"jobs must be >= 1, got {config.jobs}.")
        if config.threads:
            torch.set_num_threads(config.threads)
        self._check_same_settings()
        _atomic_write_json(self.root / "study_config.json", asdict(config))
        variants = config.variants()
        costs = self.encoder_costs(variants)
        pending = {
            task_name: [
                (variant, seed)
                for variant in variants
                for seed in config.seeds
                if not cell_path(self.root, task_name, variant, seed).exists()
            ]
            for task_name in config.tasks
        }
        if config.jobs > 1 and sum(len(cells) for cells in pending.values()) > 1:
            self._run_parallel(pending)
        else:
            for task_name, cells in pending.items():
                if cells:
                    self._run_task(task_name, cells, costs)
        return self.collect()

    def _run_parallel(self, pending: dict[str, list[tuple[StudyVariant, int]]]) -> None:
        config = self.config
        for task_name, cells in pending.items():  # features once, here; workers read the cache
            if cells:
                self._features(task_name, self._task(task_name), self._starts(cells))
        queue = [(task_name, variant, seed) for task_name, cells in pending.items() for variant, seed in cells]
        jobs = min(config.jobs, len(queue))
        threads = max(1, (config.threads or usable_cores()) // jobs)
        worker_config = replace(config, jobs=1, threads=threads)
        context = multiprocessing.get_context("spawn")  # no fork of a process holding torch thread pools
        with ProcessPoolExecutor(jobs, mp_context=context) as pool:
            futures = [
                pool.submit(_run_share, worker_config, queue[index::jobs], index, self.progress)
                for index in range(jobs)
            ]
            failures = [error for error in (future.exception() for future in futures) if error is not None]
        if failures:
            raise RuntimeError(
                f"{len(failures)} of {jobs} study workers failed (finished cells are kept; rerun to resume): "
                f"{failures[0]!r}"
            ) from failures[0]

    # Settings that change what a cell measures: finished cells are only valid for the settings they ran with.
    CELL_SETTINGS = ("image_size", "max_train", "max_test", "steps", "batch_size", "learning_rate", "precision")
    # Studies recorded before precision was a setting computed their cells in bf16.
    LEGACY = {"precision": "bf16"}

    def _check_same_settings(self) -> None:
        path = self.root / "study_config.json"
        if not path.exists():
            return
        previous = json.loads(path.read_text())
        changed = {
            key: (previous.get(key, self.LEGACY.get(key)), getattr(self.config, key))
            for key in self.CELL_SETTINGS
            if previous.get(key, self.LEGACY.get(key)) != getattr(self.config, key)
        }
        if changed:
            raise ValueError(
                f"{self.root} holds cells trained with other settings {changed} (old, new); use another --output-dir "
                "or delete the old cells."
            )

    def _run_task(self, task_name: str, pending: list[tuple[StudyVariant, int]], costs: dict[str, Any]) -> None:
        config = self.config
        task = self._task(task_name)
        features = self._features(task_name, task, self._starts(pending))
        train_count = len(task.train_labels)
        train_labels, test_labels = torch.from_numpy(task.train_labels), torch.from_numpy(task.test_labels)
        bar = tqdm(pending, desc=task_name, unit="cell", disable=not self.progress, position=self.position)
        for variant, seed in bar:
            bar.set_postfix_str(f"{variant.name} seed {seed}")
            placement = variant.placement(self.depth)
            start = start_layer(placement, self.depth)
            torch.manual_seed(seed)
            model = CompressedSuffix(self.encoder, placement, len(task.classes), self.grid)
            inputs = features[start]
            result = train_cell(
                model,
                inputs[:train_count],
                train_labels,
                inputs[train_count:],
                test_labels,
                steps=config.steps,
                batch_size=config.batch_size,
                learning_rate=config.learning_rate,
                seed=seed,
                precision=config.precision,
            )
            record = {
                "task": task_name,
                "variant": variant.name,
                "family": variant.family,
                "method": variant.method or "none",
                "depth": list(variant.depth),
                "layers": list(placement.layers),
                "seed": seed,
                "precision": config.precision,
                **asdict(result),
                **costs[variant.name],
                "majority_accuracy": task.majority_accuracy(),
                "spatial_detail": task.spatial_detail,
            }
            _atomic_write_json(cell_path(self.root, task_name, variant, seed), record)

    def _task(self, task_name: str):
        return load_task(task_name).subset(self.config.max_train, self.config.max_test)

    def _starts(self, cells: list[tuple[StudyVariant, int]]) -> list[int]:
        """The encoder layers whose outputs these cells start from (where their first compressor sits)."""
        return sorted({start_layer(v.placement(self.depth), self.depth) for v, _ in cells})

    # -------------------------------------------------------------------------------------------------------------

    def _features(self, task_name: str, task, layers: list[int]) -> dict[int, torch.Tensor]:
        """Frozen prefix outputs for the train+test images, cached on disk with a fingerprint of their inputs."""
        images = np.concatenate([task.train_images, task.test_images])
        fingerprint = hashlib.sha256(images.tobytes()).hexdigest()[:16] + f"-{self.config.image_size}"
        path = self.root / "features" / f"{task_name}.safetensors"
        cached: dict[int, torch.Tensor] = {}
        if path.exists():
            stored = load_file(path)
            if stored.get("fingerprint_tag") is not None and _tag(fingerprint).equal(stored["fingerprint_tag"]):
                cached = {int(k.split("_")[1]): v for k, v in stored.items() if k.startswith("layer_")}
        missing = [layer for layer in layers if layer not in cached]
        if missing:
            cached.update(
                prefix_features(self.encoder, images, missing, self.config.image_size, progress=self.progress)
            )
            path.parent.mkdir(parents=True, exist_ok=True)
            tensors = {f"layer_{k}": v.contiguous() for k, v in cached.items()}
            tensors["fingerprint_tag"] = _tag(fingerprint)
            save_file(tensors, str(path) + ".tmp")
            os.replace(str(path) + ".tmp", path)
        return cached

    def encoder_costs(self, variants: list[StudyVariant]) -> dict[str, dict[str, float]]:
        """Encoder forward FLOPs and median time for every variant, cached in ``costs.json``.

        FLOPs come from the benchmark's counter, which also counts fused (SDPA) attention on a CPU.
        """
        path = self.root / "costs.json"
        costs: dict[str, dict[str, float]] = json.loads(path.read_text()) if path.exists() else {}
        # the tag keeps counts made before attention was counted (plain FlopCounterMode) from being reused
        key = f"{self.config.image_size}|attention-counted"
        todo = [v for v in variants if f"{v.name}|{key}" not in costs]
        if not todo:
            return {v.name: costs[f"{v.name}|{key}"] for v in variants}
        pixels = torch.randn(16, 3, self.config.image_size, self.config.image_size)
        encoder = self.encoder
        for variant in tqdm(todo, desc="encoder cost", unit="variant", disable=not self.progress):
            placement = variant.placement(self.depth)
            if placement.compressed:
                laco_patch.apply(encoder, placement)
            try:
                with torch.no_grad():
                    with flop_counter_mode() as counter:
                        encoder(pixels[:1])
                    flops = counter.get_total_flops()
                    seconds = (
                        _median_time(lambda: encoder(pixels), repeats=5) if self.config.time_encoder else float("nan")
                    )
            finally:
                if placement.compressed:
                    laco_patch.remove(encoder)
            costs[f"{variant.name}|{key}"] = {"encoder_gflops": flops / 1e9, "encoder_ms_per_16": seconds * 1e3}
        _atomic_write_json(path, costs)
        return {v.name: costs[f"{v.name}|{key}"] for v in variants}

    def collect(self) -> list[dict[str, Any]]:
        return collect_cells(self.root)


def _run_share(config: StudyConfig, share: list[tuple[str, StudyVariant, int]], position: int, progress: bool) -> None:
    """A worker process: run ``share``'s cells, reading the parent's cached costs and features."""
    torch.set_num_threads(config.threads)
    study = Study(config, progress=progress)
    study.position = position
    costs = study.encoder_costs(config.variants())
    for task_name in config.tasks:
        cells = [(variant, seed) for task, variant, seed in share if task == task_name]
        if cells:
            study._run_task(task_name, cells, costs)


def run_study(config: StudyConfig, progress: bool = True, docs: Path | None = None) -> dict:
    """Train every missing cell of ``config``, then write its tables, JSON and plots (and refresh ``docs``)."""
    cells = Study(config, progress=progress).run()
    return write_report(cells, Path(config.output_dir), docs)


def missing_cells(config: StudyConfig) -> list[tuple[str, str, int]]:
    """(task, variant, seed) of every cell of ``config`` that has not finished yet."""
    root = Path(config.output_dir)
    return [
        (task, variant.name, seed)
        for task in config.tasks
        for variant in config.variants()
        for seed in config.seeds
        if not cell_path(root, task, variant, seed).exists()
    ]


def collect_cells(root: Path) -> list[dict[str, Any]]:
    """Every finished cell under a study directory."""
    return [json.loads(p.read_text()) for p in sorted((root / "cells").glob("*/*/seed*.json"))]


def _tag(fingerprint: str) -> torch.Tensor:
    return torch.tensor(list(fingerprint.encode()), dtype=torch.uint8)


def _median_time(function, repeats: int = 5) -> float:
    function()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return float(np.median(times))
