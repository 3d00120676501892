"""paper_300k: `paper` run for the official README's length, 300,000 steps (meant for a GPU).

    capsjax train --config paper_300k --data-dir ../shared/tensorflow_datasets --workdir runs/p300k

The official README's MNIST command (Sarasra/models, research/capsules/README.md) is
`python experiment.py --data_dir=$DATA_DIR/mnist_data/ --max_steps=300000` at its default batch
of 128: about 640 epochs of the 60,000 training digits. Everything else is the `paper` preset
(the official continuous decay x0.96 per 2,000 steps, floored at 1e-6: the learning rate ends
at 2.2e-6, above the floor, which it would reach after ~338,000 steps).
"""

import dataclasses

from capsjax.configs import paper


def get_config():
  return dataclasses.replace(paper.get_config(), epochs=None, max_steps=300_000,
                             eval_every=10_000, checkpoint_every=5_000)
