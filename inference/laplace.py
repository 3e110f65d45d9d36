"""Where svi's Gaussian guides start: the Laplace approximation at the MAP point.

Adam scales each coordinate's step by its own gradient's size, not by the posterior's
correlations, so from a far start a Gaussian guide crawls along a narrow ridge: on
``kidscore_interaction`` (unstandardised covariates, correlations near -0.99) and
``kilpisjarvi`` (-0.99999) 10000 steps ended 1.65 and 2.05 posterior sds short of the means.
Newton-type steps are invariant to that scaling. So before SVI, the MAP point on the
unconstrained scale (where the guides live) is found with L-BFGS (torch's, strong Wolfe line
search) over Pyro's `AutoLaplaceApproximation`, and the Hessian there comes from Pyro's
``hessian`` of the same loss, as in its ``laplace_approximation``. Discrete sites are summed
out of that loss (``TraceEnum_ELBO``, as ``enum`` and svi do), so on a mixture the start is
the mode of the marginal posterior of the continuous sites. A Gaussian guide then starts at
that Gaussian: a full-rank guide at its mean and covariance, a mean-field one at its mean with
the sds 1/sqrt(H_ii) (a mean-field Gaussian's optimum for a Gaussian posterior). For a
Gaussian posterior that is the ELBO's optimum; elsewhere SVI moves on from it
(`svi.Schedule`) in the whitened coordinates of this covariance, so that strong correlations
no longer slow it: a full-rank guide is written in them (`WhitenedMultivariateNormal`), a
mean-field guide's locations step in them (`svi.Adam`'s ``whiten``; its scales stay per
coordinate, as the family requires).

The start is refused, and svi starts from the best of its prior draws as before (saying why
in its diagnostics' ``start``), where no proper mode is found: the L-BFGS search fails on a
NaN or an infinite density (``uniform_pareto``: the mode sits on the support's edge), the
Hessian where it stops is not positive definite (the centred eight schools, whose density
grows without bound down the funnel), or it stops where the gradient still matters (Newton
decrement g' H^-1 g above `DECREMENT`: more than 0.01 posterior sd from the mode).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import autoguide as ag
from pyro.distributions import constraints
from pyro.infer.autoguide.initialization import init_to_value
from pyro.ops.hessian import hessian
from torch.distributions import transform_to

from zoo.core.problem import Problem
from zoo.inference.common import elbo_for, enumerated

MAX_DIM = 1000  # the most unconstrained latent dimensions for which a Hessian is formed
MAX_ITER = 2000  # L-BFGS iterations, at most
DECREMENT = 1e-4  # the largest Newton decrement g' H^-1 g accepted at the MAP (0.01 sd squared)
WARM_GUIDES = (ag.AutoNormal, ag.AutoDiagonalNormal, ag.AutoMultivariateNormal)


@dataclass
class Laplace:
    """A Gaussian on the unconstrained scale at the MAP point.

    Attributes
    ----------
    values : the MAP point, constrained, by site.
    loc : the MAP point, unconstrained and flattened in the model's site order.
    scale_tril : the Cholesky factor C of the inverse Hessian of -log p(data, z) at ``loc``
        (unconstrained z): the whitening of `WhitenedMultivariateNormal` and `svi.Adam`.
    """

    values: dict[str, torch.Tensor]
    loc: torch.Tensor
    scale_tril: torch.Tensor

    @property
    def covariance(self) -> torch.Tensor:
        """The inverse Hessian, C C'."""
        return self.scale_tril @ self.scale_tril.T


def laplace(problem: Problem, start: dict[str, torch.Tensor]) -> Laplace | str:
    """The Laplace approximation of ``problem``'s posterior of its continuous sites (discrete
    sites summed out: the mode of the marginal posterior, which EM also climbs), found by
    L-BFGS from ``start`` (constrained values by site); a sentence saying why not where it
    does not exist or cannot be trusted (see the module's docstring). The param store is left
    as it was."""
    with pyro.get_param_store().scope():
        return _laplace(problem, start)


