"""The small data types every model module fills in: `ModelSpec`, `DataKey`, `Hyper`, `ExactPosterior`.

A model module in `models/` builds one `ModelSpec` named `SPEC`; the registry in
`zoo/registry.py` lists those specs explicitly. Nothing here knows any particular model.
"""
from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats as scipy_stats
from torch.distributions import constraints


@dataclass(frozen=True)
class DataKey:
    """One entry of a model's data dict.

    Parameters
    ----------
    dims : names of the array's dimensions, e.g. ``("N",)`` or ``("N", "D")``; ``()`` for a
        scalar. Keys sharing a dimension name must agree on its length. A dimension named after
        a hyperparameter (``"K"``) must match that hyperparameter's implied size.
    dtype : ``"float"`` or ``"long"`` (integer labels or counts).
    observed : whether the key is the value of an observed sample site (False for covariates).
    support : a torch constraint every element must satisfy (checked before any back-end runs);
        ``None`` to rely on the support of the observed site found by tracing the model.
    optional : the model runs without it.
    min_ndim : the fewest dimensions accepted, when trailing ones may be left out (``x`` given
        as (N,) or (N, D)); None: exactly ``len(dims)``.
    """

    dims: tuple[str, ...]
    dtype: str = "float"
    observed: bool = True
    support: constraints.Constraint | None = None
    optional: bool = False
    min_ndim: int | None = None


@dataclass(frozen=True)
class Hyper:
    """A hyperparameter: its default value and the constraint a user-supplied value must meet.

    ``size`` names a dimension the value's length fixes (Dirichlet ``alpha`` fixes ``K``).
    ``choices`` lists the allowed values of a string hyperparameter (``prior``).
    """

    default: Any
    constraint: constraints.Constraint | None = None
    size: str | None = None
    choices: tuple[str, ...] | None = None


@dataclass
class ExactPosterior:
    """A closed-form posterior: per-site mean and sd, joint draws, and the log evidence.

    ``sample(rng, n)`` returns a dict of arrays with a leading draw dimension of length ``n``
    (None for a reference known only by its summaries: then no distance to its draws is
    computed). ``log_prob(values)`` is the posterior log density at one point (a dict of site
    arrays). ``extra`` holds model-specific closed-form quantities (posterior parameters,
    predictive). ``mcse_mean``: per site, the Monte Carlo standard error of ``mean`` for a
    reference made by sampling (None for a closed form); scoring allows for it.
    """

    mean: dict[str, np.ndarray]
    sd: dict[str, np.ndarray]
    sample: Callable[[np.random.Generator, int], dict[str, np.ndarray]] | None
    log_prob: Callable[[dict[str, np.ndarray]], float]
    log_evidence: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    kind: str = "closed_form"
    """``"closed_form"``; ``"mcmc"`` for a stored reference from a long sampler run (its
    ``log_prob`` is not available; the accuracy yardsticks still apply, within its MCSE);
    for a `StoredReference`, who made it (``"posteriordb"``, ``"numpyro"``)."""
    mcse_mean: dict[str, np.ndarray] | None = None
    """Monte Carlo standard errors of a sampled reference's means, per site (None: exact)."""
    marginal: Callable[[str, tuple[int, ...]], Any] | None = None
    """``marginal(site, index)``: the exact marginal posterior of one latent scalar as a frozen
    one-dimensional ``scipy.stats`` distribution (its ``pdf`` is drawn in density plots), or
    None where the model has no closed form for it (plots then show a density estimate of
    exact draws)."""


def first_paragraph(doc: str) -> str:
    """The first paragraph of a docstring, as one line."""
    return " ".join(doc.strip().split("\n\n")[0].split())


