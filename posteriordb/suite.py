"""The posteriordb suite in the zoo: every module registered through `zoo.register`, the path a
user's model takes, with its data, its stored reference and the sampler settings its geometry
needs.

``register_suite()`` (called by ``import zoo``) lists every model at once and registers each on
its first use (`zoo.registry.defer`), so that importing the zoo reads no data file and traces
no model: ``zoo.list_models(source="posteriordb")`` and ``zoo.catalogue()`` show them, and
``zoo.run``, ``zoo.compare`` or ``zoo.get_model`` on one registers it. Each reference applies
to the model's own data set only.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path
from types import ModuleType

from zoo import api, registry
from zoo.core.spec import ModelSpec, StoredReference, first_paragraph
from zoo.inference import hmc, nuts, svi
from zoo.posteriordb import (
    MODULES,
    arK,
    arma11,
    eight_schools_centered,
    eight_schools_noncentered,
    garch11,
    gp_pois_regr,
    gp_regr,
    hmm_example,
    kidscore_interaction,
    kilpisjarvi,
    logearn_interaction_z,
    low_dim_gauss_mix,
    radon_hierarchical_intercept_noncentered,
    sblrc_blr,
    wells_dist,
)

FOLDER = Path(__file__).parent
SUITE: dict[str, ModuleType] = {m.NAME: m for m in (
    sblrc_blr, wells_dist, kidscore_interaction, logearn_interaction_z, kilpisjarvi, eight_schools_noncentered,
    eight_schools_centered, radon_hierarchical_intercept_noncentered, arK, arma11, garch11, low_dim_gauss_mix,
    hmm_example, gp_regr, gp_pois_regr)}
if list(SUITE) != MODULES:
    raise ImportError(f"zoo.posteriordb: MODULES {MODULES} and the suite's imports {list(SUITE)} disagree")


def register(module: ModuleType) -> ModelSpec:
    """Register one suite module with `zoo.register`: its data, its reference summaries
    (``reference/<NAME>.json``), its ``NUTS_OPTIONS`` as the model's defaults for nuts (and
    hmc, where it takes them) and its ``SVI_OPTIONS`` as those for svi."""
    geometry = getattr(module, "NUTS_OPTIONS", {})
    options = {b.name: {k: v for k, v in geometry.items() if k in b.options} for b in (nuts.BACKEND, hmc.BACKEND)}
    options[svi.BACKEND.name] = dict(getattr(module, "SVI_OPTIONS", {}))
    return api.register(module.NAME, module.model, module.data(),
                        reference=StoredReference(FOLDER / "reference" / f"{module.NAME}.json", kind="posteriordb"),
                        options={k: v for k, v in options.items() if v}, source="posteriordb",
                        kind=module.KIND, description=first_paragraph(module.__doc__ or ""))


def register_suite() -> None:
    """List every suite model in the registry, each registered on its first use."""
    for name, module in SUITE.items():
        if name not in registry.names():
            registry.defer(name, partial(register, module), source="posteriordb", kind=module.KIND,
                           description=first_paragraph(module.__doc__ or ""))
