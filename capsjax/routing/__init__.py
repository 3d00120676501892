"""Routing rules: pure per-example functions `rule(u_hat, *, num_iters, ...) -> RoutingResult`.

One module per rule; `capsjax.routing.dynamic_routing` is the paper's Procedure 1.
"""

from capsjax.routing.base import RoutingResult, RoutingRule
from capsjax.routing.dynamic import dynamic_routing

__all__ = ["RoutingResult", "RoutingRule", "dynamic_routing"]
