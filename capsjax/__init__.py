"""capsjax: Capsule Networks ("Dynamic Routing Between Capsules", Sabour et al. 2017) in JAX.

The names a script uses: the networks (`CapsNet`, `BaselineCNN`, `EfficientCapsNet`, from
`capsjax.nn`), `squash` and `safe_length` (Eq. 1), the losses (`capsjax.losses`: margin loss,
Eq. 4, and the reconstruction loss), the routing rules (`capsjax.routing`), and trained models
(`fit`, `load`, `load_pretrained`, `TrainedModel`, `Prediction`, from `capsjax.api`, imported
when first used).
"""

from capsjax import routing
from capsjax.nn import (BaselineCNN, CapsNet, CapsNetOutput, EfficientCapsNet, count_params,
                        losses, safe_length, squash)

__version__ = "0.1.0"
__all__ = ["BaselineCNN", "CapsNet", "CapsNetOutput", "EfficientCapsNet", "Prediction",
           "TrainedModel", "count_params", "fit", "load", "load_pretrained", "losses", "routing",
           "safe_length", "squash"]

_API = ("Prediction", "TrainedModel", "fit", "load", "load_pretrained")


def __getattr__(name):  # capsjax.load / capsjax.fit import the training stack only when used
  if name in _API:
    from capsjax import api
    return getattr(api, name)
  raise AttributeError(f"module 'capsjax' has no attribute {name!r}")
