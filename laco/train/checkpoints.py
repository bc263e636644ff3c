"""What a run leaves on disk, written so a rerun can always continue: checkpoints and each stage's final model.

Checkpoints can always be resumed from: sealed when complete, checked before use, never the only copy.

The ``Trainer`` writes a checkpoint as many files (weights, optimizer, scheduler, RNG states, ``trainer_state.json``)
over several seconds, so a kill, a full disk or a crash can leave any of them missing or cut short. Resuming from
such a checkpoint either crashes on every rerun or, worse, continues from half-written state. So:

* a checkpoint is *sealed* once every process has written its files: :data:`MANIFEST` records each file's size
  and sha256 (:mod:`laco.digests`), and is itself written last and atomically;
* before a checkpoint is used, or before an older one is deleted because of it, it is checked
  (:func:`checkpoint_problem`): manifest sizes, JSON that parses, safetensors headers that account for the whole
  file, torch zip archives whose directory is intact, and, before a resume, every file's sha256 (a flipped bit
  inside a file of the right size is caught there, naming the file);
* the newest :data:`KEEP` checkpoints that pass are kept, so a newest checkpoint that turns out bad on resume
  still has a predecessor to fall back to (:func:`last_complete_checkpoint` moves bad ones aside, never deletes).

Checkpoints written before manifests existed (no :data:`MANIFEST`) are accepted when ``trainer_state.json`` exists
and every file passes the structural checks.

A stage's ``final/`` counts as done once its marker (:data:`DONE_MARKER`) is written, atomically and last
(:func:`save_stage_final`), after the digests of its files (:data:`laco.digests.DIGESTS_FILE`); the run's
``final/`` is a copy of the last stage's, digests included, replaced in one rename (:func:`publish_final`). A
done stage whose ``final/`` no longer matches its digests is refused on resume (:func:`stage_done`).
"""

from __future__ import annotations

import json
import logging
import shutil
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import Trainer
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..atomic import atomic_write_text
from ..digests import DigestMismatch, digest_problem, file_digests, safetensors_problem, verify_digests, write_digests

if TYPE_CHECKING:
    from ..config import RunConfig
    from ..mllm import LacoLlavaForConditionalGeneration, LacoProcessor

logger = logging.getLogger(__name__)

MANIFEST = "laco-checkpoint.json"
FINAL = "final"
DONE_MARKER = "laco-stage-done.json"
KEEP = 2
"""Complete checkpoints kept per stage: the newest, and one to fall back to if the newest is found damaged."""

ASIDE_PREFIX = "incomplete-"
_TORCH_ARCHIVES = (".pt", ".pth", ".bin")


def checkpoints(stage_dir: Path) -> list[Path]:
    """The ``checkpoint-N`` directories of a stage, newest (highest N) first."""
    if not stage_dir.is_dir():
        return []
    found = [
        path
        for path in stage_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*")
        if path.is_dir() and path.name.rsplit("-", 1)[-1].isdigit()
    ]
    return sorted(found, key=lambda path: int(path.name.rsplit("-", 1)[-1]), reverse=True)


def seal(checkpoint: Path) -> None:
    """Record every file of a finished checkpoint, its size and its sha256; the checkpoint counts as complete from
    now on."""
    files = {
        path.relative_to(checkpoint).as_posix(): path.stat().st_size
        for path in sorted(checkpoint.rglob("*"))
        if path.is_file() and path.name != MANIFEST and not path.name.endswith(".tmp")
    }
    step = int(checkpoint.name.rsplit("-", 1)[-1])
    record = {"format": 1, "step": step, "files": files, "sha256": file_digests(checkpoint, files)}
    atomic_write_text(checkpoint / MANIFEST, json.dumps(record, indent=1))


