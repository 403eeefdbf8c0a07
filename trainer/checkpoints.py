"""Map an existing series of saved checkpoints: one run directory, no retraining.

From the command line::

    trainmap import-checkpoints ckpts/ --model mypkg.models:make_model --out runs/old-exp/seed-0
    trainmap import-checkpoints ckpts/ --task modadd --preset tiny --seed 0 --out runs/x/seed-0

From Python::

    from trainmap.trainer.checkpoints import import_checkpoints
    result = import_checkpoints("ckpts/", make_model, "runs/old-exp/seed-0", ["encoder.*"])

A checkpoint is a state dict in a file (``.safetensors``, or ``.pt``/``.pth``/
``.bin``/``.ckpt`` read with ``torch.load(weights_only=True)``: never unpickled),
or a Hugging Face ``checkpoint-N/`` folder holding ``model.safetensors`` or
``pytorch_model.bin``. A Lightning ``.ckpt`` (a dict with ``state_dict``) works
with a factory that builds the LightningModule. The order is the step or epoch
in each name (``epoch=3-step=400.ckpt``, ``checkpoint-500``, ``step_0100.pt``;
``pattern`` for other schemes). Each loads into a fresh model from the factory,
on ``device``, and becomes one row of :class:`~trainmap.trainer.tracker.Tracker`:
the same columns as tracking live, plus ``task_metrics(model, epoch, step)``. A
file that cannot be used (needs pickle, does not fit the model, unreadable, no
step in its name) is skipped with a one-line reason naming it; the others are
imported.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pickle
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainmap.trainer import rundir
from trainmap.trainer.errors import UserError
from trainmap.trainer.integrations.recorder import TaskMetrics
from trainmap.trainer.metrics import resolve_hook_points
from trainmap.trainer.tracker import Tracker

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
# what a Hugging Face checkpoint-N/ folder holds, preferred first
FOLDER_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
# the keys a training script commonly nests its state dict under
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")

_EPOCH = re.compile(r"epoch[=_-]?(\d+)", re.IGNORECASE)
_STEP = re.compile(r"(?:step|checkpoint|ckpt|iter|iteration)[=_-]?(\d+)", re.IGNORECASE)
_NUMBER = re.compile(r"(\d+)")
_WEIGHTS_ONLY_DETAIL = re.compile(r"WeightsUnpickler error:\s*(.+)")


class CheckpointError(UserError, ValueError):
    """One checkpoint file cannot be imported; the message names it and says why."""


@dataclass(frozen=True)
class Checkpoint:
    path: Path  # the weights file (inside a folder for checkpoint-N/)
    name: str  # as found in the directory: the file or folder name
    epoch: int
    step: int


@dataclass
class ImportResult:
    path: Path  # the run directory written
    imported: list[Checkpoint] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, reason)


# ----------------------------------------------------------- finding them


def parse_position(name: str, pattern: str | None = None) -> tuple[int, int] | None:
    """(epoch, step) from a checkpoint's name, or None if it holds no number to order by.

    With ``pattern`` (a regex with named groups ``epoch`` and/or ``step``) only that
    is used. Without it: ``epoch=E``/``epoch_E`` and ``step=S``/``checkpoint-S``/
    ``iter_S``, else a name with exactly one number, taken as the step. Whichever
    of epoch and step is missing equals the other.
    """
    stem = name
    for suffix in WEIGHT_SUFFIXES:
        stem = stem.removesuffix(suffix)
    if pattern is not None:
        match = re.search(pattern, stem)
        if not match:
            return None
        groups = {k: v for k, v in match.groupdict().items() if v is not None}
        epoch, step = groups.get("epoch"), groups.get("step")
    else:
        epoch_match, step_match = _EPOCH.search(stem), _STEP.search(stem)
        epoch = epoch_match.group(1) if epoch_match else None
        step = step_match.group(1) if step_match else None
        if epoch is None and step is None:
            numbers = _NUMBER.findall(stem)
            step = numbers[0] if len(numbers) == 1 else None
    if epoch is None and step is None:
        return None
    epoch = int(epoch if epoch is not None else step)
    return epoch, int(step if step is not None else epoch)


def find_checkpoints(
    directory: str | os.PathLike, pattern: str | None = None
) -> tuple[list[Checkpoint], list[tuple[str, str]]]:
    """The checkpoints in ``directory`` ordered by (step, epoch), and the names skipped (why)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"checkpoint directory {directory} is not a directory")
    if pattern is not None:
        try:
            compiled = re.compile(pattern)
        except re.error as error:
            raise UserError(
                f"--pattern {pattern!r} is not a regular expression ({error})"
            ) from None
        if not {"epoch", "step"} & set(compiled.groupindex):
            raise UserError(
                f"--pattern {pattern!r} needs a named group (?P<step>...) or (?P<epoch>...)"
            )
    found, skipped = [], []
    for entry in sorted(directory.iterdir()):
        if entry.is_dir():
            weights = next((entry / n for n in FOLDER_WEIGHTS if (entry / n).is_file()), None)
            if weights is None:
                if any(entry.glob("model-*-of-*.safetensors")):
                    skipped.append((entry.name, "sharded weights (model-*-of-*) are not read"))
                continue  # not a checkpoint folder
        elif entry.suffix in WEIGHT_SUFFIXES:
            weights = entry
        else:
            continue
        position = parse_position(entry.name, pattern)
        if position is None:
            skipped.append((entry.name, "no step or epoch in its name; give --pattern"))
            continue
        found.append(Checkpoint(weights, entry.name, *position))
    found.sort(key=lambda c: (c.step, c.epoch))
    unique = []
    for checkpoint in found:
        if unique and (unique[-1].step, unique[-1].epoch) == (checkpoint.step, checkpoint.epoch):
            skipped.append(
                (checkpoint.name, f"same epoch and step as {unique[-1].name}; kept that one")
            )
            continue
        unique.append(checkpoint)
    return unique, skipped


