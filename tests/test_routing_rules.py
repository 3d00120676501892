"""Every registered routing rule: registry, shapes, jit == eager, vmap, gradients, references."""

import math
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from capsjax import routing
from capsjax.routing import registry
from test_routing import reference_routing

RULES = ("dynamic", "em", "inverted_dot_product", "self_attention", "uniform")
N_IN, N_OUT, DIM = 12, 5, 4


def votes(seed=0, shape=(N_IN, N_OUT, DIM), scale=0.5):
  return scale * jax.random.normal(jax.random.key(seed), shape)


def rule_kwargs(name, seed=1, n_in=N_IN):
  """A rule's learnable parameters (randomised, so they matter) plus activations if it uses them."""
  kwargs = routing.init_params(name, jax.random.key(seed), n_in, N_OUT, DIM)
  kwargs = {k: v + 0.1 * jax.random.normal(jax.random.key(seed + i), v.shape)
            for i, (k, v) in enumerate(kwargs.items())}
  if routing.info(name).uses_activations:
    kwargs["activations"] = jax.random.uniform(jax.random.key(seed + 7), (n_in,))
  return kwargs


def test_available_lists_the_five_rules():
  assert set(RULES) <= set(routing.available())
  assert routing.get("dynamic") is routing.dynamic_routing


def test_unknown_rule_lists_available():
  with pytest.raises(ValueError, match="unknown routing rule 'nope'; available: dynamic, em"):
    routing.get("nope")


def test_register_custom_rule_and_reject_duplicates(monkeypatch):
  monkeypatch.setattr(registry, "_RULES", dict(registry._RULES))

  @routing.register("halved")
  def halved(u_hat, *, num_iters, scale=0.5):
    res = routing.uniform_routing(u_hat, num_iters=num_iters)
    return res._replace(v=scale * res.v)

  assert "halved" in routing.available() and routing.get("halved") is halved
  with pytest.raises(ValueError, match="already registered"):
    routing.register("halved")(lambda u_hat, *, num_iters: None)
  with pytest.raises(ValueError, match="Python identifier"):
    routing.register("bad name")
  routing.check_options("halved", {"scale": 2.0})
  with pytest.raises(ValueError, match="does not take option.s. temperature; it takes: scale"):
    routing.check_options("halved", {"temperature": 2.0})


@pytest.mark.parametrize("name", RULES)
def test_options_a_rule_does_not_take(name):
  with pytest.raises(ValueError, match=f"routing rule '{name}' does not take option.s. bogus"):
    routing.check_options(name, {"bogus": 1})


@pytest.mark.parametrize("name, options, expected", [
    ("dynamic", {"leaky": "no"}, "leaky of rule 'dynamic' must be a bool (default False), got 'no'"),
    ("dynamic", {"stop_gradient": 1}, "stop_gradient of rule 'dynamic' must be a bool (default "
     "False), got 1"),
    ("em", {"final_lambda": True}, "final_lambda of rule 'em' must be a float (default 0.5), got "
     "True"),
    ("em", {"var_floor": "1e-8"}, "var_floor of rule 'em' must be a float (default 1e-08), got "
     "'1e-8'"),
    ("em", {"scale_free_cost": None}, "scale_free_cost of rule 'em' must be a bool (default True), "
     "got None"),
])
def test_option_values_must_have_their_defaults_type(name, options, expected):
  with pytest.raises(ValueError, match=f"^routing option {re.escape(expected)}\\.$"):
    routing.check_options(name, options)


def test_option_values_of_the_right_type_pass(monkeypatch):
  routing.check_options("dynamic", {"leaky": True, "stop_gradient": np.bool_(False)})
  routing.check_options("em", {"final_lambda": 1, "var_floor": np.float32(1e-6)})  # int for float
  monkeypatch.setattr(registry, "_RULES", dict(registry._RULES))

  @routing.register("typed")
  def typed(u_hat, *, num_iters, steps=2, mode="a", table=None):
    return routing.uniform_routing(u_hat, num_iters=num_iters)

  routing.check_options("typed", {"steps": 3, "mode": "b", "table": [1, 2]})  # None: any value
  for bad, message in (({"steps": 2.0}, "must be an int (default 2), got 2.0"),
                       ({"steps": False}, "must be an int (default 2), got False"),
                       ({"mode": 1}, "must be a value of type str (default 'a'), got 1")):
    with pytest.raises(ValueError, match=re.escape(message)):
      routing.check_options("typed", bad)


@pytest.mark.parametrize("name", RULES)
@pytest.mark.parametrize("shape", [(4, 3), (2, 4, 3, 2)])
def test_wrong_rank_raises(name, shape):
  with pytest.raises(ValueError, match=r"\[N_in, N_out, D_out\]"):
    routing.get(name)(jnp.zeros(shape), num_iters=2)