def data_fingerprint(data: Mapping[str, Any]) -> str:
    """SHA-256 of a data set: every key's name, dtype, shape and bytes, in key order."""
    h = hashlib.sha256()
    for k in sorted(data):
        a = np.ascontiguousarray(np.asarray(data[k]))
        h.update(f"{k}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _no_density(values: dict[str, np.ndarray]) -> float:
    raise NotImplementedError("a stored reference is known by summaries of its draws, not by its density")


class StoredReference:
    """A posterior known by summaries of reference draws for one data set: posteriordb's
    reference draws (long Stan runs), or a peer library's long run.

    Parameters
    ----------
    path : a JSON file (or ``load() -> dict``) with a list ``scalars`` of per-scalar
        summaries ``{"site", "index", "mean", "sd", "mcse_mean", ...}`` covering every
        latent site, and the provenance beside it (the format of the files in
        ``posteriordb/reference/``); read once, when first needed.
    kind : who made it, for the comparison table (``"posteriordb"``); a ``"reference"``
        field in the file overrides it (``"numpyro"``).

    `zoo.register` binds it to the model's example data: it is the reference for that data
    set only (`data_fingerprint`), and none for any other.
    """

    def __init__(self, path: str | Path | Callable[[], Mapping[str, Any]], kind: str = "mcmc") -> None:
        self.path, self.kind = path, kind
        self._summary: dict[str, Any] | None = None

    def summary(self) -> dict[str, Any]:
        """The file's contents, read on the first call."""
        if self._summary is None:
            self._summary = dict(self.path() if callable(self.path) else json.loads(Path(self.path).read_text()))
        return self._summary

    def posterior(self) -> ExactPosterior:
        """The summaries as an `ExactPosterior`: means, sds and MCSEs per site; no draws and
        no density."""
        rows = self.summary()["scalars"]
        shapes: dict[str, tuple[int, ...]] = {}
        for r in rows:
            idx = tuple(r["index"])
            shapes[r["site"]] = tuple(max(a, i + 1) for a, i in zip(shapes.get(r["site"], (0,) * len(idx)), idx))
        arrays = {key: {site: np.full(shape, np.nan) for site, shape in shapes.items()}
                  for key in ("mean", "sd", "mcse_mean")}
        for r in rows:
            for key, values in arrays.items():
                values[r["site"]][tuple(r["index"])] = r[key]
        provenance = {k: v for k, v in self.summary().items() if k != "scalars"}
        return ExactPosterior(mean=arrays["mean"], sd=arrays["sd"], sample=None, log_prob=_no_density,
                              extra=provenance, kind=self.summary().get("reference") or self.kind,
                              mcse_mean=arrays["mcse_mean"])

    def bind(self, data: Mapping[str, Any], name: str) -> Reference:
        """The model's `Reference`: this one for ``data`` (numpy arrays as validated), none
        for other data."""
        fingerprint = data_fingerprint(data)

        def unavailable(hyper: Mapping[str, Any], other: Mapping[str, Any] | None = None) -> str | None:
            if other is None or data_fingerprint(other) == fingerprint:
                return None
            return (f"model {name!r}: its stored reference posterior belongs to its own data set "
                    "(zoo.get_model(name).example); these data differ")

        return Reference(exact=lambda data, hyper: self.posterior(), unavailable=unavailable)


@dataclass(frozen=True)
class Reference:
    """What a back-end's answer is scored against: the model's ground truth.

    Parameters
    ----------
    exact : ``exact(data, hyper) -> ExactPosterior`` on numpy arrays: the closed-form posterior
        (or a stored long-run reference, ``kind="mcmc"``).
    unavailable : ``unavailable(hyper, data) -> reason or None``: when ``exact`` does not apply
        to these hyperparameters and data (``data`` may be None: the hyperparameters alone),
        such as a Laplace prior or data other than the stored reference's.
    posterior_hyper : for a posterior in the prior's family, ``posterior_hyper(exact) -> dict``:
        the hyperparameters that make the exact posterior the next prior (`zoo.sequential_update`).
    """

    exact: Callable[[dict, dict], ExactPosterior] | None = None
    unavailable: Callable[[dict, dict | None], str | None] | None = None
    posterior_hyper: Callable[[ExactPosterior], dict[str, Any]] | None = None


@dataclass(frozen=True)
class Scoring:
    """How a back-end's draws are read before anything is measured, and the model's own scores.

    Parameters
    ----------
    diagnose : ``diagnose(problem, posterior, truth) -> dict``: model-specific scores computed
        after every back-end run from its draws (site to (chain, draw, ...) arrays) and the
        simulated truth (or None): peer scores, clustering quality, occupied clusters. Every
        entry goes into ``Result.diagnostics``; plain scalars also become table columns. A
        ``diagnose`` with a keyword ``guide`` is also given the fitted guide (`Fit.guide`:
        None after a back-end without one).
    relabel : ``relabel(posterior) -> posterior``: undoes label switching in every back-end's
        draws before anything is measured; ``relabel_note`` says how, in the table.
    local_rows : keep only the first ``local_rows`` rows of each local latent site (those not
        in ``latent_sites``) in the InferenceData; every row is used before that (the
        log-likelihoods). None keeps them all.
    """

    diagnose: Callable[[Any, dict[str, np.ndarray], dict | None], dict[str, Any]] | None = None
    relabel: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None = None
    relabel_note: str = ""
    local_rows: int | None = None


@dataclass(frozen=True)
class Backends:
    """Which back-ends suit the model, which do not, and how they run on it.

    Parameters
    ----------
    default : the back-ends ``zoo.run(name)`` prefers when none is named, best first; the first
        that applies to the data and hyperparameters runs (``exact`` where there is a closed
        form, the amortised ``svi`` for deep models, ``nuts`` for a user's model).
    own : model-specific back-ends, name to `Backend` (``cavi``, ``em``, ``gibbs``).
    limits : generic back-ends that cannot work on this model, with the reason (shown in the
        comparison table and in the error).
    skip_by_default : back-ends left out of ``compare`` when the user names none, with why.
    guides : model-specific SVI guide families, name to ``factory(problem) -> guide``
        (an amortised encoder); ``default_guide`` is the one ``svi`` uses unless told.
    options : back-end name to option defaults that suit this model better than the
        back-end's own (fewer draws of a large local latent); the user's options still win.
    start : where an optimiser (``svi``, ``enum``) starts: ``start(problem, seed)`` -> values
        of the continuous latent sites (EM with k-means restarts for a mixture, whose
        components a start drawn from the prior merges); by default the best of 200 prior
        draws (`inference.common.optimiser_start`).
    """

    default: tuple[str, ...] = ("nuts",)
    own: Mapping[str, Backend] = field(default_factory=dict)
    limits: Mapping[str, str] = field(default_factory=dict)
    skip_by_default: Mapping[str, str] = field(default_factory=dict)
    guides: Mapping[str, Callable[[Any], Callable[..., Any]]] = field(default_factory=dict)
    default_guide: str | None = None
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    start: Callable[[Any, int], Mapping[str, Any]] | None = None


@dataclass(frozen=True)
class ModelSpec:
    """Everything the zoo knows about one model.

    What a model must provide: ``name``, ``model`` (whose docstring tells the generative
    story and names the seed section), ``data`` and ``latent_sites``. Everything else is
    optional and grouped by what it is for: ``reference`` (the ground truth back-ends are
    scored against), ``scoring`` (how draws are read, and the model's own scores) and
    ``backends`` (which back-ends suit it and how they run on it).

    Parameters
    ----------
    name : registry name (CONCEPTS.md).
    model : the Pyro model. Keyword arguments are the data keys (observed ones default to
        ``None``), the hyperparameters, and the sizes used when simulating (``N``).
    data : the data keys and their shapes, types and supports.
    latent_sites : the global latent sample sites, in the order the table reports them.
    hyper : the hyperparameters with defaults and constraints.
    sizes : default sizes for simulation (``{"N": 100}``).
    seed_section : where in the source notes the concept comes from.
    inputs : makes the covariates (non-observed data keys) for a simulation,
        ``inputs(rng, sizes, hyper) -> dict``.
    check : extra validation ``check(data, hyper) -> None`` raising ZooError.
    example : default data (a registered model's example); None to simulate it.
    source : where the model comes from: ``"catalogue"`` (the study notes), ``"posteriordb"``
        or ``"user"`` (`zoo.register`).
    kind : a short label of what sort of model it is (``"logistic regression"``); the
        catalogue's models are labelled by their section of CONCEPTS.md in `zoo.catalogue`.
    description : one line saying what it is (default: the first paragraph of ``doc``).
    dims : names of the dimensions of latent and deterministic sites, in the InferenceData
        (``{"locs": ("component", "D")}``); a data key's dimensions are named by its
        `DataKey.dims`. Dimensions left unnamed take the name of the plate they sit in, else
        ``<site>_dim_<i>``.
    reference, scoring, backends : the optional parts, see `Reference`, `Scoring`, `Backends`.
    """

    name: str
    model: Callable[..., Any]
    data: Mapping[str, DataKey]
    latent_sites: tuple[str, ...]
    hyper: Mapping[str, Hyper] = field(default_factory=dict)
    sizes: Mapping[str, int] = field(default_factory=dict)
    seed_section: str = ""
    inputs: Callable[..., dict[str, Any]] | None = None
    check: Callable[[dict, dict], None] | None = None
    example: Mapping[str, Any] | None = None
    source: str = "catalogue"
    kind: str = ""
    description: str = ""
    dims: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    reference: Reference = field(default_factory=Reference)
    scoring: Scoring = field(default_factory=Scoring)
    backends: Backends = field(default_factory=Backends)

    @property
    def doc(self) -> str:
        """The model's docstring: its generative story and seed section."""
        return inspect.getdoc(self.model) or ""

    @property
    def observed_keys(self) -> tuple[str, ...]:
        return tuple(k for k, v in self.data.items() if v.observed)

    def exact_reason(self, hyper: Mapping[str, Any], data: Mapping[str, Any] | None = None) -> str | None:
        """Why there is no exact posterior for these hyperparameters, or None if there is."""
        if self.reference.exact is None:
            return f"model {self.name!r} has no closed-form posterior"
        return self.reference.unavailable(hyper, data) if self.reference.unavailable else None


DRAW_KINDS = {
    "mcmc": "Markov chains: draws depend on each other; r_hat and ESS measure the mixing",
    "independent": "independent draws (an exact or a fitted approximate posterior): one chain, "
                   "ESS = the number of draws, no r_hat",
    "resampled": "a resample of weighted draws (importance sampling): one chain, ESS = the weight ESS",
    "point": "a point estimate repeated: no spread, so no ESS, r_hat or LOO",
}


@dataclass
class Fit:
    """What a back-end returns: draws and whatever it measured on the way.

    ``posterior`` maps each latent site to an array shaped ``(chain, draw, *site_shape)``;
    ``sample_stats`` maps names to ``(chain, draw)`` arrays (``diverging``, ``energy``, ``lp``);
    ``diagnostics`` holds scalars and traces (``elbo``, ``elbo_trace``, ``log_evidence``,
    ``weight_ess``, ``pareto_k``, ``divergences``, ``steps``). ``guide`` is the fitted
    guide of a variational back-end (``svi``, ``enum``), for the model's own scores; it is
    not saved. ``kind`` says what the draws are (`DRAW_KINDS`): the chains of ``mcmc`` are
    kept; the draws of the other kinds are packed as one chain.
    """

    posterior: dict[str, np.ndarray]
    sample_stats: dict[str, np.ndarray] = field(default_factory=dict)
    diagnostics: dict[str, Any] = field(default_factory=dict)
    guide: Any = None
    kind: str = "mcmc"

    def __post_init__(self) -> None:
        if self.kind not in DRAW_KINDS:
            raise ValueError(f"Fit.kind must be one of {', '.join(DRAW_KINDS)}, got {self.kind!r}")


@dataclass(frozen=True)
class Backend:
    """An inference back-end: its name, its fit function and its options with defaults.

    Parameters
    ----------
    name : the name users pass as ``backend=``.
    fit : ``fit(problem, seed=..., **options) -> Fit``.
    options : every option the back-end accepts, with its default. Options named ``num_*``
        must be positive integers, ``lr`` a positive number; ``choices`` lists the allowed
        values of string options.
    applicable : ``applicable(problem) -> reason or None``: why the back-end cannot run on this
        model with these hyperparameters.
    summary : one line for ``zoo.list_backends()`` and the docs.
    quick : options for a smoke run (a few draws or steps), used by the conformance suite.
    refuses : ``refuses(problem, options) -> reason or None``: why the back-end cannot run on
        this problem with these options (importance's prior proposal on a flat prior); checked
        with the options, before anything runs.
    markov_chains : its draws are Markov chains (nuts, hmc, gibbs): r_hat and the bulk ESS
        are checked after every run and a poor one warns.
    """

    name: str
    fit: Callable[..., Fit]
    options: Mapping[str, Any]
    summary: str = ""
    choices: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    applicable: Callable[[Any], str | None] | None = None
    quick: Mapping[str, Any] = field(default_factory=dict)
    refuses: Callable[[Any, Mapping[str, Any]], str | None] | None = None
    markov_chains: bool = False


def exact_from_scipy(
    marginals: Mapping[str, Any], log_evidence: float | None = None, **extra: Any
) -> ExactPosterior:
    """An `ExactPosterior` whose sites are independent frozen scipy distributions.

    Parameters
    ----------
    marginals : site name to a frozen ``scipy.stats`` distribution (univariate or a
        multivariate one such as ``dirichlet`` or ``wishart``).
    log_evidence : the exact log marginal likelihood, if known.
    """

    def moments(d: Any) -> tuple[np.ndarray, np.ndarray]:
        mean = np.asarray(d.mean(), dtype=float)
        var = d.var() if hasattr(d, "var") else np.diag(d.cov())
        return mean, np.sqrt(np.asarray(var, dtype=float))

    stats = {k: moments(d) for k, d in marginals.items()}

    def sample(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        out = {}
        for k, d in marginals.items():
            draws = np.asarray(d.rvs(size=n, random_state=rng), dtype=float)
            out[k] = draws.reshape((n,) + stats[k][0].shape)
        return out

    def log_prob(values: dict[str, np.ndarray]) -> float:
        total = 0.0
        for k, d in marginals.items():
            logpdf = getattr(d, "logpdf", None) or d.logpmf
            total += float(np.sum(logpdf(values[k])))
        return total

    def marginal(site: str, index: tuple[int, ...]) -> Any:
        d = marginals[site]
        if not stats[site][0].shape:  # a univariate distribution
            return d
        alpha = getattr(d, "alpha", None)
        if alpha is not None and np.ndim(alpha) == 1:  # a Dirichlet: Beta marginals
            return scipy_stats.beta(alpha[index], np.sum(alpha) - alpha[index])
        return None

    return ExactPosterior(
        mean={k: m for k, (m, _) in stats.items()},
        sd={k: s for k, (_, s) in stats.items()},
        sample=sample,
        log_prob=log_prob,
        log_evidence=log_evidence,
        extra=dict(extra),
        marginal=marginal,
    )


def gaussian_marginals(mean: Mapping[str, np.ndarray], sd: Mapping[str, np.ndarray]) -> Callable[[str, tuple[int, ...]], Any]:
    """``ExactPosterior.marginal`` of a Gaussian posterior: Normal(mean, sd) for every scalar."""

    def marginal(site: str, index: tuple[int, ...]) -> Any:
        return scipy_stats.norm(np.asarray(mean[site])[index], np.asarray(sd[site])[index])

    return marginal
