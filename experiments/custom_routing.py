"""A routing rule defined outside capsjax: a module of your own that registers it (a plugin).

    python experiments/custom_routing.py --data-dir ../shared/tensorflow_datasets   # smoke run
    export TFDS_DATA_DIR=../shared/tensorflow_datasets        # or --data-dir on each command
    PYTHONPATH=experiments capsjax train --routing custom_routing:tempered --workdir runs/t \
        --routing-option temperature=0.25 --max-steps 2000 --batch-size 32         # a real run
    PYTHONPATH=experiments capsjax eval --workdir runs/t       # imports custom_routing itself
    PYTHONPATH=experiments capsjax rules --plugin custom_routing    # tempered, its options

`--routing MODULE:NAME` imports MODULE (this file, found through PYTHONPATH) and trains with the
rule it registers as NAME; the run records MODULE in its config, so eval and resume import it again
with no extra flag. Put in a package that declares a "capsjax.routing" entry point, the rule needs
no flag at all (docs/routing.md, "Write your own routing rule").

The rule is dynamic routing with tempered couplings, c_ij = softmax_j(b_ij / temperature): below 1
each input commits to fewer parents per iteration, above 1 the couplings stay closer to uniform
(temperature 1 is the paper's Procedure 1). Run as a script, this file trains it through the CLI
(`capsjax train --routing custom_routing:tempered` with the smoke-run defaults below; arguments
after the script name are passed on and override them).
"""

import sys

import jax
import jax.numpy as jnp

import capsjax
from capsjax import cli


@capsjax.routing.register("tempered", paper="Sabour et al. 2017, Procedure 1, tempered couplings")
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


SMOKE = ["--routing", "custom_routing:tempered", "--max-steps", "30", "--batch-size", "16",
         "--train-examples", "2048", "--test-examples", "500", "--workdir", "runs/custom_routing",
         "--checkpoint-every", "30"]

if __name__ == "__main__":  # the folder of this script is on sys.path, so custom_routing imports
  sys.exit(cli.main(["train", *SMOKE, *sys.argv[1:]]))
