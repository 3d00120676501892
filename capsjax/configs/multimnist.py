"""multimnist: the paper's MultiMNIST experiment (§6), meant for a GPU.

    capsjax train --config multimnist --data-dir ../shared/tensorflow_datasets --workdir runs/mm

CapsNet with the paper's settings (3 routing iterations, Adam 1e-3 decayed x0.96 per 2,000
steps continuously and floored at 1e-6 as in the official code, batch 128) on pairs of
overlapping digits built on the fly (capsjax/multimnist.py): the
60M training pairs once (468,750 steps; the paper does not state its run length, this is our
choice), then the error on all 10M test pairs, recorded as its test_examples so that `capsjax
eval` of the run does the same (--test-examples N for fewer). The paper: 5.2%.
"""

from capsjax.config import TrainConfig


def get_config() -> TrainConfig:
  return TrainConfig(dataset="multimnist", batch_size=128, epochs=1, learning_rate=1e-3,
                     decay_rate=0.96, decay_steps=2000, decay_staircase=False,
                     min_learning_rate=1e-6, test_examples=10_000_000, log_every=100, eval_every=0,
                     checkpoint_every=5000)