def _laplace(problem: Problem, start: dict[str, torch.Tensor]) -> Laplace | str:
    q = ag.AutoLaplaceApproximation(guide_model(problem), init_loc_fn=init_to_value(values=start))
    with poutine.block(), torch.no_grad():
        q()
    if q.loc.numel() > MAX_DIM:
        return f"{q.loc.numel()} unconstrained dimensions, more than {MAX_DIM} for a Hessian"
    # -log p(data, z) on the unconstrained scale (the Delta guide's log density is the
    # Jacobian's); with the discrete sites summed out where the model has them
    elbo = elbo_for(problem)
    model = enumerated(problem)
    lbfgs = torch.optim.LBFGS([q.loc], lr=1.0, max_iter=MAX_ITER, tolerance_grad=1e-10,
                              tolerance_change=1e-14, history_size=50, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        lbfgs.zero_grad()
        value = elbo.differentiable_loss(model, q)
        value.backward()
        return value

    # the line search may probe where the density is zero (a NaN loss): the point it ends at is checked
    with pyro.validation_enabled(False), poutine.block(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Encountered NaN")
        try:
            lbfgs.step(closure)
            value = elbo.differentiable_loss(model, q)
        except (ValueError, RuntimeError, IndexError) as e:  # a NaN or inf on the way (torch's
            # strong-Wolfe search raises IndexError when it meets one): no usable MAP point
            return f"the MAP search failed ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
        if not (math.isfinite(float(value.detach())) and bool(torch.isfinite(q.loc).all())):
            return "the MAP search left the region of finite density"
        (gradient,) = torch.autograd.grad(value, q.loc, retain_graph=True)
        H = hessian(value, q.loc).detach()  # Pyro's, as in its laplace_approximation
        try:
            tril = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)))
        except (RuntimeError, torch.linalg.LinAlgError):
            return ("the Hessian where L-BFGS stopped is not positive definite: no proper mode there (a "
                    "funnel's neck, where the density grows without bound, or a non-identified model)")
        guide_trace = poutine.trace(q).get_trace()
    decrement = float((tril.T @ gradient).pow(2).sum())  # g' H^-1 g
    if not math.isfinite(decrement) or decrement > DECREMENT:
        return (f"L-BFGS stopped where the gradient still matters (Newton decrement {decrement:.2g}): "
                "the density may grow without bound (a funnel) or the mode is not smooth")
    values = {name: site["value"].detach().clone() for name, site in guide_trace.nodes.items()
              if site["type"] == "sample" and not site["infer"].get("is_auxiliary")}
    return Laplace(values, q.loc.detach().clone(), tril)


def guide_model(problem: Problem, model: Any = None) -> Any:
    """The model an autoguide is built on: ``model`` (default ``problem.model``) with the
    problem's discrete sites hidden (they are summed out of the ELBO, not guided)."""
    model = model or problem.model
    discrete = list(problem.discrete_sites)
    return poutine.block(model, hide=discrete) if discrete else model


class WhitenedMultivariateNormal(ag.AutoMultivariateNormal):
    """Pyro's full-rank guide in the whitened coordinates of a Laplace approximation N(m, CC'):
    z = m + C (loc - m) + C L eps, with Pyro's own parameters ``loc``, ``scale`` and
    ``scale_tril`` (L = scale * scale_tril) starting at m, 1 and I, i.e. at the Laplace
    approximation itself. The family is the same (an affine image of a full-rank Gaussian is
    one); only the coordinates Adam steps in change, so that a correlation of -0.99999 is as
    easy as none, for the covariance's factor as much as for the locations."""

    def __init__(self, model: Any, start: Laplace) -> None:
        super().__init__(model, init_loc_fn=init_to_value(values=start.values), init_scale=1.0)
        self.origin, self.whitening = start.loc, start.scale_tril

    def get_posterior(self, *args: Any, **kwargs: Any) -> Any:
        tril = self.scale[..., None] * self.scale_tril
        loc = self.origin + self.whitening @ (self.loc - self.origin)
        return dist.MultivariateNormal(loc, scale_tril=self.whitening @ tril)

    def _loc_scale(self, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        # the hook behind Pyro's public median() and quantiles(): in the model's coordinates
        posterior = self.get_posterior()
        return posterior.loc, posterior.variance.sqrt()

    def whitened_sds(self) -> torch.Tensor:
        """The marginal sds in the whitened coordinates that ``loc`` lives in."""
        tril = self.scale[..., None] * self.scale_tril
        return tril.pow(2).sum(-1).sqrt()


def warm(q: Any, start: Laplace) -> None:
    """Set a mean-field (``mean_field``, ``diag``) guide's sds, already created, to the
    mean-field optimum for the Laplace approximation, 1/sqrt(H_ii); its locations come from
    the guide's ``init_loc_fn`` (the MAP point)."""
    sds = torch.cholesky_inverse(start.scale_tril).diagonal().rsqrt()
    if isinstance(q, ag.AutoDiagonalNormal):
        _set(q.scale, q.scale_constraint, sds)
        return
    at = 0
    for name, _ in q.prototype_trace.iter_stochastic_nodes():
        scale = attrgetter(name)(q.scales)
        _set(scale, q.scale_constraint, sds[at:at + scale.numel()].reshape(scale.shape))
        at += scale.numel()


def _set(param: torch.Tensor, constraint: constraints.Constraint, value: torch.Tensor) -> None:
    """Write ``value`` (constrained) into a Pyro parameter's unconstrained leaf, in place."""
    with torch.no_grad():
        leaf = param.unconstrained()
        leaf.copy_(transform_to(constraint).inv(value.to(leaf.dtype)))
