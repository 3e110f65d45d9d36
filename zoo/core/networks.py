"""Neural networks as model parameters: weights that live in Pyro's param store, initialised
reproducibly, and the fixed networks `zoo.simulate` draws from. Shared by the deep models
(`zoo.models.vae`, `zoo.models.vrnn`).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping
from typing import Any

import numpy as np
import pyro
import torch
from torch import nn

from zoo.core.problem import DTYPE

SIMULATION_SEED = 0   # the private generator behind the networks `zoo.simulate` draws from


def init_module(net: nn.Module, generator: torch.Generator | None = None) -> nn.Module:
    """Re-draw every weight like torch's default initialisation, from ``generator``.

    ``generator=None`` uses the global torch generator, which the zoo's back-ends seed
    (``pyro.set_rng_seed``) before they first call the model or build a guide, so the same
    seed gives the same starting weights. Linear layers and GRU cells are uniform in
    +-1/sqrt(fan_in) (+-1/sqrt(hidden) for GRU cells).
    """
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Linear):
                bound = 1 / math.sqrt(m.in_features)
            elif isinstance(m, nn.GRUCell):
                bound = 1 / math.sqrt(m.hidden_size)
            else:
                continue
            for p in m.parameters(recurse=False):
                nn.init.uniform_(p, -bound, bound, generator=generator)
    return net


def _construct(build: Callable[[], nn.Module]) -> nn.Module:
    # Constructing an nn.Module draws from the global generator; fork it so that only
    # `init_module` decides the weights (and the global stream is left as it was).
    with torch.random.fork_rng(devices=[]):
        return build().to(DTYPE)


def build_module(build: Callable[[], nn.Module], generator: torch.Generator | None = None) -> nn.Module:
    """``build()`` in float64 with its weights drawn by `init_module` from ``generator``."""
    return init_module(_construct(build), generator)


_STORE_NETS: dict[tuple[str, Hashable], nn.Module] = {}
_SIMULATION_NETS: dict[tuple[str, Hashable], nn.Module] = {}


def store_module(prefix: str, key: Hashable, build: Callable[[], nn.Module]) -> nn.Module:
    """The network ``build()`` registered under ``prefix`` with its weights from the param store.

    When the store does not hold every weight (after ``pyro.clear_param_store()``, or with
    other sizes), the network is re-initialised from the global torch generator and
    registered; otherwise it carries the stored (trained) weights. So the model, the guide,
    the back-ends' log densities and the diagnostics all see one set of weights per fit.
    """
    store = pyro.get_param_store()
    net = _STORE_NETS.get((prefix, key))
    shapes = {f"{prefix}$$${n}": p.shape for n, p in (net or _construct(build)).named_parameters()}
    stored = [n for n in shapes if n in store]
    if net is None or len(stored) < len(shapes) or any(store[n].shape != shapes[n] for n in stored):
        for n in [n for n in store if n.startswith(f"{prefix}$$$")]:
            del store[n]
        net = _STORE_NETS[(prefix, key)] = build_module(build, None)
    return pyro.module(prefix, net, update_module_params=True)


def simulation_module(prefix: str, key: Hashable, build: Callable[[], nn.Module]) -> nn.Module:
    """The fixed network ``zoo.simulate`` draws from: initialised from a private generator
    (seed `SIMULATION_SEED`), never trained, independent of the param store and of the
    global random stream, so simulated data depend on the simulation seed only."""
    if (prefix, key) not in _SIMULATION_NETS:
        net = build_module(build, torch.Generator().manual_seed(SIMULATION_SEED))
        _SIMULATION_NETS[(prefix, key)] = net.requires_grad_(False)
    return _SIMULATION_NETS[(prefix, key)]


def stored_state(prefix: str) -> dict[str, np.ndarray]:
    """The weights stored under ``prefix`` in the param store, as numpy arrays."""
    store = pyro.get_param_store()
    return {n.split("$$$", 1)[1]: store[n].detach().numpy().copy()
            for n in store if n.startswith(f"{prefix}$$$")}


def load_state(net: nn.Module, state: Mapping[str, Any]) -> nn.Module:
    """``net`` with its weights set from ``state`` (arrays or nested lists, e.g. from a saved
    result's diagnostics)."""
    net.load_state_dict({k: torch.as_tensor(np.asarray(v), dtype=DTYPE) for k, v in state.items()})
    return net.requires_grad_(False)
