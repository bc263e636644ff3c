"""How lmms-eval finds the ``laco`` model: the ``lmms_eval.models`` entry point (see ``pyproject.toml``).

lmms-eval 0.7.3 builds its model registry from its own list, then loads every entry point of the group
``lmms_eval.models`` and registers what it returns: a ``ModelManifest`` (model id -> class path), a list of them,
or a function returning either. We return one manifest; lmms-eval imports :mod:`laco.harness.lmms_model` only
when ``--model laco`` is asked for.
"""

from __future__ import annotations

MODEL_ID = "laco"
CLASS_PATH = "laco.harness.lmms_model.LacoLmms"


def manifests():
    """The entry point's payload: the ``laco`` model's manifest (called by lmms-eval while it builds its registry)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id=MODEL_ID, simple_class_path=CLASS_PATH)]
