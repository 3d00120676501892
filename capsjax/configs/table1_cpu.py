"""table1_cpu: every row of the paper's Table 1 on a 2-core CPU in about 100 minutes in all.

    python experiments/table1.py --preset table1_cpu --seeds 1 \
        --data-dir ../shared/tensorflow_datasets --update-readme

The `quick` preset's schedule cut to 800 steps of batch 32 (0.43 epochs; the learning rate decayed
x0.9 every 60 steps, to 0.25e-3 by the end, as `quick` anneals over its 2,000), so that the
baseline CNN, whose steps cost ~10x a CapsNet step here, also fits: about 6 minutes per CapsNet
row and an hour for the baseline. Its errors are those of a short run, not the paper's.
"""

import dataclasses

from capsjax.configs import quick


def get_config():
  return dataclasses.replace(quick.get_config(), max_steps=800, decay_steps=60,
                             checkpoint_every=200)
