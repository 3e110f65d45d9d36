"""The posteriordb suite: every Pyro model's log density equals its Stan model's, and its files agree.

For each posterior the Stan model block's log density is written here independently with
scipy.stats (and numpy), in Stan's parameters, and compared with the log joint of the Pyro
model's trace (latent values on the constrained scale, so no Jacobians; flat priors count
0) at points near the reference posterior, up to an additive constant. Where the Pyro
model reparametrises a Stan parameter (garch11's simplex ``w``, hmm_example's ``mu_low`` and
``mu_gap``) the map has a constant Jacobian, so the two densities still differ by a
constant only, and the Stan parameters are computed from the Pyro values below.
"""
from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from pyro.distributions import constraints
from scipy import special, stats

ROOT = Path(__file__).resolve().parents[1]
try:  # once installed as part of the zoo
    suite = importlib.import_module("zoo.posteriordb")
except ImportError:
    sys.path.insert(0, str(ROOT))
    suite = importlib.import_module("posteriordb")
SUITE_DIR = Path(suite.__file__).parent
MODULES = list(suite.MODULES)
KINDS = {"linear regression", "logistic regression", "hierarchical", "time series", "mixture",
         "hidden Markov model", "gaussian process", "hard geometry"}
STATS = ("mean", "sd", "mcse_mean", "mcse_sd", "ess_bulk", "ess_tail", "r_hat", "q05", "q25", "q50", "q75", "q95")


def load(name):
    return importlib.import_module(f"{suite.__name__}.{name}")


def reference(name):
    return json.loads((SUITE_DIR / "reference" / f"{name}.json").read_text())


@pytest.fixture
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def as_tensors(data):
    out = {}
    for k, v in data.items():
        if isinstance(v, np.ndarray):
            out[k] = torch.as_tensor(v, dtype=torch.int64 if v.dtype.kind in "iu" else torch.float64)
        else:
            out[k] = v
    return out


def trace(module, data, values=None):
    model = module.model if values is None else poutine.condition(module.model, data=values)
    return poutine.trace(model).get_trace(**as_tensors(data))


def latent_sites(tr):
    return {n: s for n, s in tr.nodes.items()
            if s["type"] == "sample" and not s["is_observed"] and not site_is_subsample(s)}


def deterministic_sites(tr):
    return {n: s for n, s in tr.nodes.items()
            if s["type"] == "sample" and s.get("infer", {}).get("_deterministic")}


# ---------------------------------------------------------------------------------------------
# the Stan model blocks, with scipy


def norm(x, loc, scale):
    return float(np.sum(stats.norm.logpdf(x, loc, scale)))


def cauchy(x, loc, scale):
    return float(np.sum(stats.cauchy.logpdf(x, loc, scale)))


def exp_quad(x, alpha, rho):
    return alpha**2 * np.exp(-((x[:, None] - x[None, :]) ** 2) / (2 * rho**2))


def stan_sblrc_blr(v, d):
    return norm(v["beta"], 0, 10) + norm(v["sigma"], 0, 10) + norm(d["y"], d["X"] @ v["beta"], v["sigma"])


def stan_wells_dist(v, d):
    b = v["beta"]  # flat prior
    eta = b[0] + b[1] * d["distance"]
    return float(np.sum(stats.bernoulli.logpmf(d["switched"], special.expit(eta))))


def stan_kidscore_interaction(v, d):
    b, hs, iq = v["beta"], d["mom_hs"], d["mom_iq"]
    inter = hs * iq
    return cauchy(v["sigma"], 0, 2.5) + norm(d["kid_score"], b[0] + b[1] * hs + b[2] * iq + b[3] * inter, v["sigma"])


def stan_logearn_interaction_z(v, d):
    b, male = v["beta"], d["male"]
    z = (d["height"] - d["height"].mean()) / d["height"].std(ddof=1)
    return norm(np.log(d["earn"]), b[0] + b[1] * z + b[2] * male + b[3] * z * male, v["sigma"])


def stan_kilpisjarvi(v, d):
    return (norm(v["alpha"], d["pmualpha"], d["psalpha"]) + norm(v["beta"], d["pmubeta"], d["psbeta"])
            + norm(d["y"], v["alpha"] + v["beta"] * d["x"], v["sigma"]))


def stan_eight_schools_noncentered(v, d):
    theta = v["theta_trans"] * v["tau"] + v["mu"]
    return (norm(v["theta_trans"], 0, 1) + norm(d["y"], theta, d["sigma"]) + norm(v["mu"], 0, 5)
            + cauchy(v["tau"], 0, 5))


