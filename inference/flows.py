"""RealNVP affine coupling flows (notes 004 3.6, eqs 3.4 to 3.9), shared by the ``realnvp_flow``
density model and the ``svi`` back-end's ``flow`` guide family.

Each layer is Pyro's ``AffineCoupling``: y_{1:d} = x_{1:d}, y_{d+1:D} = x_{d+1:D} exp(s) + t
with s, t functions of x_{1:d} (eq 3.4; Pyro clamps s to [-5, 3]); a ``Permute`` between layers
swaps the halves (eq 3.8). log|det| is the sum of the s (eq 3.7).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyro.distributions.transforms as T
import torch
from pyro.infer.autoguide import AutoNormalizingFlow

from zoo.core.errors import ZooError
from zoo.core.problem import DTYPE, default_dtype


def coupling_transform(dim: int, num_layers: int = 4, hidden: int | None = None, seed: int | None = None,
                       dtype: torch.dtype = DTYPE) -> T.ComposeTransformModule:
    """``num_layers`` affine coupling layers on R^dim with the halves swapped between them.

    Parameters
    ----------
    dim : dimension of the variable (at least 1; for dim = 1 a "coupling" layer conditions on
        nothing and is a learned affine map, so the flow is Gaussian).
    num_layers : number of coupling layers (eq 3.8).
    hidden : width of the two hidden layers of each layer's s, t network (default 10 * dim,
        at least 16).
    seed : seeds the initial weights (None: the global torch generator).

    Returns
    -------
    A ``ComposeTransformModule`` T mapping the base variable z to x = T(z); its parameters are
    trainable and ``T.log_abs_det_jacobian(z, x)`` is the sum of the layers' sum_j s_j.
    """
    if dim < 1 or num_layers < 1:
        raise ZooError(f"coupling flow needs dim >= 1 and num_layers >= 1, got dim={dim}, num_layers={num_layers}")
    hidden = int(hidden or max(16, 10 * dim))
    split = dim // 2
    reverse = torch.arange(dim - 1, -1, -1)
    # the weights are drawn in float32 and cast, as torch's modules do by default, whatever the
    # caller's default dtype (a zoo run sets float64): the same seed gives the same flow anywhere
    with torch.random.fork_rng(devices=[]), default_dtype(torch.float32):
        if seed is not None:
            torch.manual_seed(seed)
        parts: list[Any] = []
        for i in range(num_layers):
            parts.append(T.affine_coupling(dim, hidden_dims=[hidden, hidden], split_dim=split))
            if i < num_layers - 1 and dim > 1:
                parts.append(T.Permute(reverse))
        flow = T.ComposeTransformModule(parts)
    return flow.to(dtype)


def coupling_guide(model: Callable[..., Any], num_layers: int = 4, hidden: int | None = None,
                   **kwargs: Any) -> AutoNormalizingFlow:
    """An SVI guide family: a standard normal pushed through RealNVP coupling layers.

    ``AutoNormalizingFlow`` over all of the model's (unconstrained) continuous latents, with
    `coupling_transform` (Pyro ``AffineCoupling`` layers and swaps, float64) as the bijection.
    Flow guides need several particles and a decaying learning rate (DESIGN.md).

    Parameters
    ----------
    model : a Pyro model with continuous latent sites.
    num_layers : coupling layers.
    hidden : hidden width of each layer's network (default 10 * latent dim, at least 16).
    **kwargs : passed to ``AutoNormalizingFlow`` (``init_loc_fn`` is accepted and unused: the
        flow starts at the standard normal, like Pyro's IAF guide).
    """
    kwargs.pop("init_loc_fn", None)

    def init(latent_dim: int) -> T.ComposeTransformModule:
        return coupling_transform(latent_dim, num_layers, hidden)

    return AutoNormalizingFlow(model, init, **kwargs)
