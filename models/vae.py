"""Variational autoencoder with an amortised encoder guide (notes 004 3.3.2 to 3.3.6).

The decoder is a neural network registered with ``pyro.module``: SVI learns its weights by
maximum likelihood (maximum ELBO) alongside the guide, as in the notes' eq 3.14
(argmax over phi and theta). The encoder q(z | x, phi) (eq 3.11) is the guide ``amortised``.

Besides the model, this module holds the ELBO and importance-weighted (IWAE) bounds per data
point, the amortisation gap, and `plot` (reconstructions and the latent space as PNG files).
The networks' weights live in Pyro's param store (`zoo.core.networks`).
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.infer.autoguide import AutoNormal
from torch import nn
from torch.distributions import constraints

from zoo.core.errors import ZooError
from zoo.core.files import atomic_write
from zoo.core.networks import (
    build_module,
    load_state,
    simulation_module,
    store_module,
    stored_state,
)
from zoo.core.problem import DTYPE
from zoo.core.spec import Backends, DataKey, Hyper, ModelSpec, Scoring

EXAMPLE_N = 500       # the default data: the first 500 of scikit-learn's 1797 8x8 digits
GAP_BATCH = 16        # points on which the amortisation gap is measured
IWAE_K = 50           # importance samples per point for the IWAE bound

# --------------------------------------------------------------------------------------------
# The networks of 004 3.3.6 (one hidden ReLU layer each way).


class Encoder(nn.Module):
    """x -> (mu, sigma) of q(z | x) (eq 3.11): fc1, ReLU, then fc_mu and fc_logvar."""

    def __init__(self, P: int, d: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(P, hidden)
        self.fc_mu = nn.Linear(hidden, d)
        self.fc_logvar = nn.Linear(hidden, d)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.relu(self.fc1(x))
        logvar = self.fc_logvar(h).clamp(-20.0, 10.0)
        return self.fc_mu(h), torch.exp(0.5 * logvar)


class Decoder(nn.Module):
    """z -> logits of p(x | z) (one per pixel): fc3, ReLU, fc4."""

    def __init__(self, d: int, hidden: int, P: int) -> None:
        super().__init__()
        self.fc3 = nn.Linear(d, hidden)
        self.fc4 = nn.Linear(hidden, P)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc4(torch.relu(self.fc3(z)))


def decoder(P: int, d: int, hidden: int, simulate: bool = False) -> nn.Module:
    """The decoder network: stored weights (learned by SVI), or the fixed simulation one."""
    get = simulation_module if simulate else store_module
    return get("vae_decoder", (P, d, hidden), lambda: Decoder(d, hidden, P))


def pixel_likelihood(kind: str, logits: torch.Tensor) -> dist.TorchDistribution:
    """p(x | z) for one data point: pixels independent given z (eq 3.8 with eq 3.28's loss).

    ``continuous_bernoulli``: a proper density on [0, 1] (grey levels); its log density is the
    notes' cross-entropy plus a normalising term. ``bernoulli``: binary pixels only.
    """
    if kind == "bernoulli":
        return dist.Bernoulli(logits=logits).to_event(1)
    return dist.ContinuousBernoulli(logits=logits).to_event(1)


def model(x=None, N=None, P=None, d=2.0, hidden=64.0, likelihood="continuous_bernoulli"):
    """Variational autoencoder: a Gaussian latent decoded by a network (seed 004 3.3.2 to 3.3.6).

    Generative story::

        z_i ~ Normal(0, I_d)                                   # i = 1..N, eq 3.8's p(z_i)
        logits_i = decoder_theta(z_i)                          # a ReLU network, R^d -> R^P
        x_ij | z_i ~ ContinuousBernoulli(logits_ij)            # j = 1..P, pixels in [0, 1]

    The decoder weights theta are not random: ``pyro.module("vae_decoder", ...)`` registers
    them and SVI learns them by maximum likelihood (maximum ELBO) alongside the guide, the
    notes' argmax over (phi, theta) of eq 3.14. The guide ``amortised`` is the encoder of
    eq 3.11, q(z_i | x_i) = Normal(mu_phi(x_i), diag sigma_phi(x_i)^2), reparameterised
    (eq 3.23). p(z | x) has no closed form (eq 3.9), so there is no exact back-end, and NUTS
    or HMC would sample z under an untrained decoder. ``likelihood="bernoulli"`` gives
    eq 3.28's Bernoulli for binary pixels. The local latent ``z`` (N, d) is identified only up
    to rotations and reflections of the latent space (the prior is isotropic).
    ``zoo.simulate`` draws from the decoder's fixed initial weights (a private generator).
    """
    d, hidden = int(d), int(hidden)
    if x is not None:
        N, P = x.shape
    net = decoder(int(P), d, hidden, simulate=x is None)
    with pyro.plate("data", N, dim=-1):
        z = pyro.sample("z", dist.Normal(torch.zeros(d, dtype=DTYPE), 1.0).to_event(1))
        pyro.sample("x", pixel_likelihood(likelihood, net(z)), obs=x)


def amortised_guide(problem: Any) -> Callable[..., None]:
    """The guide ``amortised``: the encoder network q(z_i | x_i) of eq 3.11 over all points.

    Built after the back-end has seeded torch, so its starting weights follow the seed.
    """
    x = problem.data["x"]
    N, P = x.shape
    d, hidden = int(problem.hyper["d"]), int(problem.hyper["hidden"])
    encoder = build_module(lambda: Encoder(P, d, hidden))

    def guide(*args: Any, **kwargs: Any) -> None:
        loc, scale = pyro.module("vae_encoder", encoder)(x)
        with pyro.plate("data", N, dim=-1):
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    return guide


# --------------------------------------------------------------------------------------------
# Bounds, the amortisation gap and the diagnostics hook.


def log_weights(x: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor, net: nn.Module,
                kind: str, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """log p(x_i, z) - log q(z | x_i) for ``k`` reparameterised draws z per point: (k, n)."""
    eps = torch.randn((k,) + tuple(loc.shape), generator=generator, dtype=DTYPE)
    z = loc + scale * eps
    log_q = dist.Normal(loc, scale).log_prob(z).sum(-1)
    log_p = dist.Normal(0.0, 1.0).log_prob(z).sum(-1) + pixel_likelihood(kind, net(z)).log_prob(x)
    return log_p - log_q


def bounds(log_w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-point ELBO (mean of the log weights) and IWAE bound log (1/k) sum_k w_k."""
    k = log_w.shape[0]
    return log_w.mean(0), torch.logsumexp(log_w, 0) - math.log(k)


def fit_per_point(x: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor, net: nn.Module, kind: str,
                  num_steps: int = 150, num_particles: int = 4, lr: float = 0.05,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A separate Gaussian q_i(z) = Normal(m_i, diag s_i^2) for each point, fitted by maximising
    its own ELBO with the decoder held fixed (the notes' mean field, eq 3.10), started at the
    amortised guide's answer. Returns the fitted (m, s)."""
    net = copy.deepcopy(net).requires_grad_(False)
    m = loc.detach().clone().requires_grad_(True)
    log_s = scale.detach().log().clone().requires_grad_(True)
    opt = torch.optim.Adam([m, log_s], lr=lr)
    for _ in range(num_steps):
        opt.zero_grad()
        loss = -log_weights(x, m, log_s.exp(), net, kind, num_particles, generator).mean(0).sum()
        loss.backward()
        opt.step()
    return m.detach(), log_s.detach().exp()


def amortisation_gap(x: torch.Tensor, encoder: Callable, net: nn.Module, kind: str,
                     num_eval: int = 256, seed: int = 0) -> dict[str, float]:
    """The amortisation gap on a batch: mean over points of ELBO(per-point q_i) - ELBO(encoder).

    Both ELBOs are estimated with the same ``num_eval`` standard-normal draws (common random
    numbers). Also returns ``approximation_gap``, an estimate (from below) of
    log p(x) - ELBO(q_i) with the IWAE bound of the per-point guide at ``num_eval`` samples.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        loc, scale = encoder(x)
    m, s = fit_per_point(x, loc, scale, net, kind, generator=g)
    with torch.no_grad():
        state = g.get_state()
        amortised, _ = bounds(log_weights(x, loc, scale, net, kind, num_eval, g))
        g.set_state(state)
        per_point, iwae = bounds(log_weights(x, m, s, net, kind, num_eval, g))
    return {"amortisation_gap": float((per_point - amortised).mean()),
            "approximation_gap": float((iwae - per_point).mean())}


@lru_cache(maxsize=1)
def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 digits (no download): pixels / 16 in [0, 1], and labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.data / 16.0, d.target


class _DigitsExample(Mapping):
    """The default data ``{"x": first 500 digits}``, loaded on first use (importing
    scikit-learn's datasets takes seconds, and ``import zoo`` should not pay for it)."""

    def __getitem__(self, key: str) -> np.ndarray:
        if key != "x":
            raise KeyError(key)
        return digits()[0][:EXAMPLE_N]

    def __iter__(self) -> Iterator[str]:
        return iter(("x",))

    def __len__(self) -> int:
        return 1


def _is_example(x: np.ndarray) -> bool:
    if digits.cache_info().currsize == 0:  # the example was never loaded, so this is not it
        return False
    return x.shape == (EXAMPLE_N, 64) and np.array_equal(x, digits()[0][:EXAMPLE_N])


def fitted_guide(problem: Any, guide: Any) -> tuple[str, Callable | None]:
    """The fitted guide as x -> (loc, scale) of q(z | x).

    ``("amortised", encoder)`` after the amortised guide (the encoder's weights are Pyro's
    ``vae_encoder`` module); ``("mean_field", fn)`` after an AutoNormal guide (its per-point
    locs and scales, read from the guide object, valid for the fitted data only);
    ``("none", None)`` for any other guide, or none (a back-end that fits no guide).
    """
    P, d, hidden = problem.data["x"].shape[1], int(problem.hyper["d"]), int(problem.hyper["hidden"])
    if isinstance(guide, AutoNormal):
        loc, scale = guide.locs.z.detach(), guide.scales.z.detach()
        if loc.shape == (problem.data["x"].shape[0], d):
            return "mean_field", lambda x: (loc, scale)
        return "none", None
    state = stored_state("vae_encoder") if guide is not None else None
    if state:
        try:
            enc = load_state(Encoder(P, d, hidden).to(DTYPE), state)
        except RuntimeError:  # weights of other sizes
            return "none", None
        return "amortised", enc
    return "none", None


def diagnose(problem: Any, posterior: Mapping[str, np.ndarray], truth: Mapping | None = None,
             guide: Any = None) -> dict:
    """ELBO and IWAE bound per data point, the KL and reconstruction terms of eq 3.24, the
    amortisation gap, and the fitted networks' weights (for `plot`).

    Keys: ``elbo``, ``iwae`` (per data point, ``iwae_k`` = K samples), ``kl``,
    ``reconstruction``, ``amortisation_gap`` and ``approximation_gap`` (amortised guide only),
    ``amortisation_batch`` (which points), ``networks``. Uses the fitted ``guide`` (and the
    networks' weights the fit left in Pyro's param store); fixed seeds make it repeatable.
    """
    x = problem.data["x"]
    kind_lik = problem.hyper["likelihood"]
    _N, P = x.shape
    d, hidden = int(problem.hyper["d"]), int(problem.hyper["hidden"])
    kind, q = fitted_guide(problem, guide)
    if q is None:
        return {"note": "no fitted VAE guide (amortised or mean-field): ELBO and IWAE bound not computed"}
    with torch.no_grad():
        net = decoder(P, d, hidden)
        loc, scale = q(x)
        log_w = log_weights(x, loc, scale, net, kind_lik, IWAE_K, torch.Generator().manual_seed(0))
        elbo, iwae = bounds(log_w)
        kl = 0.5 * (loc**2 + scale**2 - 1 - 2 * scale.log()).sum(-1)  # eq 3.33
    out: dict[str, Any] = {"elbo": float(elbo.mean()), "iwae": float(iwae.mean()), "iwae_k": IWAE_K,
                           "kl": float(kl.mean()), "reconstruction": float((elbo + kl).mean())}
    networks = {"decoder": stored_state("vae_decoder")}
    if kind == "amortised":
        networks["encoder"] = stored_state("vae_encoder")
        if P == 64 and _is_example(problem.np_data["x"]):
            batch = torch.as_tensor(digits()[0][-GAP_BATCH:], dtype=DTYPE)
            out["amortisation_batch"] = f"held-out digits (the last {GAP_BATCH} of 1797)"
        else:
            batch = x[:GAP_BATCH]
            out["amortisation_batch"] = f"the first {len(batch)} data points"
        out.update(amortisation_gap(batch, q, net, kind_lik))
    else:
        out["note"] = f"guide {kind!r}: the amortisation gap needs the amortised guide"
    out["networks"] = networks
    return out


# --------------------------------------------------------------------------------------------
# Plots.


def _decoder_from(result: Any) -> tuple[nn.Module, Encoder | None, int, str]:
    nets = result.diagnostics.get("networks")
    if not nets:
        raise ZooError(f"model 'vae': result from back-end {result.backend!r} carries no network weights to plot")
    x = result.idata.observed_data["x"].values
    P = x.shape[-1]
    d, hidden = int(result.hyper["d"]), int(result.hyper["hidden"])
    dec = load_state(Decoder(d, hidden, P).to(DTYPE), nets["decoder"])
    enc = load_state(Encoder(P, d, hidden).to(DTYPE), nets["encoder"]) if "encoder" in nets else None
    return dec, enc, d, result.hyper.get("likelihood", "continuous_bernoulli")


def _mean(kind: str, logits: torch.Tensor) -> np.ndarray:
    return pixel_likelihood(kind, logits).base_dist.mean.detach().numpy()


def plot(result: Any, out: str | Path, num: int = 12) -> list[Path]:
    """Reconstructions and the latent space of a fitted VAE, as PNG files in ``out``.

    ``reconstructions.png``: data (top) against the decoder's mean at the posterior mean of z
    (bottom) for the first ``num`` points whose z is in the result. ``latent.png``: the
    encoder's means of every point (coloured by digit on the default data) and, for d = 2, the
    decoded images over a grid of z. Written atomically.
    """
    import matplotlib.pyplot as plt

    out = Path(out)
    dec, enc, d, kind = _decoder_from(result)
    x = result.idata.observed_data["x"].values
    P = x.shape[-1]
    side = round(math.sqrt(P))
    shape = (side, side) if side * side == P else (1, P)
    z_mean = result.idata.posterior["z"].values.mean(axis=(0, 1))
    n = min(num, len(z_mean))
    recon = _mean(kind, dec(torch.as_tensor(z_mean[:n], dtype=DTYPE)))
    files = []

    def save(fig: Any, name: str) -> None:
        files.append(atomic_write(out / name, lambda tmp: fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")))
        plt.close(fig)

    fig, axes = plt.subplots(2, n, figsize=(1.1 * n, 2.6), squeeze=False)
    for i in range(n):
        for row, img in enumerate((x[i], recon[i])):
            axes[row, i].imshow(img.reshape(shape), cmap="gray_r", vmin=0, vmax=1)
            axes[row, i].set_xticks([])  # ticks off, frame kept: each tile has its own border
            axes[row, i].set_yticks([])
    fig.suptitle(f"vae ({result.backend}): data (top), reconstruction at posterior mean z (bottom)", fontsize=9)
    save(fig, "reconstructions.png")

    ncols = 2 if d == 2 else 1
    fig, axes = plt.subplots(1, ncols, figsize=(5 * ncols, 4.5), squeeze=False)
    ax = axes[0, 0]
    with torch.no_grad():
        means = enc(torch.as_tensor(x, dtype=DTYPE))[0].numpy() if enc is not None else z_mean
    colour = digits()[1][:EXAMPLE_N] if P == 64 and _is_example(x) else None
    sc = ax.scatter(means[:, 0], means[:, 1] if d > 1 else np.zeros(len(means)), c=colour, s=8,
                    cmap="tab10" if colour is not None else None)
    if colour is not None:
        fig.colorbar(sc, ax=ax, label="digit")
    ax.set_xlabel("z[0]")
    ax.set_ylabel("z[1]")
    ax.set_title("encoder means" if enc is not None else "posterior means")
    if d == 2:
        grid = np.linspace(-2.5, 2.5, 10)
        zz = np.array([[a, b] for b in grid[::-1] for a in grid])
        imgs = _mean(kind, dec(torch.as_tensor(zz, dtype=DTYPE))).reshape((10, 10) + shape)
        # one pixel of NaN around every tile, drawn in a colour no pixel has: the tiles stay apart
        tiles = np.pad(imgs, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=np.nan)
        canvas = np.concatenate([np.concatenate(list(r), axis=1) for r in tiles], axis=0)
        cmap = plt.get_cmap("gray_r").with_extremes(bad="lightsteelblue")
        axes[0, 1].imshow(canvas, cmap=cmap, vmin=0, vmax=1, extent=(-2.5, 2.5, -2.5, 2.5))
        axes[0, 1].set_title("decoder mean over a grid of z")
        axes[0, 1].set_xlabel("z[0]")
        axes[0, 1].set_ylabel("z[1]")
    fig.tight_layout()
    save(fig, "latent.png")
    return files


# --------------------------------------------------------------------------------------------

_LIMITS = {
    "exact": "the decoder is a neural network, so p(z | x) has no closed form (notes 004 3.3.2, eq 3.9)",
    "nuts": "the decoder's weights are learned by maximum likelihood alongside the guide (SVI); "
            "NUTS would sample N x d latents under an untrained decoder",
    "hmc": "the decoder's weights are learned by maximum likelihood alongside the guide (SVI); "
           "HMC would sample N x d latents under an untrained decoder",
    "importance": "one joint proposal over all N x d latents degenerates (weight ESS near 1) and "
                  "the decoder would stay untrained; svi reports the per-point importance-weighted "
                  "bound as iwae",
}


SPEC = ModelSpec(
    name="vae",
    model=model,
    data={"x": DataKey(("N", "P"), support=constraints.unit_interval)},
    latent_sites=(),  # no global latents: z is local, the networks' weights are parameters
    dims={"z": ("N", "latent_dim")},
    hyper={
        "d": Hyper(2.0, constraints.positive_integer),
        "hidden": Hyper(64.0, constraints.positive_integer),
        "likelihood": Hyper("continuous_bernoulli", choices=("continuous_bernoulli", "bernoulli")),
    },
    sizes={"N": 100, "P": 64},
    seed_section="004 3.3.2 to 3.3.6 (VAE, eqs 3.8 to 3.34); 000 (diagonal covariance, reparameterisation)",
    example=_DigitsExample(),
    scoring=Scoring(
        diagnose=diagnose,
        local_rows=8,
    ),
    backends=Backends(
        default=("svi",),
        limits=_LIMITS,
        guides={"amortised": amortised_guide},
        default_guide="amortised",
        options={"svi": {"num_samples": 100, "num_elbo_particles": 50, "jit": True}},
    ),
)
