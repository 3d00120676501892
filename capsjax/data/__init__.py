"""Data: stored splits (`stored`), data order (`order`), the pure transforms run inside the
compiled step (`augment`, the MultiMNIST generator `multimnist`), the dataset records and their
registry (`dataset`, `datasets`), and the device/host input pipeline (`pipeline`).

The names most scripts use are here too: `load_split`, `Split`, `check_batch`,
`resolve_data_dir`, `batch_indices`, `steps_per_epoch`.
"""

from capsjax.data.order import batch_indices, steps_per_epoch
from capsjax.data.storage import (DATA_DIR_ENV, SUPPORTED_DATASETS, Split, check_batch,
                                  load_split, resolve_data_dir)

__all__ = ["DATA_DIR_ENV", "SUPPORTED_DATASETS", "Split", "batch_indices", "check_batch",
           "load_split", "resolve_data_dir", "steps_per_epoch"]
