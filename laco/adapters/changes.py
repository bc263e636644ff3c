"""Reversible instance-level changes: what a whole-model adapter changes on a model, its config or its processor,
recorded so that :func:`laco.remove` puts back exactly what was there.

Undo steps are small objects rather than closures, so ``copy.deepcopy`` of a patched model (EMA copies, some
distributed wrappers) maps them to the copy's modules, as it does laco's hooks.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from torch import nn

from .base import Undo


class _Restore:
    def __init__(self, obj: Any, name: str, value: Any) -> None:
        self.obj, self.name, self.value = obj, name, value

    def __call__(self) -> None:
        setattr(self.obj, self.name, self.value)


class _Unshadow:
    """Put back what an instance held under ``name`` before :meth:`Changes.override`: its own earlier value, or
    nothing (the class attribute shows through again)."""

    def __init__(self, obj: Any, name: str, before: Any) -> None:
        self.obj, self.name, self.before = obj, name, before

    def __call__(self) -> None:
        if self.before is _ABSENT:
            object.__delattr__(self.obj, self.name)
        else:
            object.__setattr__(self.obj, self.name, self.before)


class _Absent:
    """ "Nothing was there": one object that copies and pickles as itself, so an undo step in a deep copy of a
    model still recognises it."""

    def __deepcopy__(self, memo: dict) -> _Absent:
        return self

    def __copy__(self) -> _Absent:
        return self

    def __reduce__(self) -> str:
        return "_ABSENT"


_ABSENT = _Absent()


class _RemovePreHook:
    """Remove a forward pre-hook by its id from the module's own dicts (a deep copy has the same ids in its copies,
    where a ``RemovableHandle`` would still point at the original's)."""

    def __init__(self, module: nn.Module, hook_id: int) -> None:
        self.module, self.hook_id = module, hook_id

    def __call__(self) -> None:
        self.module._forward_pre_hooks.pop(self.hook_id, None)
        self.module._forward_pre_hooks_with_kwargs.pop(self.hook_id, None)


class _RemoveChild:
    def __init__(self, module: nn.Module, name: str) -> None:
        self.module, self.name = module, name

    def __call__(self) -> None:
        self.module._modules.pop(self.name, None)


class Changes:
    """Collects instance-level changes and the steps that undo them (run in reverse by :func:`laco.remove`)."""

    def __init__(self) -> None:
        self.undo: list[Undo] = []

    def set(self, obj: Any, name: str, value: Any) -> None:
        """``obj.name = value`` on this instance; undone by restoring the old value (never a class attribute)."""
        self.undo.append(_Restore(obj, name, getattr(obj, name)))
        setattr(obj, name, value)

    def override(self, obj: Any, name: str, value: Any) -> None:
        """Shadow a class attribute (a method the model or processor calls on itself) with ``value`` on this
        instance; undone by removing the instance's attribute, so ``vars(obj)`` is as before. :meth:`set` would
        leave the bound method behind as an instance attribute."""
        self.undo.append(_Unshadow(obj, name, vars(obj).get(name, _ABSENT)))
        object.__setattr__(obj, name, value)  # a plain attribute even on an nn.Module or a processor

    def config_view(self, module: nn.Module, vision: dict[str, Any] | None = None, **values: Any) -> None:
        """Give ``module`` its own shallow copy of its config with ``values`` (and ``vision`` in a copy of its
        ``vision_config``) changed.

        For code that reads geometry from the config at forward time (LLaVA-OneVision's per-tile grid
        ``image_size // patch_size``, InternVL's ``downsample_ratio``) while the checkpoint's config must keep the
        values that build the model: ``save_pretrained`` writes the top-level ``model.config``, which stays as it was.
        """
        view = copy.copy(module.config)
        for name, value in values.items():
            setattr(view, name, value)
        if vision:
            view.vision_config = copy.copy(view.vision_config)
            for name, value in vision.items():
                setattr(view.vision_config, name, value)
        self.set(module, "config", view)

    def add_child(self, module: nn.Module, name: str, child: nn.Module) -> None:
        """A new child module ``name`` of ``module`` (saved, cast and moved with it); undone by removing it."""
        if name in module._modules:
            raise ValueError(f"{type(module).__name__} already has a child {name!r}; laco.remove it first.")
        module.add_module(name, child)
        self.undo.append(_RemoveChild(module, name))

    def forward_pre_hook(self, module: nn.Module, hook: Callable, with_kwargs: bool = False) -> None:
        handle = module.register_forward_pre_hook(hook, with_kwargs=with_kwargs)
        self.undo.append(_RemovePreHook(module, handle.id))

    def revert(self) -> None:
        """Undo every change so far, newest first."""
        for undo in reversed(self.undo):
            undo()
        self.undo.clear()


__all__ = ["Changes"]
