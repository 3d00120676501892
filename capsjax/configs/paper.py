"""paper: the paper's / official code's settings (meant for a GPU).

    capsjax train --config paper --data-dir ../shared/tensorflow_datasets --workdir runs/paper

Adam, lr 1e-3 decayed x0.96 every 2,000 steps (staircase), batch 128, 3 routing iterations,
random shifts of up to 2 px, reconstruction loss = 0.0005 x sum of squared errors. The paper does
not state the run length; 100 epochs (46,800 steps) is our choice.
"""

from capsjax.config import TrainConfig


def get_config() -> TrainConfig:
  return TrainConfig(batch_size=128, epochs=100, learning_rate=1e-3, decay_rate=0.96,
                     decay_steps=2000, log_every=50, eval_every=2340, checkpoint_every=2000)
