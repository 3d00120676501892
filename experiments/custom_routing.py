"""A routing rule defined outside capsjax, registered by name and trained through the CLI.

    python experiments/custom_routing.py --data-dir ../shared/tensorflow_datasets
    python experiments/custom_routing.py --max-steps 2000 --train-examples 60000  # a real run

The rule is max-min normalised routing (Zhao, Kleinhans, Sandhu, Patel & Unnikrishnan, "Capsule
Networks with Max-Min Normalization", 2019): dynamic routing with the softmax over outputs replaced
by a min-max rescaling of each input's logits to [lower, 1]. Arguments after the script name are
passed to `capsjax train` (they override the smoke-run defaults below).
"""

import sys

import jax.numpy as jnp

import capsjax
from capsjax import cli


@capsjax.routing.register("max_min")
def max_min_routing(u_hat, *, num_iters=3, lower=0.01):
  """u_hat [N_in, N_out, D] -> RoutingResult(v [N_out, D], c [N_in, N_out])."""
  capsjax.routing.check_votes(u_hat, num_iters)
  b = jnp.zeros(u_hat.shape[:2], u_hat.dtype)
  for it in range(num_iters):
    lo, hi = b.min(axis=1, keepdims=True), b.max(axis=1, keepdims=True)
    span = jnp.where(hi > lo, hi - lo, 1.0)
    c = jnp.where(hi > lo, lower + (1 - lower) * (b - lo) / span, 1.0)  # all 1 while b is flat
    v = capsjax.squash(jnp.einsum("ij,ijd->jd", c, u_hat))
    if it < num_iters - 1:
      b = b + jnp.einsum("ijd,jd->ij", u_hat, v)
  return capsjax.routing.RoutingResult(v=v, c=c)


SMOKE = ["--routing", "max_min", "--max-steps", "30", "--batch-size", "16",
         "--train-examples", "2048", "--test-examples", "500", "--workdir", "runs/custom_routing",
         "--checkpoint-every", "30"]

if __name__ == "__main__":
  sys.exit(cli.main(["train", *SMOKE, *sys.argv[1:]]))