# --------------------------------------------------------------- loading


def load_state_dict(path: str | os.PathLike, device: str = "cpu") -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file, on ``device``; never unpickles anything.

    Raises CheckpointError naming the file when it is unreadable or holds
    anything other than tensors (optionally nested under ``state_dict``).
    """
    path = Path(path)
    label = checkpoint_label(path)
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise CheckpointError(
                f'{label}: reading .safetensors needs safetensors: pip install "trainmap[hf]"'
            ) from None
        try:
            return load_file(path, device=device)
        except Exception as error:  # noqa: BLE001 - any damage to an untrusted file, in one line
            raise CheckpointError(
                f"{label}: not a readable .safetensors file ({_first(error)})"
            ) from None
    try:
        loaded = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as error:
        # torch's weights-only unpickler names the object it refused to build
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        if refused is None:
            reason = _WEIGHTS_ONLY_DETAIL.search(str(error))
            detail = reason.group(1).strip() if reason else _first(error)
            raise CheckpointError(
                f"{label}: unreadable (not a torch checkpoint: {detail})"
            ) from None
        raise CheckpointError(
            f"{label}: holds Python objects that only pickle can load ({refused.group(1)}), "
            "and trainmap never unpickles; save model.state_dict() or .safetensors instead"
        ) from None
    except Exception as error:  # noqa: BLE001 - truncated, not a torch file, ...
        raise CheckpointError(
            f"{label}: unreadable ({type(error).__name__}: {_first(error)})"
        ) from None
    if isinstance(loaded, Mapping):
        for key in STATE_DICT_KEYS:
            if isinstance(loaded.get(key), Mapping):
                loaded = loaded[key]
                break
    if not isinstance(loaded, Mapping) or not loaded:
        raise CheckpointError(f"{label}: holds a {type(loaded).__name__}, not a state dict")
    not_tensors = [str(k) for k, v in loaded.items() if not torch.is_tensor(v)]
    if not_tensors:
        raise CheckpointError(
            f"{label}: not a state dict of tensors (e.g. {', '.join(not_tensors[:3])} "
            "are not tensors)"
        )
    return dict(loaded)


def checkpoint_label(path: Path) -> str:
    """How messages name a checkpoint: the file, or ``checkpoint-N/model.safetensors``."""
    return f"{path.parent.name}/{path.name}" if path.name in FOLDER_WEIGHTS else path.name


def _first(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__


def load_function(spec: str) -> Callable:
    """``MODULE:FUNCTION`` or ``path/to/file.py:FUNCTION`` -> the function (UserError if not)."""
    module_name, _, attribute = spec.rpartition(":")
    if not module_name or not attribute:
        raise UserError(f"{spec!r} must be MODULE:FUNCTION (e.g. mypkg.models:make_model)")
    try:
        if module_name.endswith(".py"):
            file = Path(module_name)
            if not file.is_file():
                raise UserError(f"{spec!r}: no file {file}")
            module_spec = importlib.util.spec_from_file_location(file.stem, file)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules.setdefault(file.stem, module)
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ImportError as error:
        raise UserError(f"{spec!r}: cannot import {module_name} ({error})") from None
    function = getattr(module, attribute, None)
    if not callable(function):
        raise UserError(f"{spec!r}: {module_name} has no function {attribute!r}")
    return function


# ------------------------------------------------------------- importing


def import_checkpoints(
    directory: str | os.PathLike,
    model_factory: Callable[[], nn.Module],
    run_dir: str | os.PathLike,
    hook_points: Iterable[str] | None = None,
    *,
    task_metrics: TaskMetrics | None = None,
    pattern: str | None = None,
    device: str = "cpu",
    config: Mapping[str, Any] | None = None,
    task: str = "custom",
    seed: int | None = None,
    split_heads: Mapping[str, int | tuple[int, int]] | None = None,
    include_gains: bool = False,
    overwrite: bool = False,
    on_skip: Callable[[str, str], None] | None = None,
) -> ImportResult:
    """Write one row per usable checkpoint of ``directory`` into ``run_dir``, in step order.

    ``model_factory()`` builds the model the state dicts load into (strictly: every
    key must match). ``hook_points`` as for Tracker (checked on the first model,
    before anything is written). The weights stay on ``device``; only the
    statistics move to the CPU. ``on_skip(name, reason)`` hears of each skipped
    checkpoint as it happens (the result lists them too). A run with no usable
    checkpoint is not created: UserError, with the reasons.
    """
    run_dir = Path(run_dir)
    rundir.run_path(run_dir.parent.parent, run_dir.parent.name, run_dir.name)  # names first
    checkpoints, skipped = find_checkpoints(directory, pattern)
    notify = on_skip or (lambda name, reason: None)
    for name, reason in skipped:
        notify(name, reason)
    model = _make_model(model_factory, device)
    resolve_hook_points(model, hook_points, include_gains)  # a typo fails before any loading
    result = ImportResult(Path(run_dir), skipped=list(skipped))
    tracker = None
    try:
        for checkpoint in checkpoints:
            try:
                state = load_state_dict(checkpoint.path, device)
                _load_into(model, state, checkpoint)
            except CheckpointError as error:
                reason = str(error).removeprefix(f"{checkpoint_label(checkpoint.path)}: ")
                result.skipped.append((checkpoint.name, reason))
                notify(checkpoint.name, reason)
                continue
            if tracker is None:  # the run directory exists once one checkpoint is usable
                tracker = Tracker(
                    model,
                    hook_points,
                    run_dir=run_dir,
                    config={"imported_from": str(Path(directory).resolve()), **dict(config or {})},
                    task=task,
                    seed=seed,
                    split_heads=split_heads,
                    include_gains=include_gains,
                    overwrite=overwrite,
                )
                result.path = tracker.path
            scalars = {}
            if task_metrics is not None:
                scalars = dict(task_metrics(model, checkpoint.epoch, checkpoint.step))
            tracker.log(checkpoint.epoch, step=checkpoint.step, **scalars)
            result.imported.append(checkpoint)
    except BaseException as error:
        if tracker is not None:
            tracker.__exit__(type(error), error, None)
        raise
    if tracker is None:
        reasons = "; ".join(f"{name}: {reason}" for name, reason in result.skipped[:5])
        raise UserError(
            f"no usable checkpoint in {directory}" + (f" ({reasons})" if reasons else "")
        )
    tracker.finish("completed")
    return result


def _make_model(factory: Callable[[], nn.Module], device: str) -> nn.Module:
    try:
        model = factory()
    except UserError:
        raise
    except Exception as error:  # noqa: BLE001 - the user's code: say whose it is, in one line
        raise UserError(
            f"the model factory raised {type(error).__name__}: {_first(error)}"
        ) from None
    if not isinstance(model, nn.Module):
        raise UserError(f"the model factory returned a {type(model).__name__}, not a torch module")
    return model.to(device)


def _load_into(model: nn.Module, state: Mapping[str, torch.Tensor], checkpoint: Checkpoint):
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        # torch lists every missing and unexpected key; the first few say enough
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        detail = " ".join(lines[1:3]) if len(lines) > 1 else _first(error)
        raise CheckpointError(
            f"{checkpoint_label(checkpoint.path)}: does not match the model ({detail[:300]})"
        ) from None


# ------------------------------------------------------- built-in tasks


def task_import(task_name: str, preset: str = "quick", seed: int = 0, **overrides: Any):
    """(factory, hook points, split_heads, task_metrics, config) for a built-in task's seed.

    ``task_metrics`` gives what a live run of the task logs besides the weights
    and the training-set numbers: ``eval_loss``/``eval_acc`` on the seed's held-out
    set and the task's own metrics (grad_sym, dist_irr), with the same seeded samples.
    """
    import dataclasses

    from trainmap.trainer.tasks import get_task
    from trainmap.trainer.train import evaluate

    task = get_task(task_name)
    config = task.config(preset, seed=seed, **overrides)
    data = task.make_data(config).to(config.device)

    def metrics(model: nn.Module, epoch: int, step: int) -> dict[str, float]:
        values = evaluate(model, task, data)
        if task.extra_metrics is not None:
            values.update(task.extra_metrics(model, config, epoch))
        return values

    split = task.split_heads(config) if task.split_heads else None
    hooks = config.hook_points or task.hook_points
    return (lambda: task.make_model(config)), hooks, split, metrics, dataclasses.asdict(config)


__all__ = ["import_checkpoints", "find_checkpoints", "load_state_dict", "parse_position"]
