"""TensorBoard logs of a training run (`capsjax train --tensorboard`), through tensorboardX.

Writes to `WORKDIR/tensorboard/` the same scalars as `metrics.jsonl` (`train/loss`,
`train/train_accuracy`, ..., `test/test_accuracy`, ...) and, at each test evaluation, an image of
a few test digits (top row) above their reconstructions (bottom row). View with
`tensorboard --logdir WORKDIR/tensorboard`. tensorboardX is an optional dependency:
`pip install "capsjax[tensorboard]"`.
"""

from pathlib import Path
from typing import Any

import numpy as np

from capsjax.nn.inputs import to_float

SUBDIR = "tensorboard"
_NOT_SCALARS = ("step", "split")


def check_available() -> None:
  """Raises ValueError (one line) if tensorboardX is not installed."""
  try:
    import tensorboardX  # noqa: F401
  except ImportError:
    raise ValueError("--tensorboard needs tensorboardX: pip install \"capsjax[tensorboard]\" (or "
                     "pip install tensorboardX).") from None


class TensorBoardWriter:
  """Scalars of metrics records and reconstruction images as TensorBoard events."""

  def __init__(self, workdir: Path):
    check_available()
    from tensorboardX import SummaryWriter

    self.directory = Path(workdir) / SUBDIR
    self._writer = SummaryWriter(str(self.directory))

  def write(self, record: dict[str, Any]) -> None:
    """Each number of a metrics.jsonl record as scalar `SPLIT/KEY` at `record["step"]`."""
    for key, value in record.items():
      if key not in _NOT_SCALARS and isinstance(value, (int, float)):
        self._writer.add_scalar(f"{record['split']}/{key}", value, record["step"])
    self._writer.flush()

  def images(self, step: int, inputs: np.ndarray, reconstructions: np.ndarray) -> None:
    """`inputs` and `reconstructions` [N, H, W, C] as one grid image: inputs in the top row,
    reconstructions below. Each uint8 0..255 or float in [0, 1] (`capsjax.nn.inputs.to_float`);
    ValueError naming any other dtype."""
    rows = [np.concatenate(list(to_float(np.asarray(x))), axis=1)
            for x in (inputs, reconstructions)]
    grid = np.clip(np.concatenate(rows, axis=0), 0.0, 1.0)  # [2H, N*W, C]
    self._writer.add_image("test/reconstructions", grid, step, dataformats="HWC")
    self._writer.flush()

  def close(self) -> None:
    """Flushes and closes the event file."""
    self._writer.close()
