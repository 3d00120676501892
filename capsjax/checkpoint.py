"""Orbax checkpoints of {model + optimizer state, step, RNG seed, config} in `workdir/checkpoints`.

The RNG state is the run seed: per-step keys are `fold_in(key(seed), step)` and the data order is
a function of (seed, step), so (seed, step) restores both.
"""

import os
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import nnx


class Checkpointer:
  """Saves and restores an `nnx.State` of (model, optimizer) plus JSON metadata."""

  def __init__(self, workdir: str | os.PathLike, keep: int = 3):
    self.directory = Path(workdir).absolute() / "checkpoints"
    # Synchronous saves: the train step donates its state buffers, so an async save could read
    # memory that the next step is already overwriting.
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=False)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    """Step of the newest complete checkpoint, or None."""
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    """Steps of all complete checkpoints kept, oldest first."""
    return sorted(self.manager.all_steps())

  def save(self, step: int, state: nnx.State, meta: dict[str, Any]) -> None:
    """Writes checkpoint `step` (overwriting nothing; Orbax finalises it atomically)."""
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state.to_pure_dict()),
        meta=ocp.args.JsonSave({**meta, "step": int(step)})), force=True)
    self.manager.wait_until_finished()

  def read_meta(self, step: int | None = None) -> dict[str, Any]:
    """The JSON metadata of checkpoint `step` (default: latest)."""
    step = self._step(step)
    return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def restore(self, state: nnx.State, step: int | None = None) -> tuple[nnx.State, dict]:
    """Fills `state` (a template of the right structure) from checkpoint `step` (default latest).

    Returns:
      (restored state, metadata dict).
    """
    step = self._step(step)
    pure = state.to_pure_dict()
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, pure)
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    nnx.replace_by_pure_dict(state, restored["state"])
    return state, restored["meta"]

  def _step(self, step: int | None) -> int:
    if step is None:
      step = self.latest_step()
    if step is None:
      raise ValueError(f"no checkpoint in {str(self.directory)!r}; train first "
                       "(capsjax train --workdir ...).")
    return step

  def close(self) -> None:
    """Waits for pending writes and releases the manager."""
    self.manager.close()
