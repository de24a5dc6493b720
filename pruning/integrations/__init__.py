"""PruneScope inside other tools.

- ``lmms_eval``: the ``prunescope`` model of lmms-eval 0.7 (registered through the ``lmms_eval.models`` entry-point
  group in pyproject.toml), every strategy through the engine, data-parallel under torchrun / accelerate launch.
- ``shapes_task``: the ``prunescope_shapes`` lmms-eval task (the embedded model's held-out questions), exported to
  files on disk and loaded offline.
- ``cli``: ``python -m pruning.integrations export-task`` (write the task) and ``table`` (lmms-eval results files as
  one markdown table: accuracy next to the kept tokens and the cost).

Only ``lmms_eval`` imports lmms-eval (installed from the test lock requirements-dev.txt, docs/evaluation.md).
"""
