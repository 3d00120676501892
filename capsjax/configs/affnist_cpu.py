"""affnist_cpu: the affine-robustness experiment (§5.2) for CapsNet on a 2-core CPU (~25 min).

    capsjax train --config affnist_cpu --data-dir ../shared/tensorflow_datasets \
        --workdir runs/affnist_cpu
    capsjax eval --workdir runs/affnist_cpu --dataset affnist_style --test-examples 10000 \
        --data-dir ../shared/tensorflow_datasets

The `affnist` preset cut to 800 steps of batch 32 (0.43 epoch of expanded MNIST), the learning
rate decayed x0.9 every 60 steps (as `table1_cpu`), tested on the 10,000 centred expanded-MNIST
test digits: 24 min 46 s here (2026-11-28), then ~4 min for 10,000 affNIST-style examples. The
baseline CNN's CPU run is `affnist_baseline_cpu` (its steps cost ~5x more: 3.7 images/s vs 19.7).
"""

import dataclasses

from capsjax.configs import affnist


def get_config():
  return dataclasses.replace(affnist.get_config(), batch_size=32, epochs=None,
                             decay_staircase=True, min_learning_rate=0.0, max_steps=800,
                             decay_rate=0.9, decay_steps=60, log_every=20, eval_every=0,
                             checkpoint_every=200)
