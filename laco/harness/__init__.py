"""Evaluate laco checkpoints with lmms-eval: a model plugin, local easy-VQA tasks, and a suite runner.

* :mod:`laco.harness.lmms_model` is the lmms-eval model ``laco`` (``lmms-eval --model laco --model_args
  pretrained=runs/<run>/final``). lmms-eval finds it through the ``lmms_eval.models`` entry point that
  :func:`laco.harness.registration.manifests` answers; nothing of lmms-eval is patched or forked.
* :mod:`laco.harness.tasks` writes the lmms-eval task folder for easy-VQA (open-ended exact match and colour as
  multiple choice) from the split laco converts into its cache; :mod:`laco.harness.easyvqa_task` holds the prompt
  and scoring functions those YAML files name.
* :mod:`laco.harness.suite` runs a list of tasks on a model and its baselines and writes one table
  (``laco eval --model A --suite TASKS --baseline B``).

lmms-eval is optional (``pip install -e ".[eval]"`` plus ``lmms-eval --no-deps``, see ``scripts/install.sh``):
importing this package does not import it.
"""

from .tasks import EASYVQA_TASKS, write_easyvqa_tasks

__all__ = ["EASYVQA_TASKS", "write_easyvqa_tasks"]