def checkpoint_problem(checkpoint: Path, content: bool = True) -> str | None:
    """Why ``checkpoint`` cannot be resumed from (a sentence), or ``None`` when it can.

    ``content``: also compare every file with the sha256 its manifest recorded (reads every byte; manifests from
    before digests have none, and are checked structurally only).
    """
    manifest_path = checkpoint / MANIFEST
    digests: dict[str, str] = {}
    if manifest_path.exists():
        try:
            manifest = json.loads(manifest_path.read_text())
            files: dict[str, int] = dict(manifest["files"])
            digests = dict(manifest.get("sha256") or {})
        except (ValueError, KeyError, TypeError) as error:
            return f"its manifest {MANIFEST} is unreadable ({error})"
        for name, size in files.items():
            path = checkpoint / name
            if not path.is_file():
                return f"{name} is missing"
            if path.stat().st_size != size:
                return f"{name} has {path.stat().st_size} bytes, {size} were written"
    elif not (checkpoint / TRAINER_STATE_NAME).exists():
        return f"it has no {TRAINER_STATE_NAME} (the save was interrupted)"
    else:
        files = {p.relative_to(checkpoint).as_posix(): 0 for p in checkpoint.rglob("*") if p.is_file()}
    for name in files:
        problem = _file_problem(checkpoint / name)
        if problem is not None:
            return f"{name} {problem}"
    if content and digests:
        problem = digest_problem(checkpoint, digests)
        if problem is not None:
            return problem
    return _state_problem(checkpoint)


def _state_problem(checkpoint: Path) -> str | None:
    state = json.loads((checkpoint / TRAINER_STATE_NAME).read_text())  # parsed by _file_problem already
    if not isinstance(state, dict):
        return f"{TRAINER_STATE_NAME} is not a JSON object"
    step = int(checkpoint.name.rsplit("-", 1)[-1])
    if "global_step" in state and state["global_step"] != step:
        return f"{TRAINER_STATE_NAME} says step {state['global_step']}, the directory step {step}"
    return None


def _file_problem(path: Path) -> str | None:
    """A structural check by file type: cheap (headers and directories only), and it catches a cut-short file."""
    try:
        if path.suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
        elif path.suffix == ".safetensors":
            return safetensors_problem(path)
        elif path.suffix in _TORCH_ARCHIVES:
            return _archive_problem(path)
    except (OSError, ValueError) as error:
        return f"is unreadable ({error})"
    return None


def _archive_problem(path: Path) -> str | None:
    """``torch.save`` writes zip archives: a cut-short one has no central directory, or entries past its end."""
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            for entry in archive.infolist():
                if entry.header_offset + entry.compress_size > size:
                    return f"is cut short ({entry.filename} runs past the end of the file)"
    except zipfile.BadZipFile as error:
        return f"is not a complete torch archive ({error})"
    return None


def last_complete_checkpoint(stage_dir: Path, tidy: bool = True) -> str | None:
    """The newest checkpoint that passes :func:`checkpoint_problem`, or ``None``.

    Newer checkpoints that fail are skipped with a warning naming the problem and, when ``tidy`` (main process
    only), moved aside to ``incomplete-checkpoint-N`` so the resumed run can write that step again. Nothing is
    deleted here: a damaged checkpoint stays on disk for inspection.
    """
    for checkpoint in checkpoints(Path(stage_dir)):
        problem = checkpoint_problem(checkpoint)
        if problem is None:
            return str(checkpoint)
        logger.warning("cannot resume from %s: %s; trying the checkpoint before it", checkpoint, problem)
        if tidy:
            aside = checkpoint.with_name(f"{ASIDE_PREFIX}{checkpoint.name}")
            if aside.exists():
                shutil.rmtree(aside)
            checkpoint.rename(aside)
            logger.warning("moved %s aside to %s", checkpoint, aside)
    return None


def prune(stage_dir: Path, keep: int = KEEP) -> None:
    """Delete checkpoints older than the newest ``keep`` complete ones; the newest must pass its check first.

    Runs after every save (main process). If the checkpoint just written fails its check, nothing is deleted:
    its predecessors are what a rerun will resume from.
    """
    found = checkpoints(Path(stage_dir))
    if not found:
        return
    # structural checks only: the newest was hashed a moment ago, and resume hashes whichever it uses
    newest_problem = checkpoint_problem(found[0], content=False)
    if newest_problem is not None:
        logger.warning(
            "the checkpoint just written, %s, fails its check (%s); keeping every older one", found[0], newest_problem
        )
        return
    complete = 0
    for checkpoint in found:
        if complete >= keep:
            shutil.rmtree(checkpoint, ignore_errors=True)
        elif checkpoint is found[0] or checkpoint_problem(checkpoint, content=False) is None:
            complete += 1


