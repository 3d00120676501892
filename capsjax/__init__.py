"""capsjax: Capsule Networks ("Dynamic Routing Between Capsules", Sabour et al. 2017) in JAX."""

from capsjax import losses, routing
from capsjax.cnn import BaselineCNN
from capsjax.model import CapsNet, CapsNetOutput, count_params
from capsjax.squash import safe_length, squash

__version__ = "0.1.0"
__all__ = ["BaselineCNN", "CapsNet", "CapsNetOutput", "Prediction", "TrainedModel", "count_params",
           "fit", "load", "losses", "routing", "safe_length", "squash"]

_API = ("Prediction", "TrainedModel", "fit", "load")


def __getattr__(name):  # capsjax.load / capsjax.fit import the training stack only when used
  if name in _API:
    from capsjax import api
    return getattr(api, name)
  raise AttributeError(f"module 'capsjax' has no attribute {name!r}")
