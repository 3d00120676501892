"""capsjax: Capsule Networks ("Dynamic Routing Between Capsules", Sabour et al. 2017) in JAX."""

from capsjax import losses, routing
from capsjax.model import CapsNet, CapsNetOutput, count_params
from capsjax.squash import safe_length, squash

__version__ = "0.1.0"
__all__ = ["CapsNet", "CapsNetOutput", "count_params", "losses", "routing", "safe_length",
           "squash"]