@pytest.mark.parametrize("name", RULES)
@pytest.mark.parametrize("iters", [0, -2])
def test_num_iters_below_one_raises(name, iters):
  with pytest.raises(ValueError, match="num_iters must be an integer >= 1"):
    routing.get(name)(votes(), num_iters=iters)


class RuleTest(chex.TestCase):

  @chex.variants(with_jit=True)
  @parameterized.product(name=RULES, num_iters=(1, 3))
  def test_shapes_and_jit_equals_eager(self, name, num_iters):
    kwargs = rule_kwargs(name)
    fn = routing.get(name)
    result = self.variant(lambda u, kw: fn(u, num_iters=num_iters, **kw))(votes(), kwargs)
    chex.assert_shape(result.v, (N_OUT, DIM))
    chex.assert_shape(result.c, (N_IN, N_OUT))
    if name in ("em", "inverted_dot_product"):
      chex.assert_shape(result.a, (N_OUT,))
      self.assertTrue(bool(jnp.all((result.a > 0) & (result.a < 1))))
    else:
      self.assertIsNone(result.a)
    chex.assert_tree_all_finite(result)
    eager = fn(votes(), num_iters=num_iters, **kwargs)
    chex.assert_trees_all_close(result, eager, rtol=1e-5, atol=1e-6)

  @parameterized.parameters(*RULES)
  def test_vmap_matches_reference_per_example(self, name):
    batch = votes(3, (4, N_IN, N_OUT, DIM))
    kwargs = rule_kwargs(name)
    act = kwargs.pop("activations", None)
    acts = None if act is None else jnp.stack([act * (k + 1) / 4 for k in range(4)])
    fn = lambda u, a: routing.get(name)(u, num_iters=3, **kwargs,
                                        **({} if a is None else {"activations": a}))
    batched = jax.jit(jax.vmap(fn))(batch, acts)
    for k in range(4):
      v, c, a = reference(name, batch[k], 3, kwargs, None if acts is None else acts[k])
      np.testing.assert_allclose(batched.v[k], v, rtol=1e-4, atol=1e-5)
      np.testing.assert_allclose(batched.c[k], c, rtol=1e-4, atol=1e-6)
      if a is not None:
        np.testing.assert_allclose(batched.a[k], a, rtol=1e-4, atol=1e-6)

  @parameterized.parameters(*RULES)
  def test_finite_gradients(self, name):
    kwargs = rule_kwargs(name)

    def loss(u, kw):
      res = routing.get(name)(u, num_iters=3, **kw)
      score = jnp.sum(res.a) if res.a is not None else jnp.sum(res.v ** 2)
      return score + jnp.sum(res.v)

    for u in (votes(5), jnp.zeros((N_IN, N_OUT, DIM))):
      g_u, g_kw = jax.grad(loss, argnums=(0, 1))(u, kwargs)
      chex.assert_tree_all_finite((g_u, g_kw))
    g_u, _ = jax.grad(loss, argnums=(0, 1))(votes(5), kwargs)
    self.assertGreater(float(jnp.max(jnp.abs(g_u))), 0.0)


# Independent float64 references, written from the papers with explicit loops.

def _squash(s):
  sq = float(np.dot(s, s))
  return sq / (1 + sq) * s / math.sqrt(sq + 1e-7)


def ref_uniform(u_hat):
  u = np.asarray(u_hat, np.float64)
  n_in, n_out, dim = u.shape
  v = np.zeros((n_out, dim))
  for j in range(n_out):
    v[j] = _squash(sum(u[i, j] / n_out for i in range(n_in)))
  return v


def ref_self_attention(u_hat, log_prior):
  u, prior = np.asarray(u_hat, np.float64), np.asarray(log_prior, np.float64)
  n_in, n_out, dim = u.shape
  logits = np.zeros((n_in, n_out))
  for j in range(n_out):
    a = u[:, j] @ u[:, j].T / math.sqrt(dim)  # [N_in, N_in] self-attention matrix
    logits[:, j] = a.sum(axis=1)
  c = np.exp(logits - logits.max(1, keepdims=True))
  c /= c.sum(1, keepdims=True)
  v = np.zeros((n_out, dim))
  for j in range(n_out):
    s = sum(u[i, j] * (c[i, j] + prior[i, j]) for i in range(n_in))
    norm = math.sqrt(float(np.dot(s, s)) + 1e-7)
    v[j] = (1 - math.exp(-norm)) * s / norm
  return v, c


