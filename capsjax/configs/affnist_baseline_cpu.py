"""affnist_baseline_cpu: the baseline CNN on expanded MNIST (§5.2) on a 2-core CPU (~30 min).

    capsjax train --config affnist_baseline_cpu --data-dir ../shared/tensorflow_datasets \
        --workdir runs/affnist_baseline_cpu
    capsjax eval --workdir runs/affnist_baseline_cpu --dataset affnist_style \
        --test-examples 2000 --data-dir ../shared/tensorflow_datasets

The baseline CNN (§5) on the data of `affnist_cpu`, cut to 150 steps of batch 32 with the learning
rate decayed x0.9 every 12 steps, and tested on 2,000 examples: on 40x40 its SAME convolutions
cost ~8 GFLOP per image and its first dense layer has 67M weights: it trained at 3.7 images/s
here against CapsNet's ~96 on MNIST, and 2,000 test images took 4 min 41 s (2026-11-28).
"""

import dataclasses

from capsjax.configs import affnist_cpu


def get_config():
  return dataclasses.replace(affnist_cpu.get_config(), arch="baseline", max_steps=150,
                             decay_steps=12, log_every=10, checkpoint_every=50,
                             test_examples=2000)
