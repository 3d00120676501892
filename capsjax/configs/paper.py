"""paper: the paper's settings with the official code's schedule, 100 epochs (meant for a GPU).

    capsjax train --config paper --data-dir ../shared/tensorflow_datasets --workdir runs/paper

Adam, lr 1e-3 decayed x0.96 per 2,000 steps *continuously* and floored at 1e-6, as the official
code does (`tf.train.exponential_decay` without `staircase`, then `tf.maximum(lr, 1e-6)`, in
Sarasra/models research/capsules/models/model.py); batch 128, 3 routing iterations, random
shifts of up to 2 px, reconstruction loss = 0.0005 x sum of squared errors. The paper states no
run length; 100 epochs (46,800 steps) is our own choice. The official README trains MNIST for
300,000 steps at batch 128 (about 640 epochs): that is the `paper_300k` preset.
"""

from capsjax.config import TrainConfig


def get_config() -> TrainConfig:
  return TrainConfig(batch_size=128, epochs=100, learning_rate=1e-3, decay_rate=0.96,
                     decay_steps=2000, decay_staircase=False, min_learning_rate=1e-6,
                     log_every=50, eval_every=2340, checkpoint_every=2000)
