"""A routing rule defined outside capsjax, registered by name and trained through the CLI.

    python experiments/custom_routing.py --data-dir ../shared/tensorflow_datasets
    python experiments/custom_routing.py --routing-option temperature=0.25 --max-steps 2000 \
        --batch-size 32 --train-examples 60000 --test-examples 10000     # a real run

The rule is dynamic routing with tempered couplings, c_ij = softmax_j(b_ij / temperature): below 1
each input commits to fewer parents per iteration, above 1 the couplings stay closer to uniform
(temperature 1 is the paper's Procedure 1). Arguments after the script name are passed to
`capsjax train` (they override the smoke-run defaults below).
"""

import sys

import jax
import jax.numpy as jnp

import capsjax
from capsjax import cli


@capsjax.routing.register("tempered")
def tempered_routing(u_hat, *, num_iters=3, temperature=0.5):
  """u_hat [N_in, N_out, D] -> RoutingResult(v [N_out, D], c [N_in, N_out])."""
  capsjax.routing.check_votes(u_hat, num_iters)
  b = jnp.zeros(u_hat.shape[:2], u_hat.dtype)
  for it in range(num_iters):
    c = jax.nn.softmax(b / temperature, axis=-1)
    v = capsjax.squash(jnp.einsum("ij,ijd->jd", c, u_hat))
    if it < num_iters - 1:
      b = b + jnp.einsum("ijd,jd->ij", u_hat, v)
  return capsjax.routing.RoutingResult(v=v, c=c)


SMOKE = ["--routing", "tempered", "--max-steps", "30", "--batch-size", "16",
         "--train-examples", "2048", "--test-examples", "500", "--workdir", "runs/custom_routing",
         "--checkpoint-every", "30"]

if __name__ == "__main__":
  sys.exit(cli.main(["train", *SMOKE, *sys.argv[1:]]))