def stan_eight_schools_centered(v, d):
    return (cauchy(v["tau"], 0, 5) + norm(v["theta"], v["mu"], v["tau"]) + norm(d["y"], v["theta"], d["sigma"])
            + norm(v["mu"], 0, 5))


def stan_radon_hierarchical_intercept_noncentered(v, d):
    alpha = v["mu_alpha"] + v["sigma_alpha"] * v["alpha_raw"]
    mu = alpha[d["county_idx"]] + d["log_uppm"] * v["beta"][0] + d["floor_measure"] * v["beta"][1]
    return (norm(v["sigma_alpha"], 0, 1) + norm(v["sigma_y"], 0, 1) + norm(v["mu_alpha"], 0, 10)
            + norm(v["beta"], 0, 10) + norm(v["alpha_raw"], 0, 1) + norm(d["log_radon"], mu, v["sigma_y"]))


def stan_arK(v, d):
    y, K, alpha, beta, sigma = d["y"], d["K"], v["alpha"], v["beta"], v["sigma"]
    lp = norm(alpha, 0, 10) + norm(beta, 0, 10) + cauchy(sigma, 0, 2.5)
    for t in range(K, len(y)):
        mu = alpha
        for k in range(1, K + 1):
            mu = mu + beta[k - 1] * y[t - k]
        lp += stats.norm.logpdf(y[t], mu, sigma)
    return lp


def stan_arma11(v, d):
    y, mu, phi, theta, sigma = d["y"], v["mu"], v["phi"], v["theta"], v["sigma"]
    nu, err = np.empty(len(y)), np.empty(len(y))
    nu[0] = mu + phi * mu
    err[0] = y[0] - nu[0]
    for t in range(1, len(y)):
        nu[t] = mu + phi * y[t - 1] + theta * err[t - 1]
        err[t] = y[t] - nu[t]
    return norm(mu, 0, 10) + norm(phi, 0, 2) + norm(theta, 0, 2) + cauchy(sigma, 0, 2.5) + norm(err, 0, sigma)


def stan_garch11(v, d):
    y, mu, alpha0 = d["y"], v["mu"], v["alpha0"]
    alpha1, beta1 = v["w"][0], v["w"][1]  # the Stan parameters; all priors flat
    assert alpha0 > 0 and 0 < alpha1 < 1 and 0 < beta1 < 1 - alpha1
    sigma = np.empty(len(y))
    sigma[0] = d["sigma1"]
    for t in range(1, len(y)):
        sigma[t] = np.sqrt(alpha0 + alpha1 * (y[t - 1] - mu) ** 2 + beta1 * sigma[t - 1] ** 2)
    return norm(y, mu, sigma)


def stan_low_dim_gauss_mix(v, d):
    mu, sigma, theta, y = v["mu"], v["sigma"], v["theta"], d["y"]
    assert mu[0] < mu[1]
    lp = norm(sigma, 0, 2) + norm(mu, 0, 2) + stats.beta.logpdf(theta, 5, 5)
    comp = np.stack([np.log(theta) + stats.norm.logpdf(y, mu[0], sigma[0]),
                     np.log1p(-theta) + stats.norm.logpdf(y, mu[1], sigma[1])])
    return lp + float(special.logsumexp(comp, axis=0).sum())


def stan_hmm_example(v, d):
    mu = np.array([v["mu_low"], v["mu_low"] + v["mu_gap"]])  # positive_ordered mu
    theta = np.stack([v["theta1"], v["theta2"]])
    y, K = d["y"], 2
    lp = stats.norm.logpdf(mu[0], 3, 1) + stats.norm.logpdf(mu[1], 10, 1)
    gamma = np.empty((len(y), K))
    for k in range(K):
        gamma[0, k] = stats.norm.logpdf(y[0], mu[k], 1)
    for t in range(1, len(y)):
        for k in range(K):
            acc = [gamma[t - 1, j] + np.log(theta[j, k]) + stats.norm.logpdf(y[t], mu[k], 1) for j in range(K)]
            gamma[t, k] = special.logsumexp(acc)
    return lp + special.logsumexp(gamma[-1])


def stan_gp_regr(v, d):
    x, y, rho, alpha, sigma = d["x"], d["y"], v["rho"], v["alpha"], v["sigma"]
    cov = exp_quad(x, alpha, rho) + sigma * np.eye(len(x))
    return (stats.gamma.logpdf(rho, 25, scale=1 / 4) + norm(alpha, 0, 2) + norm(sigma, 0, 1)
            + stats.multivariate_normal.logpdf(y, np.zeros(len(x)), cov))


