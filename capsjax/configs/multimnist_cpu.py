"""multimnist_cpu: MultiMNIST (§6) on a 2-core CPU in about 20 minutes.

    capsjax train --config multimnist_cpu --data-dir ../shared/tensorflow_datasets \
        --workdir runs/multimnist_cpu

The `multimnist` preset cut to 1,000 steps of batch 32 (32,000 of the 60M training pairs), the
learning rate decayed x0.9 every 75 steps so that it anneals within the run, and evaluated on
10,000 test pairs (one of the 1,000 pairs of each test digit, `datasets.subset`). A short run's
error, not the paper's 5.2%.
"""

import dataclasses

from capsjax.configs import multimnist


def get_config():
  return dataclasses.replace(multimnist.get_config(), batch_size=32, epochs=None,
                             decay_staircase=True, min_learning_rate=0.0,
                             max_steps=1000, decay_rate=0.9, decay_steps=75, log_every=20,
                             checkpoint_every=250, test_examples=10_000)
