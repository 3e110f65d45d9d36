"""Variational RNN (notes 004, papers 2.1, eqs 6.2 to 6.10): a VAE at every time step whose
prior, encoder and decoder are conditioned on the RNN state h_{t-1}.

One latent site ``z`` (N, T, d) carries the whole latent path of each sequence. Its
distribution in the model is the product of the per-step priors p(z_t | x_<t, z_<t) (eq 6.2,
6.3), a proper sequential distribution over z given the observed x; the site ``x`` carries
the product of p(x_t | z_<=t, x_<t) (eq 6.4, 6.5). Together they are eq 6.6's joint. The
guide ``amortised`` is eq 6.9's q(z_<=T | x_<=T) = prod_t q(z_t | x_<=t, z_<t) (eq 6.7, 6.8),
reparameterised step by step. All networks share one module registered as ``vrnn``; SVI
learns them by maximum likelihood alongside the guide.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions.torch_distribution import TorchDistribution
from pyro.infer.autoguide import AutoNormal
from torch import nn
from torch.distributions import constraints

from zoo.core.errors import ZooError
from zoo.core.files import atomic_write
from zoo.core.networks import load_state, simulation_module, store_module, stored_state
from zoo.core.problem import DTYPE
from zoo.core.spec import Backends, DataKey, Hyper, ModelSpec, Scoring

MIN_SCALE = 1e-3
IWAE_K = 50


class VRNNNet(nn.Module):
    """The networks of eqs 6.3 to 6.8: feature extractors phi_x and phi_z, the prior, encoder
    and decoder heads, and the recurrence f_theta (a GRU cell)."""

    def __init__(self, P: int, d: int, hidden: int) -> None:
        super().__init__()
        self.P, self.d, self.hidden = P, d, hidden
        self.phi_x = nn.Linear(P, hidden)
        self.phi_z = nn.Linear(d, hidden)
        self.prior = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 2 * d))
        self.enc = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.ReLU(), nn.Linear(hidden, 2 * d))
        self.dec = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.ReLU(), nn.Linear(hidden, 2 * P))
        self.rnn = nn.GRUCell(2 * hidden, hidden)

    @staticmethod
    def _gauss(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, raw = out.chunk(2, -1)
        return loc, F.softplus(raw) + MIN_SCALE

    def prior_params(self, h):  # eq 6.3
        return self._gauss(self.prior(h))

    def enc_params(self, fx, h):  # eq 6.8
        return self._gauss(self.enc(torch.cat([fx, h], -1)))

    def dec_params(self, fz, h):  # eq 6.5
        return self._gauss(self.dec(torch.cat([fz, h], -1)))

    def step(self, fx, fz, h):  # eq 6.6, h_t = f(phi_x(x_t), phi_z(z_t), h_{t-1})
        return self.rnn(torch.cat([fx, fz], -1), h)

    def states(self, x: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Teacher-forced states: h_{t-1} for every t given the whole x (B, T, P) and z
        (B, T, d); returns (h_prev (B, T, H), phi_x(x), phi_z(z))."""
        fx, fz = torch.relu(self.phi_x(x)), torch.relu(self.phi_z(z))
        h = x.new_zeros(x.shape[0], self.hidden)
        hs = []
        for t in range(x.shape[1]):
            hs.append(h)
            h = self.step(fx[:, t], fz[:, t], h)
        return torch.stack(hs, 1), fx, fz

    def terms(self, x: torch.Tensor, z: torch.Tensor, q: tuple | None = None) -> dict[str, torch.Tensor]:
        """Per-step log densities (B, T): ``log_pz`` (eq 6.2), ``log_px`` (eq 6.4) and, with the
        encoder (``q=None``) or given per-step q parameters, ``log_qz`` and the analytic
        ``kl`` of eq 6.10."""
        h, fx, fz = self.states(x, z)
        p_loc, p_scale = self.prior_params(h)
        x_loc, x_scale = self.dec_params(fz, h)
        q_loc, q_scale = self.enc_params(fx, h) if q is None else q
        pz, qz = dist.Normal(p_loc, p_scale), dist.Normal(q_loc, q_scale)
        return {"log_pz": pz.log_prob(z).sum(-1), "log_px": dist.Normal(x_loc, x_scale).log_prob(x).sum(-1),
                "log_qz": qz.log_prob(z).sum(-1),
                "kl": torch.distributions.kl_divergence(qz, pz).sum(-1)}

    def generate(self, n: int, T: int, z: torch.Tensor | None = None, x: torch.Tensor | None = None,
                 encoder: bool = False, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Ancestral sampling over time for ``n`` sequences. Each of x and z is taken as given
        when passed and drawn otherwise: z_t from the encoder (``encoder=True``, needs x) or
        the prior, x_t from the decoder. Returns (z (n, T, d), x (n, T, P))."""
        h = torch.zeros(n, self.hidden, dtype=DTYPE)
        zs, xs = [], []
        for t in range(T):
            fx = torch.relu(self.phi_x(x[:, t])) if x is not None else None
            if z is not None:
                z_t = z[:, t]
            else:
                loc, scale = self.enc_params(fx, h) if encoder else self.prior_params(h)
                z_t = loc + scale * torch.randn(loc.shape, dtype=DTYPE, generator=generator)
            fz = torch.relu(self.phi_z(z_t))
            if x is not None:
                x_t = x[:, t]
            else:
                loc, scale = self.dec_params(fz, h)
                x_t = loc + scale * torch.randn(loc.shape, dtype=DTYPE, generator=generator)
                fx = torch.relu(self.phi_x(x_t))
            h = self.step(fx, fz, h)
            zs.append(z_t)
            xs.append(x_t)
        return torch.stack(zs, 1), torch.stack(xs, 1)


def network(P: int, d: int, hidden: int, simulate: bool = False) -> VRNNNet:
    """The VRNN's networks: stored weights (learned by SVI), or the fixed simulation ones."""
    get = simulation_module if simulate else store_module
    return get("vrnn", (P, d, hidden), lambda: VRNNNet(P, d, hidden))


class _Sequential(TorchDistribution):
    """A distribution over a whole sequence (event shape (T, k)) computed by running the RNN.

    ``kind``: ``"prior"`` (z given x, eqs 6.2, 6.3), ``"encoder"`` (z given x, eqs 6.7 to 6.9,
    reparameterised) or ``"decoder"`` (x given z, eqs 6.4, 6.5). ``context`` is the other
    sequence (x for prior and encoder, z for decoder); ``context=None`` for the prior means
    joint ancestral sampling of (z, x), the x kept in ``stash`` for the decoder site.
    """

    arg_constraints: ClassVar[dict] = {}
    support = constraints.independent(constraints.real, 2)

    def __init__(self, net: VRNNNet, kind: str, context: torch.Tensor | None, batch_shape: tuple,
                 T: int, stash: dict | None = None) -> None:
        self.net, self.kind, self.context, self.stash = net, kind, context, stash
        self.has_rsample = kind == "encoder"
        k = net.P if kind == "decoder" else net.d
        super().__init__(torch.Size(batch_shape), torch.Size((T, k)), validate_args=False)

    def expand(self, batch_shape, _instance=None):
        new = copy.copy(self)
        new._batch_shape = torch.Size(batch_shape)
        return new

    def _flat(self, *tensors: torch.Tensor, shape: torch.Size) -> list[torch.Tensor]:
        return [t.expand(shape + t.shape[-2:]).reshape((-1,) + t.shape[-2:]) for t in tensors]

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        cached = (self.stash or {}).get("terms")
        if cached is not None and self.kind == "prior" and value is cached["z"]:
            return cached["log_pz"]
        if cached is not None and self.kind == "decoder" and self.context is cached["z"] and value is cached["x"]:
            return cached["log_px"]
        shape = torch.broadcast_shapes(value.shape[:-2], self.context.shape[:-2], self.batch_shape)
        v, c = self._flat(value, self.context, shape=shape)
        x, z = (c, v) if self.kind != "decoder" else (v, c)
        terms = self.net.terms(x, z)
        key = {"prior": "log_pz", "encoder": "log_qz", "decoder": "log_px"}[self.kind]
        return terms[key].sum(-1).reshape(shape)

    def rsample(self, sample_shape=()) -> torch.Tensor:
        shape = torch.Size(sample_shape) + self.batch_shape
        T = self.event_shape[0]
        if self.context is None:  # simulation: draw (z, x) jointly, keep x for the decoder site
            z, x = self.net.generate(int(np.prod(shape)), T)
            z, x = z.reshape(shape + z.shape[1:]), x.reshape(shape + x.shape[1:])
            self.stash.update(z=z, x=x)
            return z
        (c,) = self._flat(self.context, shape=shape)
        if self.kind == "decoder":
            _, out = self.net.generate(c.shape[0], T, z=c)
        else:
            out, _ = self.net.generate(c.shape[0], T, x=c, encoder=self.kind == "encoder")
        return out.reshape(shape + out.shape[1:])

    def sample(self, sample_shape=()) -> torch.Tensor:
        if self.kind == "decoder" and self.stash and self.stash.get("z") is self.context:
            return self.stash["x"]  # the x drawn jointly with this very z
        with torch.no_grad():
            return self.rsample(sample_shape)


def model(x=None, N=None, T=None, P=None, d=2.0, hidden=16.0):
    """Variational RNN: a VAE at every step, conditioned on an RNN state (004 papers 2.1, eqs 6.2 to 6.10).

    Generative story::

        h_0 = 0
        for t = 1..T (each sequence i = 1..N independently):
            z_t ~ Normal(mu_0t, diag sigma_0t^2),  (mu_0t, sigma_0t) = phi_prior(h_{t-1})          # 6.2, 6.3
            x_t ~ Normal(mu_xt, diag sigma_xt^2),  (mu_xt, sigma_xt) = phi_dec(phi_z(z_t), h_{t-1})  # 6.4, 6.5
            h_t = f_theta(phi_x(x_t), phi_z(z_t), h_{t-1})                                         # 6.6 (GRU cell)

    The site ``z`` (N, T, d) holds the whole latent path; its density is prod_t p(z_t | x_<t,
    z_<t) and that of ``x`` (N, T, P) is prod_t p(x_t | z_<=t, x_<t), so their product is
    eq 6.6's joint. The network weights are not random: ``pyro.module("vrnn", ...)`` registers
    them and SVI learns them by maximum likelihood alongside the guide ``amortised`` (eqs 6.7
    to 6.9: q(z_t | x_<=t, z_<t) = Normal(phi_enc(phi_x(x_t), h_{t-1})), sharing phi_x and
    f_theta with the model), maximising eq 6.10's ELBO. ``zoo.simulate`` draws sequences
    from fixed initial weights (a private generator); conditioned on a given z it draws x_t
    step by step from the decoder.
    """
    d, hidden = int(d), int(hidden)
    if x is not None:
        N, T, P = x.shape
    net = network(int(P), d, hidden, simulate=x is None)
    stash: dict = {}
    with pyro.plate("data", N, dim=-1):
        z = pyro.sample("z", _Sequential(net, "prior", x, (N,), int(T), stash))
        if x is not None:  # both sites' log densities from one pass of the RNN, in this grad mode
            stash["terms"] = _joint_terms(net, x, z)
        pyro.sample("x", _Sequential(net, "decoder", z, (N,), int(T), stash), obs=x)


def _joint_terms(net: VRNNNet, x: torch.Tensor, z: torch.Tensor) -> dict[str, torch.Tensor]:
    """log p(z | x) and log p(x | z) per sequence (the sums over t of eqs 6.2 and 6.4),
    shaped like the broadcast batch of x and z."""
    shape = torch.broadcast_shapes(x.shape[:-2], z.shape[:-2])
    xf, zf = (t.expand(shape + t.shape[-2:]).reshape((-1,) + t.shape[-2:]) for t in (x, z))
    h, _, fz = net.states(xf, zf)
    p_loc, p_scale = net.prior_params(h)
    x_loc, x_scale = net.dec_params(fz, h)
    log_pz = dist.Normal(p_loc, p_scale).log_prob(zf).sum((-1, -2)).reshape(shape)
    log_px = dist.Normal(x_loc, x_scale).log_prob(xf).sum((-1, -2)).reshape(shape)
    return {"z": z, "x": x, "log_pz": log_pz, "log_px": log_px}


def amortised_guide(problem: Any) -> Callable[..., None]:
    """The guide ``amortised``: the VRNN encoder q(z_t | x_<=t, z_<t) of eqs 6.7 to 6.9."""
    x = problem.data["x"]
    N, T, P = x.shape
    d, hidden = int(problem.hyper["d"]), int(problem.hyper["hidden"])

    def guide(*args: Any, **kwargs: Any) -> None:
        net = network(P, d, hidden)
        with pyro.plate("data", N, dim=-1):
            pyro.sample("z", _Sequential(net, "encoder", x, (N,), T))

    return guide


def _posterior_draws(problem: Any, net: VRNNNet, guide: Any, k: int,
                     g: torch.Generator) -> tuple[str, torch.Tensor, tuple | None]:
    """``k`` draws of z per sequence from the fitted guide: (kind, z (k*N, T, d), q params or
    None for the encoder). An AutoNormal guide's locs and scales are read from the guide
    object; any other guide is the amortised encoder (the ``vrnn`` module's weights)."""
    x = problem.data["x"]
    N = x.shape[0]
    xk = x.expand((k,) + x.shape).reshape((-1,) + x.shape[1:])
    if isinstance(guide, AutoNormal) and guide.locs.z.shape == (N,) + x.shape[1:2] + (net.d,):
        loc, scale = guide.locs.z.detach(), guide.scales.z.detach()
        loc, scale = (t.expand((k,) + t.shape).reshape(xk.shape[:2] + (net.d,)) for t in (loc, scale))
        return "mean_field", loc + scale * torch.randn(loc.shape, generator=g, dtype=DTYPE), (loc, scale)
    z, _ = net.generate(xk.shape[0], x.shape[1], x=xk, encoder=True, generator=g)
    return "amortised", z, None


def diagnose(problem: Any, posterior: Mapping[str, np.ndarray], truth: Mapping | None = None,
             guide: Any = None) -> dict:
    """ELBO per step and KL per step (eq 6.10, averaged over sequences and guide draws), the
    ELBO and the IWAE bound per sequence (``iwae_k`` draws), and the fitted weights (for `plot`)."""
    x = problem.data["x"]
    N, T, P = x.shape
    d, hidden = int(problem.hyper["d"]), int(problem.hyper["hidden"])
    with torch.no_grad():
        net = network(P, d, hidden)
        kind, z, q = _posterior_draws(problem, net, guide, IWAE_K, torch.Generator().manual_seed(0))
        xk = x.expand((IWAE_K,) + x.shape).reshape((-1, T, P))
        terms = {k: v.reshape(IWAE_K, N, T) for k, v in net.terms(xk, z, q).items()}
    log_w = (terms["log_pz"] + terms["log_px"] - terms["log_qz"]).sum(-1)
    iwae = torch.logsumexp(log_w, 0) - math.log(IWAE_K)
    elbo_t = (terms["log_px"] - terms["kl"]).mean((0, 1))
    return {"elbo": float(log_w.mean()), "iwae": float(iwae.mean()), "iwae_k": IWAE_K,
            "elbo_per_step": elbo_t.numpy(), "kl_per_step": terms["kl"].mean((0, 1)).numpy(),
            "loglik_per_step": terms["log_px"].mean((0, 1)).numpy(), "guide": kind,
            "networks": {"vrnn": stored_state("vrnn")}}


def plot(result: Any, out: str | Path, num: int = 3, seed: int = 0) -> list[Path]:
    """Samples, reconstructions and the ELBO and KL per step of a fitted VRNN, as PNG files.

    ``samples.png``: ``num`` sequences drawn from the fitted model. ``reconstructions.png``:
    the first ``num`` data sequences and the decoder's mean at the posterior mean of z.
    ``per_step.png``: ELBO and KL per time step. Written atomically.
    """
    import matplotlib.pyplot as plt

    nets = result.diagnostics.get("networks")
    if not nets:
        raise ZooError(f"model 'vrnn': result from back-end {result.backend!r} carries no network weights to plot")
    x = result.idata.observed_data["x"].values
    _, T, P = x.shape
    d, hidden = int(result.hyper["d"]), int(result.hyper["hidden"])
    net = load_state(VRNNNet(P, d, hidden).to(DTYPE), nets["vrnn"])
    out, files = Path(out), []

    def save(fig: Any, name: str) -> None:
        files.append(atomic_write(out / name, lambda tmp: fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")))
        plt.close(fig)

    with torch.no_grad():
        _, xs = net.generate(num, T, generator=torch.Generator().manual_seed(seed))
        z_mean = torch.as_tensor(result.idata.posterior["z"].values.mean(axis=(0, 1)), dtype=DTYPE)
        n = min(num, len(z_mean))
        xt = torch.as_tensor(x[:n], dtype=DTYPE)
        h, _, fz = net.states(xt, z_mean[:n])
        recon = net.dec_params(fz, h)[0].numpy()
    def sequences(k: int, draw: Any, label: str, title: str, name: str) -> None:
        """One panel per sequence i < k, ``draw(ax, i)`` plotting it; shared labels and legend."""
        fig, axes = plt.subplots(1, k, figsize=(4 * k, 3.2), squeeze=False, sharey=True)
        for i, ax in enumerate(axes[0]):
            draw(ax, i)
            ax.set_title(f"{label} {i}")
            ax.set_xlabel("t")
        axes[0, 0].set_ylabel("x_t")
        axes[0, 0].legend(fontsize=7)
        fig.suptitle(title)
        fig.tight_layout()
        save(fig, name)

    def sample(ax: Any, i: int) -> None:
        for j in range(P):
            ax.plot(xs[i, :, j].numpy(), label=f"x_t[{j}]")

    def reconstruction(ax: Any, i: int) -> None:
        for j in range(P):
            line, = ax.plot(x[i, :, j], "o", ms=3, label=f"data x_t[{j}]")
            ax.plot(recon[i, :, j], "-", color=line.get_color(), label=f"reconstruction x_t[{j}]")

    sequences(num, sample, "sample", "vrnn: sequences drawn from the fitted model", "samples.png")
    sequences(n, reconstruction, "sequence",
              "vrnn: data (dots) and the decoder's mean at the posterior mean of z (lines)", "reconstructions.png")
    fig, ax = plt.subplots(figsize=(6, 3))
    steps = np.arange(1, T + 1)
    ax.plot(steps, np.asarray(result.diagnostics["elbo_per_step"]), label="ELBO per step")
    ax.plot(steps, np.asarray(result.diagnostics["kl_per_step"]), label="KL(q || p) per step")
    ax.set_xlabel("t")
    ax.set_ylabel("nats per sequence")
    ax.set_title("vrnn: ELBO and KL(q || p) per time step (eq 6.10)")
    ax.legend()
    fig.tight_layout()
    save(fig, "per_step.png")
    return files


_REASON = ("the networks' weights are learned by maximum likelihood alongside the guide (SVI); "
           "{} would sample N x T x d latents under untrained networks")
_LIMITS = {
    "exact": "the prior, encoder and decoder are neural networks: p(z | x) has no closed form",
    "nuts": _REASON.format("NUTS"),
    "hmc": _REASON.format("HMC"),
    "importance": "one joint proposal over all N x T x d latents degenerates (weight ESS near 1); "
                  "svi reports the per-sequence importance-weighted bound as iwae",
}

SPEC = ModelSpec(
    name="vrnn",
    model=model,
    data={"x": DataKey(("N", "T", "P"), support=constraints.real)},
    latent_sites=(),  # no global latents: z is local, the networks' weights are parameters
    dims={"z": ("N", "T", "latent_dim")},
    hyper={"d": Hyper(2.0, constraints.positive_integer), "hidden": Hyper(16.0, constraints.positive_integer)},
    sizes={"N": 32, "T": 15, "P": 2},
    seed_section="004 papers 2.1 (VRNN, eqs 6.2 to 6.10)",
    scoring=Scoring(
        diagnose=diagnose,
        local_rows=8,
    ),
    backends=Backends(
        default=("svi",),
        limits=_LIMITS,
        guides={"amortised": amortised_guide},
        default_guide="amortised",
        options={"svi": {"num_samples": 100, "num_elbo_particles": 50}},
    ),
)
