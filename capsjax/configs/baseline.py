"""baseline: the paper's baseline CNN (§5) with the `paper` preset's schedule (meant for a GPU).

    capsjax train --config baseline --data-dir ../shared/tensorflow_datasets --workdir runs/baseline

Three 5x5 convolutions (256, 256, 128 channels, SAME), fully connected 328 and 192, dropout 0.5,
softmax cross-entropy: 35,445,522 parameters. Same data, random shifts of up to 2 px, Adam and
the official continuous decay as `paper`; the paper gives no schedule of its own for the
baseline. On a CPU, `--config quick --arch baseline` runs the short schedule (about 10x slower
per step than CapsNet: its convolutions cost ~3.5 GFLOP per 28x28 image against CapsNet's ~0.4).
"""

import dataclasses

from capsjax.configs import paper


def get_config():
  return dataclasses.replace(paper.get_config(), arch="baseline")