# ------------------------------------------------------------------------------------------------------------------
# Stage outputs


def stage_done(directory: Path) -> bool:
    """Whether the stage finished: its ``final/`` holds the marker, written (atomically) after everything else.

    A finished stage's files must still match their digests (the next stage starts from them): a mismatch raises
    :class:`~laco.digests.DigestMismatch` naming the file, rather than training on from damaged weights.
    """
    marker = directory / FINAL / DONE_MARKER
    try:
        done = isinstance(json.loads(marker.read_text()), dict)
    except (OSError, ValueError):
        return False
    if done:
        try:
            verify_digests(directory / FINAL)
        except DigestMismatch as mismatch:
            raise DigestMismatch(
                f"{mismatch} To train this stage again instead, delete {directory / FINAL} and rerun."
            ) from None
    return done


def save_stage_final(trainer: Trainer, processor: "LacoProcessor", final: Path, summary: dict[str, Any]) -> None:
    """Write a stage's ``final/`` (safetensors + processor) and, last, the marker that says the stage is done.

    Every process takes part: under FSDP and ZeRO-3 the full weights exist only once gathered (the Trainer's
    ``save_model`` writes FSDP's sharded format instead, which ``laco eval`` cannot read). A kill at any point
    leaves no marker, so a rerun saves the stage again from its last checkpoint.
    """
    sharded = trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled
    state_dict = trainer.accelerator.get_state_dict(trainer.model_wrapped) if sharded else None  # a collective
    if trainer.is_world_process_zero():
        if final.exists():
            shutil.rmtree(final)  # what an interrupted save left
        model = trainer.accelerator.unwrap_model(trainer.model)
        model.save_pretrained(final, state_dict=_untied(model, state_dict) if sharded else None)
        # the final model directory holds safetensors and JSON only: no pickled training arguments
        atomic_write_text(final / "training_args.json", trainer.args.to_json_string())
        processor.save_pretrained(final)
        write_digests(final)  # before the marker: a done stage always has its digests
        atomic_write_text(final / DONE_MARKER, json.dumps(summary, indent=2) + "\n")
    del state_dict
    trainer.accelerator.wait_for_everyone()


def _untied(model: "LacoLlavaForConditionalGeneration", state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the copies that gathering made of tied weights (a tied LLM's LM head).

    ``save_pretrained`` recognises tied weights by shared storage, which gathered copies no longer have; it would
    save the LM head twice, and the final model would differ in its keys from one trained in a single process.
    """
    for tied, source in model.get_expanded_tied_weights_keys(all_submodels=True).items():
        if tied in state_dict and source in state_dict:
            del state_dict[tied]
    return state_dict


def publish_final(
    output: Path,
    config: "RunConfig",
    summaries: list[dict[str, Any]],
    precision: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Copy the last stage's model to ``final/`` (replaced in one rename) and write ``summary.json`` (with
    ``extra`` entries before the stages)."""
    staging = output / ".final.tmp"
    if staging.exists():
        shutil.rmtree(staging)
    shutil.copytree(output / config.stages[-1].name / FINAL, staging)
    final = output / FINAL
    if final.exists():
        shutil.rmtree(final)
    staging.rename(final)
    atomic_write_text(
        output / "summary.json",
        json.dumps({"name": config.name, "precision": precision, **(extra or {}), "stages": summaries}, indent=2)
        + "\n",
    )


def previous_summaries(output: Path) -> list[dict[str, Any]]:
    summaries = []
    for marker in sorted(output.glob(f"*/{FINAL}/{DONE_MARKER}")):
        if marker.parent.parent != output and stage_done(marker.parent.parent):
            summaries.append(json.loads(marker.read_text()))
    return summaries
