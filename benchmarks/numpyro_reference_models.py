"""NumPyro translations of the posteriordb posteriors that have no reference draws, and the
long NUTS run that makes their references. Runs under an interpreter with numpyro and jax
(not the zoo's): ``benchmarks/numpyro_references.py`` starts it with a JSON job on stdin.

The models are written from the Stan programs of posteriordb, independently of the zoo's
Pyro modules, so that a reference made here checks the Pyro translation instead of
repeating it. Job fields: ``model``, ``data``, ``num_chains``, ``num_warmup``,
``num_samples``, ``seed``, ``target_accept``, ``out`` (an .npz path for the draws, each
site as (chain, draw, ...), with ``diverging`` and ``num_steps`` as (chain, draw)). Prints
one JSON line: versions, seconds, divergences.
"""
from __future__ import annotations

import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints
from numpyro.infer import MCMC, NUTS

jax.config.update("jax_enable_x64", True)


def wells_dist(distance, switched=None):
    """Stan: ``vector[2] beta`` with no prior statement (flat), ``switched ~ bernoulli_logit(beta[1] + beta[2] * dist)``."""
    beta = numpyro.sample("beta", dist.ImproperUniform(constraints.real, (), event_shape=(2,)))
    with numpyro.plate("data", distance.shape[0]):
        numpyro.sample("switched", dist.BernoulliLogits(beta[0] + beta[1] * distance), obs=switched)


def radon_hierarchical_intercept_noncentered(J, county_idx, log_uppm, floor_measure, log_radon=None):
    """Stan: half-normal(0, 1) scales, normal(0, 10) mean and slopes, ``alpha = mu_alpha +
    sigma_alpha * alpha_raw`` with standard-normal ``alpha_raw``, normal likelihood."""
    sigma_alpha = numpyro.sample("sigma_alpha", dist.HalfNormal(1.0))
    sigma_y = numpyro.sample("sigma_y", dist.HalfNormal(1.0))
    mu_alpha = numpyro.sample("mu_alpha", dist.Normal(0.0, 10.0))
    beta = numpyro.sample("beta", dist.Normal(0.0, 10.0).expand([2]).to_event(1))
    with numpyro.plate("counties", J):
        alpha_raw = numpyro.sample("alpha_raw", dist.Normal(0.0, 1.0))
    alpha = numpyro.deterministic("alpha", mu_alpha + sigma_alpha * alpha_raw)
    mu = alpha[county_idx] + beta[0] * log_uppm + beta[1] * floor_measure
    with numpyro.plate("homes", county_idx.shape[0]):
        numpyro.sample("log_radon", dist.Normal(mu, sigma_y), obs=log_radon)


MODELS = {f.__name__: f for f in (wells_dist, radon_hierarchical_intercept_noncentered)}


def as_array(v):
    if isinstance(v, list):
        a = np.asarray(v)
        return jnp.asarray(a, dtype=jnp.int64 if a.dtype.kind in "iu" else jnp.float64)
    return v


def main() -> None:
    job = json.load(sys.stdin)
    data = {k: as_array(v) for k, v in job["data"].items()}
    kernel = NUTS(MODELS[job["model"]], target_accept_prob=job["target_accept"])
    mcmc = MCMC(kernel, num_warmup=job["num_warmup"], num_samples=job["num_samples"],
                num_chains=job["num_chains"], chain_method="sequential", progress_bar=False)
    start = time.perf_counter()
    mcmc.run(jax.random.PRNGKey(job["seed"]), **data, extra_fields=("diverging", "num_steps"))
    samples = mcmc.get_samples(group_by_chain=True)
    jax.block_until_ready(samples)
    seconds = time.perf_counter() - start
    extra = mcmc.get_extra_fields(group_by_chain=True)
    arrays = {k: np.asarray(v) for k, v in samples.items()}
    arrays["diverging"] = np.asarray(extra["diverging"])
    arrays["num_steps"] = np.asarray(extra["num_steps"])
    np.savez(job["out"], **arrays)
    print(json.dumps({"seconds": seconds, "divergences": int(arrays["diverging"].sum()),
                      "max_num_steps": int(arrays["num_steps"].max()),
                      "versions": {"numpyro": numpyro.__version__, "jax": jax.__version__,
                                   "python": sys.version.split()[0]}}))


if __name__ == "__main__":
    main()
