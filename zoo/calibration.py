"""Simulation-based calibration (Talts et al. 2018): does a back-end's posterior have the right
width and place, averaged over the prior?

For each simulation s: draw the parameters theta_s from the prior and data from the model
(``zoo.simulate(name, seed=seed + s)``), run the back-end on the data, thin its draws to L
evenly spaced ones, and count how many fall below theta_s. If the posterior is right, that
rank is uniform on 0..L for every latent scalar, whatever the model. A posterior that is too
narrow piles ranks at both ends (a U), one that is too wide piles them in the middle, a
biased one tilts them.

The check per scalar is a chi-square test over B bins of ranks, each with at least 5 expected
counts, and the verdict passes when every p-value is above ``alpha / number of scalars``
(Bonferroni). The plots are rank histograms and ECDF-difference plots with simultaneous bands
(Säilynoja, Bürkner and Vehtari 2022).

>>> import zoo
>>> res = zoo.sbc("normal_gamma", "exact", num_simulations=100, num_draws=99)
>>> res.passed, res.tests
>>> res.plot("out/sbc")
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from zoo import api, registry
from zoo.core import arviz_io
from zoo.core.errors import ZooError
from zoo.core.files import atomic_write, write_text
from zoo.core.problem import check_int, check_options, check_seed, prepare
from zoo.tasks import Task, execute


@dataclass
class SBCResult:
    """Ranks of the true parameters among posterior draws, and their uniformity tests.

    Attributes
    ----------
    ranks : one row per simulation and latent scalar: ``simulation``, ``seed``, ``scalar``,
        ``rank`` (0..num_draws).
    tests : one row per scalar: ``scalar``, ``chi2``, ``p_value``, ``bins``, ``min_expected``,
        ``passed``.
    runs : one row per simulation: ``simulation``, ``seed``, ``draws`` (before thinning),
        ``ess_bulk_min``, ``seconds``.
    passed : every scalar's p-value is above ``threshold = alpha / len(tests)``.
    note : what to watch (simulations whose ESS was below num_draws).
    """

    model: str
    backend: str
    num_simulations: int
    num_draws: int
    ranks: pd.DataFrame
    tests: pd.DataFrame
    runs: pd.DataFrame
    passed: bool
    alpha: float
    threshold: float
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    note: str = ""

    def rank_matrix(self) -> pd.DataFrame:
        """Ranks as a (simulation x scalar) table."""
        return self.ranks.pivot(index="simulation", columns="scalar", values="rank")[list(self.tests["scalar"])]

    def plot(self, out: str | Path) -> list[Path]:
        """Write ``ranks.png`` (rank histograms with a 99% band for each bin's count under
        uniformity) and ``ecdf.png`` (ECDF differences with 95% simultaneous bands) into ``out``."""
        out = Path(out)
        title = f"SBC {self.model} / {self.backend}: {self.num_simulations} simulations, " \
                f"L = {self.num_draws} ({'passed' if self.passed else 'FAILED'})"
        matrix = self.rank_matrix()
        files = [_plot_histograms(matrix, self.tests, self.num_draws, out / "ranks.png", title)]
        files.append(arviz_io.plot_rank_ecdf({c: matrix[c].to_numpy() for c in matrix}, self.num_draws,
                                             out / "ecdf.png", title, seed=self.seed))
        return files

    def save(self, out: str | Path, plots: bool = True) -> list[Path]:
        """Write ranks.csv, tests.csv, runs.csv, sbc.json (and the plots) into ``out``,
        each atomically; `SBCResult.load` reads them back (no pickle)."""
        out = Path(out)
        meta = {k: getattr(self, k) for k in ("model", "backend", "num_simulations", "num_draws", "passed",
                                               "alpha", "threshold", "seed", "options", "note")}
        files = [write_text(out / "ranks.csv", self.ranks.to_csv(index=False)),
                 write_text(out / "tests.csv", self.tests.to_csv(index=False)),
                 write_text(out / "runs.csv", self.runs.to_csv(index=False)),
                 write_text(out / "sbc.json", json.dumps(meta, indent=1, default=str))]
        return files + (self.plot(out) if plots else [])

    @classmethod
    def load(cls, out: str | Path) -> SBCResult:
        """Read a result written by `save`."""
        out = Path(out)
        if not (out / "sbc.json").exists():
            raise ZooError(f"no SBC result in {str(out)!r} (sbc.json is missing)")
        meta = json.loads((out / "sbc.json").read_text())
        tests = pd.read_csv(out / "tests.csv", dtype={"reading": str}, keep_default_na=False)
        return cls(ranks=pd.read_csv(out / "ranks.csv"), tests=tests,
                   runs=pd.read_csv(out / "runs.csv"), **meta)


def sbc(name: str, backend: str = "exact", num_simulations: int = 100, num_draws: int = 99, seed: int = 0, *,
        hyper: Mapping[str, Any] | None = None, alpha: float = 0.01, executor: str = "local",
        address: str | None = None, out: str | Path | None = None, progress: bool | None = None,
        **options: Any) -> SBCResult:
    """Simulation-based calibration of one back-end on one model.

    Parameters
    ----------
    name : model name.
    backend : back-end label (``"svi:full_rank"`` picks a guide).
    num_simulations : number of (prior draw, data, posterior) triples; at least 10.
    num_draws : L, the number of evenly spaced posterior draws each truth is ranked among
        (ranks take L + 1 values). The back-end must return at least L draws, and its effective
        sample size should be at least L (``runs.ess_bulk_min``; the note counts the misses).
    seed : simulation s uses seed ``seed + s`` for its data and its inference.
    hyper : hyperparameters of the prior (None: the model's defaults).
    alpha : family-wise significance level of the verdict.
    executor, address : ``"local"`` or ``"ray"`` (see `zoo.tasks.execute`).
    out : folder for one JSON file per simulation (``out/<model>/<backend>/<seed>.json``): an
        interrupted run resumes where it stopped.
    **options : back-end options (``num_samples``, ``num_chains``, ``num_steps``...).

    Returns
    -------
    SBCResult
    """
    seed = check_seed(seed)
    check_int(num_simulations, "num_simulations", 10, f"model {name!r}: ")
    check_int(num_draws, "num_draws", 1, f"model {name!r}: ")
    if not (isinstance(alpha, float) and 0 < alpha < 1):
        raise ZooError(f"model {name!r}: alpha must be a float in (0, 1), got {alpha!r}")
    spec = registry.get_model(name)
    label, extra = registry.parse_label(backend)
    b = registry.get_backend(spec, label)
    data, _ = api.simulate(name, seed=seed, hyper=hyper)  # validates hyper and options up front
    problem = prepare(spec, data, hyper)
    opts = check_options(problem, b, {**extra, **options})
    reason = registry.not_applicable(problem, b)
    if reason:
        raise ZooError(f"model {name!r}: back-end {backend!r} does not apply: {reason}")
    if "num_samples" in opts and opts["num_samples"] * opts.get("num_chains", 1) < num_draws:
        raise ZooError(f"model {name!r}: back-end {backend!r} returns {opts['num_samples']} x "
                       f"{opts.get('num_chains', 1)} draws, fewer than num_draws={num_draws}")
    options = {**extra, **options}
    tasks = [Task("sbc", name, backend, seed + s, options, dict(hyper) if hyper else None, int(num_draws))
             for s in range(num_simulations)]
    payloads = execute(tasks, simulation_ranks, out=out, executor=executor, address=address, progress=progress,
                       desc=f"sbc {name} {backend}")
    rows, runs = [], []
    for s, (task, p) in enumerate(zip(tasks, payloads)):
        rows += [{"simulation": s, "seed": task.seed, "scalar": k, "rank": int(r)} for k, r in p["ranks"].items()]
        runs.append({"simulation": s, "seed": task.seed, **{k: p[k] for k in ("draws", "ess_bulk_min", "seconds")}})
    ranks = pd.DataFrame(rows)
    tests = uniformity_tests(ranks, num_draws)
    threshold = alpha / len(tests)
    tests["passed"] = tests["p_value"] > threshold
    runs = pd.DataFrame(runs)
    low = int((runs["ess_bulk_min"] < num_draws).sum())
    note = (f"{low} of {num_simulations} simulations had a bulk ESS below num_draws={num_draws}: their "
            "thinned draws are correlated, which narrows the rank histogram" if low else "")
    return SBCResult(name, backend, num_simulations, int(num_draws), ranks, tests, runs,
                     bool(tests["passed"].all()), alpha, threshold, seed, options, note)


def rank_bins(num_draws: int, num_simulations: int) -> np.ndarray:
    """Bin of each rank 0..L: B = min(L + 1, n // 5) nearly equal bins of consecutive ranks,
    fewer if needed so that every bin expects at least 5 of the n ranks. Returns the bin index
    of each rank value (length L + 1)."""
    values = num_draws + 1
    num_bins = min(values, num_simulations // 5)
    while num_bins >= 2:
        of_rank = np.arange(values) * num_bins // values
        if num_simulations * np.bincount(of_rank).min() / values >= 5:
            return of_rank
        num_bins -= 1
    raise ZooError(f"{num_simulations} simulations are too few for a chi-square test with 5 expected ranks "
                   f"in each of 2 bins of the {values} rank values; use more simulations")


def uniformity_tests(ranks: pd.DataFrame, num_draws: int) -> pd.DataFrame:
    """Chi-square test of uniformity on 0..num_draws for each scalar's ranks.

    Parameters
    ----------
    ranks : columns ``scalar`` and ``rank`` (one row per simulation and scalar).
    num_draws : L; ranks lie in 0..L.

    Returns
    -------
    DataFrame with one row per scalar: ``scalar``, ``chi2``, ``p_value``, ``bins``,
    ``min_expected``, and the shape of the ranks: ``mean_rank`` (mean of rank / L; 0.5 if
    calibrated), ``rank_sd_ratio`` (sd of the ranks over the uniform's; above 1 is a U; not the
    comparison table's ``sd_ratio``, which is posterior sd over exact sd) and
    ``reading`` (see `rank_reading`).
    """
    rows = []
    for scalar, group in ranks.groupby("scalar", sort=False):
        r = group["rank"].to_numpy(dtype=int)
        if r.min() < 0 or r.max() > num_draws:
            raise ZooError(f"scalar {scalar!r}: ranks must lie in 0..{num_draws}")
        of_rank = rank_bins(num_draws, len(r))
        num_bins = of_rank.max() + 1
        observed = np.bincount(of_rank[r], minlength=num_bins)
        expected = len(r) * np.bincount(of_rank, minlength=num_bins) / (num_draws + 1)
        chi2, p = stats.chisquare(observed, expected)
        mean_rank, rank_sd_ratio = r.mean() / num_draws, r.std() / _uniform_rank_sd(num_draws)
        rows.append({"scalar": scalar, "chi2": float(chi2), "p_value": float(p), "bins": int(num_bins),
                     "min_expected": float(expected.min()), "mean_rank": float(mean_rank),
                     "rank_sd_ratio": float(rank_sd_ratio),
                     "reading": rank_reading(mean_rank, rank_sd_ratio, len(r), num_draws)})
    return pd.DataFrame(rows)


def rank_reading(mean_rank: float, rank_sd_ratio: float, num_simulations: int, num_draws: int) -> str:
    """What the ranks' shape says about the posterior, in words ("" when nothing stands out).

    Ranks count the draws below the truth. A mean rank / L more than 3 standard errors above
    0.5 means the truth sits above the draws (the posterior is shifted low), and below 0.5
    shifted high. An sd of the ranks more than 3 standard errors above the uniform's is a U:
    the posterior is too narrow; below it, ranks bunch in the middle: too wide. The standard
    errors are those of a mean and an sd of ``num_simulations`` uniform ranks (the uniform's
    excess kurtosis is -1.2). Ranks tilted to one end also have a smaller sd, so the width is
    read only when the mean is not off. This describes a failure; the verdict is the chi-square
    test's.
    """
    n = num_simulations
    sd_mean = _uniform_rank_sd(num_draws) / np.sqrt(n) / num_draws
    sd_sd_ratio = 0.5 * np.sqrt(0.8 / n)
    if abs(mean_rank - 0.5) > 3 * sd_mean:
        return "posterior shifted " + ("low (truth above the draws)" if mean_rank > 0.5 else "high (truth below the draws)")
    if abs(rank_sd_ratio - 1) > 3 * sd_sd_ratio:
        return "posterior too narrow (U-shaped ranks)" if rank_sd_ratio > 1 else "posterior too wide (ranks bunched in the middle)"
    return ""


def _uniform_rank_sd(num_draws: int) -> float:
    """The sd of a rank uniform on 0..num_draws."""
    return float(np.sqrt(((num_draws + 1) ** 2 - 1) / 12))


def simulation_ranks(task: Task) -> dict[str, Any]:
    """One SBC simulation: simulate with the task's seed, run the back-end, rank each truth.

    Ties between the truth and a draw (point estimates, discrete values) are broken at random
    with the task's seed.
    """
    spec = registry.get_model(task.model)
    data, truth = api.simulate(task.model, seed=task.seed, hyper=task.hyper)
    label, extra = registry.parse_label(task.backend)
    result = api.run_draws(task.model, label, data=data, seed=task.seed, hyper=task.hyper, progress=False,
                           **{**extra, **task.options})
    truth = _relabelled(spec, truth)
    sites = list(spec.latent_sites) or [k for k in result.posterior if k in truth]
    rng = np.random.default_rng([task.seed, 5])  # its own stream for the tie-breaks
    num = task.num_draws
    ranks: dict[str, int] = {}
    total = 0
    for site in sites:
        draws = result.draws(site)
        total = draws.shape[0]
        if total < num:
            raise ZooError(f"model {task.model!r}: back-end {task.backend!r} returned {total} draws, "
                           f"fewer than num_draws={num}")
        thinned = draws[np.linspace(0, total - 1, num).round().astype(int)].reshape(num, -1)
        value = np.broadcast_to(np.asarray(truth[site], dtype=float), draws.shape[1:]).reshape(-1)
        below = (thinned < value).sum(axis=0)
        ties = (thinned == value).sum(axis=0)
        rank = below + rng.integers(0, ties + 1)
        shape = draws.shape[1:]
        for j in range(value.size):
            idx = np.unravel_index(j, shape) if shape else ()
            ranks[site + (f"[{','.join(map(str, idx))}]" if shape else "")] = int(rank[j])
    return {"ranks": ranks, "draws": int(total), "ess_bulk_min": float(result.diagnostics["ess_bulk_min"]),
            "seconds": float(result.seconds)}


def _relabelled(spec: Any, truth: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The truth put through the model's relabelling (label switching), as the draws were."""
    relabel = spec.scoring.relabel
    if relabel is None:
        return truth
    one = relabel({k: np.asarray(v)[None, None] for k, v in truth.items()})
    return {k: np.asarray(v)[0, 0] for k, v in one.items()}


def _plot_histograms(matrix: pd.DataFrame, tests: pd.DataFrame, num_draws: int, path: Path, title: str) -> Path:
    import matplotlib.pyplot as plt

    n = len(matrix)
    of_rank = rank_bins(num_draws, n)
    num_bins = of_rank.max() + 1
    width = np.bincount(of_rank, minlength=num_bins)
    starts = np.concatenate([[0], np.cumsum(width)[:-1]])
    prob = width / (num_draws + 1)
    lo, hi = stats.binom.interval(0.99, n, prob)
    cols = list(matrix.columns)
    fig, axes = plt.subplots(1, len(cols), squeeze=False, figsize=(max(5.0, 3.6 * len(cols)), 3.4))
    p_values = dict(zip(tests["scalar"], tests["p_value"]))
    for col, ax in zip(cols, axes[0]):
        counts = np.bincount(of_rank[matrix[col].to_numpy(dtype=int)], minlength=num_bins)
        ax.bar(starts, counts, width=width, align="edge", color="C0", alpha=0.7, edgecolor="white")
        ax.fill_between(np.append(starts, num_draws + 1), np.append(lo, lo[-1]), np.append(hi, hi[-1]),
                        step="post", color="grey", alpha=0.25, label="99% per bin if uniform")
        ax.step(np.append(starts, num_draws + 1), np.append(n * prob, n * prob[-1]), where="post",
                color="k", lw=1, label="expected if uniform")
        ax.set_title(f"{col}  (p = {p_values[col]:.2g})")
        ax.set_xlabel(f"rank among {num_draws} draws")
    axes[0][0].set_ylabel("simulations")
    fig.suptitle(title, fontsize=10)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=2, bbox_to_anchor=(0.5, -0.02))
    fig.tight_layout(rect=(0, 0.08, 1, 1))  # the legend below the panels hides no bar
    out = atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, bbox_inches="tight", format="png"))
    plt.close(fig)
    return out
