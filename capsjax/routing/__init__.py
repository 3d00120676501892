"""Routing rules: pure per-example functions `rule(u_hat, *, num_iters, ...) -> RoutingResult`.

One module per rule, each registered by name (`register`, `get`, `available`):
`dynamic` (Sabour et al. 2017, the paper's Procedure 1), `uniform` (no routing),
`self_attention` (Efficient-CapsNet), `inverted_dot_product` (Tsai et al. 2020) and `em`
(Hinton et al. 2018). Importing this package registers them all; rules of installed plugins
("capsjax.routing" entry points) register on the first lookup by name, plugin modules with
`load_plugins`.
"""

from capsjax.routing.base import (ParamInit, RoutingResult, RoutingRule, check_num_iters,
                                  check_votes)
from capsjax.routing.registry import (ENTRY_POINT_GROUP, DuplicateRuleError, RoutingPluginWarning,
                                      RuleInfo, available, check_options, describe, get, info,
                                      init_params, load_plugins, register)
from capsjax.routing.dynamic import (check_vote_chunking, dynamic_routing,  # noqa: E402
                                     dynamic_routing_chunked)
from capsjax.routing.em import em_routing  # noqa: E402
from capsjax.routing.inverted_dot_product import inverted_dot_product_routing  # noqa: E402
from capsjax.routing.self_attention import self_attention_routing  # noqa: E402
from capsjax.routing.uniform import uniform_routing  # noqa: E402

__all__ = ["ENTRY_POINT_GROUP", "DuplicateRuleError", "ParamInit", "RoutingPluginWarning",
           "RoutingResult", "RoutingRule", "RuleInfo", "available", "check_num_iters",
           "check_options", "check_vote_chunking", "check_votes", "describe", "dynamic_routing",
           "dynamic_routing_chunked", "em_routing", "get", "info", "init_params",
           "inverted_dot_product_routing", "load_plugins", "register", "self_attention_routing",
           "uniform_routing"]