def ref_inverted(u_hat, num_iters, w, b):
  u = np.asarray(u_hat, np.float64)
  n_in, n_out, dim = u.shape
  p = np.zeros((n_out, dim))
  for _ in range(num_iters):
    agree = np.array([[float(np.dot(p[j], u[i, j])) for j in range(n_out)] for i in range(n_in)])
    c = np.exp(agree - agree.max(1, keepdims=True))
    c /= c.sum(1, keepdims=True)
    for j in range(n_out):
      s = sum(c[i, j] * u[i, j] for i in range(n_in))
      p[j] = (s - s.mean()) / math.sqrt(s.var() + 1e-5)
  a = 1 / (1 + np.exp(-(np.sum(np.asarray(w) * p, axis=1) + np.asarray(b))))
  return p, c, a


def ref_em(u_hat, num_iters, act, beta_u, beta_a, final_lambda=0.5, var_floor=1e-8,
           scale_free=True):
  """Procedure 1 of Hinton et al. 2018 with the documented pitfall fixes, per capsule and dim."""
  V = np.asarray(u_hat, np.float64)
  act, beta_u, beta_a = (np.asarray(x, np.float64) for x in (act, beta_u, beta_a))
  n_in, n_out, dim = V.shape
  R = np.full((n_in, n_out), 1.0 / n_out)
  lambdas = [final_lambda * (1 - 0.95 ** (t + 1)) / (1 - 0.95 ** num_iters)
             for t in range(num_iters)]
  for t in range(num_iters):
    mu, var, cost = np.zeros((n_out, dim)), np.zeros((n_out, dim)), np.zeros(n_out)
    totals = [sum(R[i, j] * act[i] for i in range(n_in)) + 1e-12 for j in range(n_out)]
    for j in range(n_out):
      r = np.array([R[i, j] * act[i] for i in range(n_in)])
      for h in range(dim):
        mu[j, h] = sum(r[i] * V[i, j, h] for i in range(n_in)) / totals[j]
        var[j, h] = sum(r[i] * (V[i, j, h] - mu[j, h]) ** 2 for i in range(n_in)) / totals[j]
        var[j, h] += var_floor
        # sigma relative to the votes' RMS sqrt(sigma^2 + mu^2) (the scale-free cost)
        log_rel_sigma = 0.5 * math.log(var[j, h])
        if scale_free:
          log_rel_sigma -= 0.5 * math.log(var[j, h] + mu[j, h] ** 2)
        cost[j] += (beta_u[j] + log_rel_sigma) * totals[j] / np.mean(totals)
    logit = lambdas[t] * (beta_a - cost)
    a = 1 / (1 + np.exp(-logit))
    if t == num_iters - 1:
      return mu, R, a
    for i in range(n_in):
      logp = np.array([math.log(a[j]) - sum(
          (V[i, j, h] - mu[j, h]) ** 2 / (2 * var[j, h]) + 0.5 * math.log(2 * math.pi * var[j, h])
          for h in range(dim)) for j in range(n_out)])
      e = np.exp(logp - logp.max())
      R[i] = e / e.sum()


def reference(name, u_hat, num_iters, params, activations=None):
  """(v, c, a or None) of rule `name` from the float64 references in this file."""
  if name == "dynamic":
    return (*reference_routing(u_hat, num_iters), None)
  if name == "uniform":
    return ref_uniform(u_hat), np.full(u_hat.shape[:2], 1.0 / u_hat.shape[1]), None
  if name == "self_attention":
    return (*ref_self_attention(u_hat, params["log_prior"]), None)
  if name == "inverted_dot_product":
    return ref_inverted(u_hat, num_iters, params["score_weight"], params["score_bias"])
  if name == "em":
    return ref_em(u_hat, num_iters, activations, params["beta_u"], params["beta_a"])
  raise ValueError(name)