def stan_gp_pois_regr(v, d):
    x, k, rho, alpha = d["x"], d["k"], v["rho"], v["alpha"]
    L = np.linalg.cholesky(exp_quad(x, alpha, rho) + 1e-10 * np.eye(len(x)))
    f = L @ v["f_tilde"]
    return (stats.gamma.logpdf(rho, 25, scale=1 / 4) + norm(alpha, 0, 2) + norm(v["f_tilde"], 0, 1)
            + float(stats.poisson.logpmf(k, np.exp(f)).sum()))


STAN = {name[len("stan_"):]: fn for name, fn in globals().items() if name.startswith("stan_")}


# ---------------------------------------------------------------------------------------------
# test points near the reference posterior


def reference_arrays(ref, site, shape):
    mean, sd = np.zeros(shape), np.zeros(shape)
    for row in ref["scalars"]:
        if row["site"] == site:
            mean[tuple(row["index"])] = row["mean"]
            sd[tuple(row["index"])] = row["sd"]
    return mean, sd


def points_near_reference(module, data, n=6, seed=0):
    """``n`` points: the reference mean, then mean + z sd with z in (-2, 2), shrunk into the support."""
    rng = np.random.default_rng(seed)
    ref = reference(module.NAME)
    pyro.set_rng_seed(seed)
    sites = latent_sites(trace(module, data))
    points = []
    for i in range(n):
        point = {}
        for name, site in sites.items():
            shape = tuple(site["value"].shape)
            support = site["fn"].support
            mean, sd = reference_arrays(ref, name, shape)
            z = rng.uniform(-2, 2, size=shape) if i else np.zeros(shape)
            for _ in range(60):
                x = mean + z * sd
                if support is constraints.simplex:
                    x[..., -1] = 1 - x[..., :-1].sum(-1)
                if bool(support.check(torch.as_tensor(x)).all()):
                    break
                z = z / 2
            else:
                raise AssertionError(f"{module.NAME}: no point in the support of {name}")
            point[name] = x
        points.append(point)
    return points


# ---------------------------------------------------------------------------------------------
# tests


def test_suite_covers_the_brief():
    assert len(MODULES) >= 12 and len(set(MODULES)) == len(MODULES)
    kinds = {load(name).KIND for name in MODULES}
    assert {"linear regression", "hierarchical", "time series", "mixture", "gaussian process",
            "hard geometry"} <= kinds
    assert set(STAN) == set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_module_declares_its_api_and_loads_its_data(name):
    module = load(name)
    assert module.NAME == name
    assert isinstance(module.POSTERIOR, str) and "-" in module.POSTERIOR
    assert module.KIND in KINDS
    assert callable(module.model) and callable(module.data)
    assert "Generative story::" in module.__doc__ and module.POSTERIOR in module.__doc__
    assert suite.POSTERIORDB_COMMIT in module.__doc__
    assert set(getattr(module, "NUTS_OPTIONS", {})) <= {"target_accept", "dense_mass", "max_tree_depth", "init_radius",
                                                         "noncentered", "num_warmup", "num_samples"}
    assert set(getattr(module, "SVI_OPTIONS", {})) <= {"guide", "num_steps", "jit"}
    data = module.data()
    assert set(data) <= set(module.model.__code__.co_varnames[:module.model.__code__.co_argcount])
    for k, v in data.items():
        assert isinstance(v, (np.ndarray, int, float)), k
        if isinstance(v, np.ndarray):
            assert v.dtype in (np.float64, np.int64), (k, v.dtype)
            assert np.all(np.isfinite(v)), k
    path = SUITE_DIR / "data" / f"{name}.json"
    assert path.stat().st_size < 200_000
    stored = json.loads(path.read_text())
    assert stored["posterior"] == module.POSTERIOR
    assert stored["posteriordb_commit"] == suite.POSTERIORDB_COMMIT


