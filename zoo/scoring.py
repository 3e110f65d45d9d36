"""Scoring a back-end's draws against the exact posterior, and the comparison table's rows.

Yardsticks (DESIGN.md): a back-end is correct on a model when every latent scalar has
|z| = |mean - mean_exact| / sd_exact < 0.25 and sd_backend / sd_exact within 0.9 to 1.1;
against a reference made by sampling, a |z| within its Monte Carlo noise passes too
(`z_allowed`). The distance is the Wasserstein-1 distance between the back-end's draws and
exact draws, in units of the exact sd (NaN against a reference known only by summaries).

Mixing is reported for what the draws are (`zoo.core.spec.DRAW_KINDS`): r_hat and ArviZ's ESS
for Markov chains; for independent draws the ESS is the number of draws and there is no r_hat;
for a resample of weighted draws the ESS is the weight ESS (at most the number of draws); a
point estimate has neither. Out-of-sample prediction is PSIS-LOO (Vehtari, Gelman and Gabry
2017) wherever the draws are a posterior over the model's global latents; ``bfmi_min`` is the
lowest per-chain BFMI of Hamiltonian samplers that record their energy.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from zoo.core import arviz_io

Z_GATE = 0.25
SD_RATIO_GATE = (0.9, 1.1)
K_GATE = 0.7  # Pareto k above which an importance-sampling estimate is unreliable
LOO_KEYS = ("elpd_loo", "elpd_loo_se", "p_loo", "loo_k_bad", "loo_k_max")


def mixing(idata: Any, sites: list[str], kind: str, weight_ess: float | None = None) -> pd.DataFrame:
    """Per latent scalar of ``sites``: mean, sd, ESS and r_hat, honest for the ``kind`` of
    draws (module docstring)."""
    scalars = arviz_io.scalar_stats(idata, sites)
    if kind == "mcmc" or not len(scalars):
        return scalars
    post = idata.posterior
    draws = float(post.sizes["chain"] * post.sizes["draw"])
    ess = {"independent": draws, "resampled": min(draws, weight_ess or draws)}.get(kind, np.nan)
    constant = scalars["ess_bulk"].isna() if kind != "point" else True  # no spread, no ESS
    return scalars.assign(ess_bulk=np.where(constant, np.nan, ess), ess_tail=np.where(constant, np.nan, ess),
                          r_hat=np.nan)


def mixing_summary(idata: Any, sites: list[str], kind: str, weight_ess: float | None = None) -> dict[str, float]:
    """r_hat_max, ess_bulk_min and ess_tail_min over the latent scalars of ``sites`` (`mixing`)."""
    scalars = mixing(idata, sites, kind, weight_ess)
    return {"r_hat_max": float(scalars["r_hat"].max()), "ess_bulk_min": float(scalars["ess_bulk"].min()),
            "ess_tail_min": float(scalars["ess_tail"].min())}


R_HAT_MAX = 1.01  # Vehtari et al. (2021)
ESS_PER_CHAIN_MIN = 100


def mixing_warnings(model: str, label: str, diagnostics: Mapping[str, Any], chains: int) -> list[str]:
    """The warning for Markov chains that have not mixed (Vehtari et al. 2021): r_hat above
    1.01 or bulk ESS below 100 per chain, with the numbers; an empty list when they are fine.
    A bulk ESS that is NaN (a chain that never moved) counts as too low."""
    r_hat, ess = diagnostics.get("r_hat_max", np.nan), diagnostics.get("ess_bulk_min", np.nan)
    poor = []
    if r_hat > R_HAT_MAX:
        poor.append(f"r_hat {r_hat:.3f} > {R_HAT_MAX}")
    if not ess >= ESS_PER_CHAIN_MIN * chains:
        poor.append(f"bulk ESS {ess:.0f} < {ESS_PER_CHAIN_MIN} per chain ({ESS_PER_CHAIN_MIN * chains} "
                    f"for {chains} chain{'s' if chains > 1 else ''})")
    if not poor:
        return []
    return [f"model {model!r}, back-end {label!r}: {' and '.join(poor)}: the chains have not mixed "
            "(Vehtari et al. 2021); run more warm-up and draws, or reparameterise the model"]


def diagnostics(idata: Any, kind: str, sites: list[str], global_sites: list[str], measured: dict[str, Any],
                conditional_on: list[str] = ()) -> dict[str, Any]:
    """What a result reports about its draws: r_hat_max, ess_bulk_min and ess_tail_min
    (`mixing`), PSIS-LOO (`LOO_KEYS`, or ``loo_note`` saying why not) and ``bfmi_min`` (or
    ``bfmi_note``).

    Parameters
    ----------
    kind : what the draws are (`zoo.core.spec.DRAW_KINDS`).
    sites : the latent sites mixing is measured on; ``global_sites``: the model's global ones.
    measured : what the back-end measured (``weight_ess``).
    conditional_on : local continuous latents the pointwise log-likelihood is conditional on
        (LOO is computed, with a note: each of them is fitted to its own observation).
    """
    out: dict[str, Any] = {}
    if idata.get("posterior") is not None and sites:
        out.update(mixing_summary(idata, sites, kind, measured.get("weight_ess")))
    reason = loo_reason(idata, kind, global_sites)
    if reason:
        out["loo_note"] = reason
    else:
        out.update(arviz_io.loo(idata))
        if conditional_on:
            out["loo_note"] = (f"the log-likelihood is conditional on the local latents {', '.join(conditional_on)}, "
                               "each fitted to its own observation: expect large Pareto k")
    stats = idata.get("sample_stats")
    if kind != "mcmc":
        out["bfmi_note"] = f"BFMI is for Hamiltonian Monte Carlo; these are {kind} draws"
    elif stats is None or "energy" not in stats:
        out["bfmi_note"] = "the sampler recorded no energy"
    else:
        out["bfmi_min"] = float(np.min(arviz_io.bfmi(idata)))
    return out


def loo_reason(idata: Any, kind: str, global_sites: list[str]) -> str | None:
    """Why PSIS-LOO does not apply to these draws, or None."""
    if kind == "point":
        return "a point estimate: no posterior draws to leave an observation out of"
    if idata.get("log_likelihood") is None or not idata.log_likelihood.data_vars:
        return idata.attrs.get("no_log_likelihood", "no log-likelihood")
    if not global_sites:
        return ("the model has no global latent sites (its networks' weights are point estimates): there is "
                "no posterior predictive for a left-out observation")
    if idata.posterior.sizes["chain"] * idata.posterior.sizes["draw"] < 2:
        return "one draw"
    return None


def scalar_scores(scalars: pd.DataFrame, posterior: dict[str, np.ndarray], exact: Any,
                  exact_draws: dict[str, np.ndarray]) -> pd.DataFrame:
    """Add exact mean and sd, z, sd ratio and W1 distance to per-scalar statistics.

    Parameters
    ----------
    scalars : output of `zoo.core.arviz_io.scalar_stats` (one row per latent scalar).
    posterior : the back-end's draws, site to (chain, draw, ...).
    exact : the `ExactPosterior`.
    exact_draws : a large sample from the exact posterior, site to (n, ...).
    """
    rows = []
    for row in scalars.itertuples(index=False):
        idx = tuple(row.index)
        m = float(np.asarray(exact.mean[row.var])[idx])
        s = float(np.asarray(exact.sd[row.var])[idx])
        draws = np.asarray(posterior[row.var])[(slice(None), slice(None)) + idx].ravel()
        entry = {"exact_mean": m, "exact_sd": s, "z": (row.mean - m) / s, "sd_ratio": row.sd / s, "w1": math.nan}
        if exact_draws is not None:  # a reference known only by its summaries has no draws
            entry["w1"] = stats.wasserstein_distance(draws, np.asarray(exact_draws[row.var])[(slice(None),) + idx]) / s
        if exact.mcse_mean is not None:
            entry["z_allowed"] = z_allowed(float(np.asarray(exact.mcse_mean[row.var])[idx]), row.sd, row.ess_bulk, s)
        rows.append(entry)
    return pd.concat([scalars.reset_index(drop=True), pd.DataFrame(rows)], axis=1)


def z_allowed(mcse_ref: float, sd: float, ess: float, sd_ref: float) -> float:
    """The largest |z| that still passes against a reference made by sampling.

    Inference Gym's rule: a difference within 5 sqrt(SE^2 + SE_ref^2), with SE = sd /
    sqrt(ESS) the back-end's Monte Carlo standard error and SE_ref the reference's, is Monte
    Carlo noise, not an error of the back-end; beyond that the |z| < `Z_GATE` yardstick
    stands. The back-end's SE counts only where its ESS is at least 400 (the yardstick for
    trusting a sampler's summaries), so few effective draws never widen the gate.
    """
    se = sd / math.sqrt(ess) if ess >= 400 else 0.0
    return max(Z_GATE, 5 * math.sqrt(se**2 + mcse_ref**2) / sd_ref)


def table_row(label: str, result: Any, scalars: pd.DataFrame, exact_log_evidence: float | None) -> dict:
    """One row of the comparison table for a finished back-end run."""
    d = result.diagnostics
    ess_bulk = float(scalars["ess_bulk"].min()) if len(scalars) else math.nan
    ess_tail = float(scalars["ess_tail"].min()) if len(scalars) else math.nan
    post = result.idata.get("posterior")
    row = {
        "backend": label,
        "kind": result.kind,
        "seconds": result.seconds,
        "draws": int(post.sizes["chain"] * post.sizes["draw"]) if post is not None else 0,
        "ess_bulk_min": ess_bulk,
        "ess_tail_min": ess_tail,
        "ess_per_second": ess_bulk / result.seconds if result.seconds > 0 else math.nan,
        "r_hat_max": float(scalars["r_hat"].max()) if len(scalars) else math.nan,
        "divergences": d.get("divergences", 0),
        "elbo": d.get("elbo", math.nan),
        "steps": d.get("steps", math.nan),
        "log_evidence": d.get("log_evidence", math.nan),
        "weight_ess": d.get("weight_ess", math.nan),
        "pareto_k": d.get("pareto_k", math.nan),
        **{k: d.get(k, math.nan) for k in ("elpd_loo", "elpd_loo_se", "loo_k_bad", "bfmi_min")},
    }
    if exact_log_evidence is not None:
        row["elbo_gap"] = exact_log_evidence - row["elbo"]
        row["log_evidence_error"] = row["log_evidence"] - exact_log_evidence
    if "z" in scalars:
        abs_z = float(scalars["z"].abs().max())
        lo, hi = float(scalars["sd_ratio"].min()), float(scalars["sd_ratio"].max())
        allowed = scalars["z_allowed"] if "z_allowed" in scalars else Z_GATE
        row.update({"max_abs_z": abs_z, "sd_ratio_min": lo, "sd_ratio_max": hi,
                    "w1_max": float(scalars["w1"].max()),
                    "correct": bool((scalars["z"].abs() < allowed).all()
                                    and SD_RATIO_GATE[0] <= lo and hi <= SD_RATIO_GATE[1])})
    notes = [d[k] for k in ("note", "chains") if d.get(k)]
    if d.get("divergences"):
        notes.append(f"{d['divergences']} divergent transitions")
    if d.get("pareto_k", 0) > K_GATE:
        notes.append("Pareto k > 0.7: importance weights unreliable" if result.kind == "resampled" else
                     "guide Pareto k > 0.7: the guide is far from the posterior (Yao et al. 2018)")
    if d.get("loo_k_bad", 0) > 0:
        notes.append(f"{d['loo_k_bad']:.1%} of observations with LOO Pareto k > 0.7: elpd_loo unreliable")
    if d.get("bfmi_min", 1.0) < 0.3:
        notes.append("BFMI < 0.3: the sampler explores the energy distribution poorly")
    row["note"] = "; ".join(notes)
    return row


COLUMNS = ["backend", "kind", "seconds", "draws", "ess_bulk_min", "ess_tail_min", "ess_per_second",
           "r_hat_max", "divergences", "bfmi_min", "steps", "elbo", "elbo_gap", "log_evidence", "log_evidence_error",
           "weight_ess", "pareto_k", "elpd_loo", "elpd_loo_se", "loo_k_bad", "max_abs_z", "sd_ratio_min",
           "sd_ratio_max", "w1_max", "correct", "recommended", "note"]


def recommend(table: pd.DataFrame) -> pd.DataFrame:
    """Mark in ``recommended`` the approximate back-end that passed the accuracy gate
    (``correct``) in the least time; none when none passed or nothing was scored. (``exact``
    itself, the yardstick, is not a candidate: where it exists it is the answer.) Markov chains
    must also pass the MCMC yardsticks a user can check without a reference: no divergent
    transition and r_hat at most `R_HAT_MAX`; a run whose own diagnostics warn is not the one to
    recommend, even where its summaries happened to match."""
    if "correct" not in table:
        return table
    passed = table["correct"].eq(True) & table["backend"].ne("exact")
    if "kind" in table:
        none = pd.Series(0.0, index=table.index)
        warns = table.get("divergences", none).fillna(0).gt(0) | table.get("r_hat_max", none).gt(R_HAT_MAX)
        passed &= ~(table["kind"].eq("mcmc") & warns)
    table = table.assign(recommended=False)
    if passed.any():
        table.loc[table["seconds"].where(passed).idxmin(), "recommended"] = True
    return table


def make_table(rows: list[dict]) -> pd.DataFrame:
    """The comparison table with the DESIGN.md columns in a fixed order, `recommend` applied."""
    table = recommend(pd.DataFrame(rows))
    cols = [c for c in COLUMNS if c in table] + [c for c in table if c not in COLUMNS]
    return table[cols]


def score(label: str, result: Any, sites: list[str], exact: Any, exact_draws: dict[str, np.ndarray] | None,
          notes: list[str]) -> tuple[dict, pd.DataFrame]:
    """A finished run's table row and per-scalar statistics, scored against ``exact`` (or None).

    Parameters
    ----------
    sites : the latent sites the table reports.
    exact, exact_draws : the reference posterior and a large sample of it, or None.
    notes : notes the model adds to every row (how draws were relabelled).
    """
    sites = sites if result.idata.get("posterior") is not None else []
    scalars = mixing(result.idata, sites, result.kind, result.diagnostics.get("weight_ess"))
    if exact is not None and sites:
        scalars = scalar_scores(scalars, {k: result.idata.posterior[k].values for k in sites}, exact, exact_draws)
    row = table_row(label, result, scalars, exact.log_evidence if exact else None)
    notes = list(notes)
    if exact is not None and exact.kind != "closed_form":
        notes.append(f"scored against a stored {exact.kind} reference, not a closed form")
    row["note"] = "; ".join(n for n in [row["note"], *notes] if n)
    return {**row, **result.scores}, scalars.assign(backend=label)