@pytest.mark.parametrize("num_iters", [1, 3])
def test_uniform_matches_reference(num_iters):
  res = routing.uniform_routing(votes(11), num_iters=num_iters)
  np.testing.assert_allclose(res.v, ref_uniform(votes(11)), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(res.c, 1.0 / N_OUT, rtol=1e-6)


def test_self_attention_matches_reference():
  prior = rule_kwargs("self_attention")["log_prior"]
  res = routing.self_attention_routing(votes(12), num_iters=1, log_prior=prior)
  v, c = ref_self_attention(votes(12), prior)
  np.testing.assert_allclose(res.v, v, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(res.c, c, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("num_iters", [1, 2, 4])
def test_inverted_dot_product_matches_reference(num_iters):
  kw = rule_kwargs("inverted_dot_product")
  res = routing.inverted_dot_product_routing(votes(13), num_iters=num_iters, **kw)
  p, c, a = ref_inverted(votes(13), num_iters, kw["score_weight"], kw["score_bias"])
  np.testing.assert_allclose(res.v, p, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(res.c, c, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(res.a, a, rtol=1e-5, atol=1e-6)
  if num_iters == 1:  # poses start at zero: the first iteration's couplings are uniform
    np.testing.assert_allclose(res.c, 1.0 / N_OUT, rtol=1e-6)


@pytest.mark.parametrize("num_iters", [1, 2, 3])
@pytest.mark.parametrize("scale_free", [True, False])
def test_em_matches_reference(num_iters, scale_free):
  kw = rule_kwargs("em")
  res = routing.em_routing(votes(14), num_iters=num_iters, scale_free_cost=scale_free,
                           final_lambda=2.0, **kw)
  mu, r, a = ref_em(votes(14), num_iters, kw["activations"], kw["beta_u"], kw["beta_a"],
                    final_lambda=2.0, scale_free=scale_free)
  np.testing.assert_allclose(res.v, mu, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(res.c, r, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(res.a, a, rtol=1e-4, atol=1e-6)


def test_em_survives_one_input_owning_a_parent():
  # All activation on one input: every parent's variance is 0 before the floor.
  act = jnp.zeros(N_IN).at[0].set(1.0)
  res = routing.em_routing(votes(15), num_iters=3, activations=act)
  chex.assert_tree_all_finite(res)
  g = jax.grad(lambda u: jnp.sum(routing.em_routing(u, num_iters=3, activations=act).a))(votes(15))
  chex.assert_tree_all_finite(g)


def test_em_rejects_activations_of_wrong_shape():
  with pytest.raises(ValueError, match=r"activations must have shape \[N_in\] = \[12\]"):
    routing.em_routing(votes(), num_iters=2, activations=jnp.ones(3))


# Memory-efficient dynamic routing.

def _plain(u, W, num_iters, **kw):
  return routing.dynamic_routing(jnp.einsum("ijdk,ik->ijd", W, u), num_iters, **kw)


# N_IN = 12: one capsule per chunk, 3 even chunks, 3 chunks with the last one padded, one chunk.
@pytest.mark.parametrize("chunk_size", [1, 4, 5, 12])
@pytest.mark.parametrize("options", [{}, {"leaky": True}, {"stop_gradient": True}])
def test_chunked_dynamic_equals_plain(chunk_size, options):
  u = jax.random.normal(jax.random.key(0), (N_IN, 3))
  W = 0.5 * jax.random.normal(jax.random.key(1), (N_IN, N_OUT, DIM, 3))
  plain = _plain(u, W, 3, **options)
  chunked = routing.dynamic_routing_chunked(u, W, 3, chunk_size=chunk_size, **options)
  chex.assert_trees_all_close(chunked, plain, rtol=1e-5, atol=1e-6)
  loss = lambda fn: lambda u, W: jnp.sum(fn(u, W).v ** 2)
  g_plain = jax.grad(loss(lambda u, W: _plain(u, W, 3, **options)), argnums=(0, 1))(u, W)
  g_chunk = jax.grad(loss(lambda u, W: routing.dynamic_routing_chunked(
      u, W, 3, chunk_size=chunk_size, **options)), argnums=(0, 1))(u, W)
  chex.assert_trees_all_close(g_chunk, g_plain, rtol=1e-4, atol=1e-6)


def test_chunk_larger_than_n_in_is_one_chunk():
  u, W = jnp.zeros((N_IN, 3)), jnp.zeros((N_IN, N_OUT, DIM, 3))
  program = lambda size: str(jax.make_jaxpr(lambda u, W: routing.dynamic_routing_chunked(
      u, W, 3, chunk_size=size))(u, W))
  assert program(64) == program(N_IN)  # no padding to 64: the same computation as chunks of 12


def test_chunked_dynamic_uses_less_memory():
  # The compiler's own buffer plan (memory_analysis), not a timing: deterministic for a shape.
  b, n_in = 16, 1152
  u = jnp.zeros((b, n_in, 8))
  W = jnp.zeros((n_in, 10, 16, 8))

  def temp_bytes(fn):
    compiled = jax.jit(jax.vmap(fn, in_axes=(0, None))).lower(u, W).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  plain = temp_bytes(lambda u, W: _plain(u, W, 3).v)
  chunked = temp_bytes(lambda u, W: routing.dynamic_routing_chunked(u, W, 3, chunk_size=128).v)
  votes_bytes = b * n_in * 10 * 16 * 4
  assert plain >= votes_bytes
  assert chunked * 4 <= plain, (chunked, plain)


def test_chunked_dynamic_bad_input():
  with pytest.raises(ValueError, match="expected u \\[N_in, D_in\\] and W"):
    routing.dynamic_routing_chunked(jnp.zeros((4, 3)), jnp.zeros((5, 2, 2, 3)), 3)
  with pytest.raises(ValueError, match="chunk_size must be an integer >= 1, got 0"):
    routing.dynamic_routing_chunked(jnp.zeros((4, 3)), jnp.zeros((4, 2, 2, 3)), 3, chunk_size=0)
  with pytest.raises(ValueError, match="num_iters"):
    routing.dynamic_routing_chunked(jnp.zeros((4, 3)), jnp.zeros((4, 2, 2, 3)), 0)