@pytest.mark.parametrize("name", MODULES)
def test_reference_covers_exactly_the_latent_and_deterministic_scalars(name, float64):
    module = load(name)
    ref = reference(name)
    assert ref["posterior"] == module.POSTERIOR
    assert ref["posteriordb_commit"] == suite.POSTERIORDB_COMMIT
    assert ref["chains"] == 10 and ref["draws_per_chain"] >= 1000
    if ref.get("reference") == "numpyro":  # posteriordb has no reference draws for it
        assert ref["reference_posterior"] is None and "numpyro_references.py" in ref["command"]
        assert ref["reference_inference"]["divergences"] == 0 and ref["versions"]["numpyro"]
    else:
        assert ref["reference_posterior"] and ref["draws_per_chain"] == 1000
        assert "posteriordb_references.py" in ref["command"]
    pyro.set_rng_seed(0)
    tr = trace(module, module.data())
    sites = {**latent_sites(tr), **deterministic_sites(tr)}
    expected = {(n, idx) for n, s in sites.items() for idx in np.ndindex(*s["value"].shape)}
    got = [(row["site"], tuple(row["index"])) for row in ref["scalars"]]
    assert len(got) == len(set(got))
    assert set(got) == expected
    assert len({row["stan"] for row in ref["scalars"] if row["site"] in latent_sites(tr)}) == \
        sum(1 for row in ref["scalars"] if row["site"] in latent_sites(tr))
    for row in ref["scalars"]:
        assert all(np.isfinite(row[k]) for k in STATS), row
        assert row["q05"] <= row["q25"] <= row["q50"] <= row["q75"] <= row["q95"]
        assert row["sd"] > 0 and row["r_hat"] < 1.01 and row["ess_bulk"] > 1000
        assert row["mcse_mean"] < 0.05 * row["sd"]


@pytest.mark.parametrize("name", MODULES)
def test_pyro_log_density_matches_stan_model_block(name, float64):
    module = load(name)
    data = module.data()
    points = points_near_reference(module, data)
    lp_pyro, lp_stan = [], []
    for point in points:
        values = {k: torch.as_tensor(v) for k, v in point.items()}
        lp_pyro.append(trace(module, data, values).log_prob_sum().item())
        lp_stan.append(float(STAN[name](point, data)))
    lp_pyro, lp_stan = np.array(lp_pyro), np.array(lp_stan)
    assert np.all(np.isfinite(lp_pyro)) and np.all(np.isfinite(lp_stan))
    d_pyro, d_stan = lp_pyro[1:] - lp_pyro[0], lp_stan[1:] - lp_stan[0]
    assert np.all(np.abs(d_stan) > 1e-6), "test points too close together"
    np.testing.assert_allclose(d_pyro, d_stan, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("name", ["sblrc_blr", "eight_schools_noncentered", "low_dim_gauss_mix", "wells_dist"])
def test_the_comparison_sees_a_wrong_density(name, float64):
    """A perturbed Stan density (one scale doubled in the likelihood) must fail the comparison."""
    module = load(name)
    data = module.data()
    points = points_near_reference(module, data)
    key = {"sblrc_blr": "y", "eight_schools_noncentered": "sigma", "low_dim_gauss_mix": "y",
           "wells_dist": "distance"}[name]
    lp_pyro, lp_wrong = [], []
    for point in points:
        values = {k: torch.as_tensor(v) for k, v in point.items()}
        lp_pyro.append(trace(module, data, values).log_prob_sum().item())
        wrong = dict(data)
        wrong[key] = data[key] * 1.01
        lp_wrong.append(float(STAN[name](point, wrong)))
    d_pyro = np.array(lp_pyro[1:]) - lp_pyro[0]
    d_wrong = np.array(lp_wrong[1:]) - lp_wrong[0]
    assert not np.allclose(d_pyro, d_wrong, rtol=1e-8, atol=1e-10)


def test_wells_numpyro_reference_is_the_maximum_likelihood_fit():
    """The NumPyro reference for wells_dist (flat prior, N = 3020) against an independent fit:
    by Bernstein-von Mises the posterior is close to Normal(MLE, inverse Fisher information).
    scikit-learn's unpenalised logistic regression gives the MLE; the information is computed
    here. Its mean sits within 0.1 posterior sd of the MLE (the O(1/N) skew of the posterior
    and 5 MCSEs of the reference, about 0.1 sd, are both below that) and its sd within 5%."""
    from sklearn.linear_model import LogisticRegression

    data = load("wells_dist").data()
    x, y = data["distance"], data["switched"]
    fit = LogisticRegression(penalty=None, tol=1e-10, max_iter=10_000).fit(x[:, None], y.astype(int))
    mle = np.array([fit.intercept_[0], fit.coef_[0, 0]])
    X = np.stack([np.ones_like(x), x], -1)
    p = special.expit(X @ mle)
    sd = np.sqrt(np.diag(np.linalg.inv(X.T @ (X * (p * (1 - p))[:, None]))))
    rows = reference("wells_dist")["scalars"]
    mean = np.array([r["mean"] for r in rows])
    ref_sd = np.array([r["sd"] for r in rows])
    assert np.all(np.abs(mean - mle) < 0.1 * ref_sd), (mean, mle, ref_sd)
    np.testing.assert_allclose(ref_sd, sd, rtol=0.05)
