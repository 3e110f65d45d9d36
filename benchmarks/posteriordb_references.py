"""Regenerate the data and reference-summary files of the posteriordb suite (``posteriordb/``).

Command line::

    python benchmarks/posteriordb_references.py POSTERIORDB [--out DIR] [--only NAME ...]

``POSTERIORDB`` is a posteriordb checkout (a working tree of
https://github.com/stan-dev/posteriordb) or a bare git directory of it; files are read
from ``HEAD`` of a git directory and straight from disk otherwise. The snapshot commit
is recorded as provenance (``git rev-parse HEAD``; ``--commit`` overrides it, for a
checkout without its ``.git``). ``--out`` is the suite folder (default ``posteriordb/``
next to this script's ``benchmarks/``); ``--only`` limits the run to some zoo names.

For every posterior of ``SUITE`` it writes

* ``<out>/data/<NAME>.json``: the posteriordb data set converted to the keyword arguments
  of the Pyro model (Stan's names where they stay the same, unused entries dropped, real
  values as JSON floats and integer arrays as JSON integers), with its provenance.
* ``<out>/reference/<NAME>.json``: summaries of the posteriordb reference draws (10 chains
  of 1000 draws from long Stan runs) for every scalar of every latent and deterministic
  site of the Pyro model. A latent site that is not among the stored Stan quantities is
  computed from them draw by draw (``from_draws`` says how), e.g. the non-centred
  ``theta_trans = (theta - mu) / tau`` of eight schools. Only summaries are stored, never
  the draws: mean, sd (ddof=1), ArviZ's ``mcse_mean``, ``mcse_sd``, ``ess_bulk``,
  ``ess_tail`` and rank-normalised split ``r_hat`` (as ``az.summary(kind="diagnostics")``
  reports them) over all chains, and the 5, 25, 50, 75 and 95 % quantiles.

posteriordb is BSD-3-Clause licensed (Copyright (c) 2011-2024, Stan Developers and their
Assignees); the data sets and reference draws are redistributed under its terms, with the
source file and commit recorded in each file.
"""
from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


# ---------------------------------------------------------------------------------------------
# reading posteriordb


class PosteriorDB:
    """Read files of a posteriordb checkout or bare git directory."""

    def __init__(self, path: str | Path, commit: str | None = None):
        self.path = Path(path)
        self.is_git = (self.path / "HEAD").is_file() and (self.path / "objects").is_dir()
        if commit is None:
            commit = self._git_commit()
        self.commit = commit

    def _git_commit(self) -> str:
        where = ["--git-dir", str(self.path)] if self.is_git else ["-C", str(self.path)]
        try:
            out = subprocess.run(["git", *where, "rev-parse", "HEAD"],
                                 check=True, capture_output=True, text=True)
        except (OSError, subprocess.CalledProcessError) as e:
            raise SystemExit(f"cannot read the posteriordb commit of {self.path} ({e}); pass --commit")
        return out.stdout.strip()

    def read(self, rel: str) -> bytes:
        if self.is_git:
            out = subprocess.run(["git", "--git-dir", str(self.path), "show", f"HEAD:{rel}"],
                                 check=True, capture_output=True)
            return out.stdout
        return (self.path / rel).read_bytes()

    def json(self, rel: str):
        return json.loads(self.read(rel))

    def zipped_json(self, rel: str):
        with zipfile.ZipFile(io.BytesIO(self.read(rel))) as z:
            (name,) = z.namelist()
            return json.loads(z.read(name))

    def posterior(self, name: str) -> dict:
        return self.json(f"posterior_database/posteriors/{name}.json")

    def data(self, data_name: str) -> dict:
        return self.zipped_json(f"posterior_database/data/data/{data_name}.json.zip")

    def draws(self, reference_name: str) -> dict[str, np.ndarray]:
        """The reference draws as ``{stan name: (chains, draws) array}``."""
        chains = self.zipped_json(
            f"posterior_database/reference_posteriors/draws/draws/{reference_name}.json.zip")
        names = list(chains[0])
        return {n: np.array([c[n] for c in chains], dtype=float) for n in names}

    def draws_info(self, reference_name: str) -> dict:
        return self.json(f"posterior_database/reference_posteriors/draws/info/{reference_name}.info.json")


# ---------------------------------------------------------------------------------------------
# the suite: data conversion and the Pyro sites of every posterior


@dataclass
class Scalar:
    """One scalar of a Pyro site and its reference draws, shape (chains, draws)."""

    site: str
    index: tuple[int, ...]
    stan: str
    draws: np.ndarray
    from_draws: str | None = None


@dataclass
class Entry:
    name: str
    posterior: str
    convert: Callable[[dict], dict]  # posteriordb data -> model keyword arguments
    sites: Callable[[dict, dict], list[Scalar]]  # (stan draws, converted data) -> scalars
    conversion: str  # what convert does, in words


def floats(v):
    return np.asarray(v, dtype=float).tolist()


def ints(v):
    a = np.asarray(v)
    if not np.all(a == np.round(a)):
        raise ValueError("expected integers")
    return a.astype(np.int64).tolist()


def keep(*names, integer=()):
    def convert(d):
        return {n: (ints(d[n]) if n in integer else floats(d[n])) for n in names}
    return convert


def scalar(draws, stan, site=None):
    return [Scalar(site or stan, (), stan, draws[stan])]


def vector(draws, stan, site=None):
    """The Stan vector ``stan[1..n]`` as the Pyro site ``site[0..n-1]``."""
    out, i = [], 1
    while f"{stan}[{i}]" in draws:
        out.append(Scalar(site or stan, (i - 1,), f"{stan}[{i}]", draws[f"{stan}[{i}]"]))
        i += 1
    if not out:
        raise KeyError(stan)
    return out


def regression_sites(draws, data):
    return vector(draws, "beta") + scalar(draws, "sigma")


def eight_schools_noncentered_sites(draws, data):
    mu, tau = draws["mu"], draws["tau"]
    theta = vector(draws, "theta")
    trans = [Scalar("theta_trans", s.index, f"theta_trans[{s.index[0] + 1}]", (s.draws - mu) / tau,
                    f"({s.stan} - mu) / tau") for s in theta]
    return trans + scalar(draws, "mu") + scalar(draws, "tau") + theta


def eight_schools_centered_sites(draws, data):
    return vector(draws, "theta") + scalar(draws, "mu") + scalar(draws, "tau")


def garch_sites(draws, data):
    a1, b1 = draws["alpha1"], draws["beta1"]
    w = [Scalar("w", (0,), "alpha1", a1, "alpha1"),
         Scalar("w", (1,), "beta1", b1, "beta1"),
         Scalar("w", (2,), "1 - alpha1 - beta1", 1.0 - a1 - b1, "1 - alpha1 - beta1")]
    return scalar(draws, "mu") + scalar(draws, "alpha0") + w + scalar(draws, "alpha1") + scalar(draws, "beta1")


def hmm_sites(draws, data):
    mu1, mu2 = draws["mu[1]"], draws["mu[2]"]
    out = vector(draws, "theta1") + vector(draws, "theta2")
    out.append(Scalar("mu_low", (), "mu[1]", mu1, "mu[1]"))
    out.append(Scalar("mu_gap", (), "mu[2] - mu[1]", mu2 - mu1, "mu[2] - mu[1]"))
    for j, row in enumerate(("theta1", "theta2")):
        for k in range(2):
            out.append(Scalar("theta", (j, k), f"theta[{j + 1},{k + 1}]", draws[f"{row}[{k + 1}]"],
                              f"{row}[{k + 1}]"))
    return out + vector(draws, "mu")


def exp_quad_cholesky(x, alpha, rho, jitter):
    """Cholesky factors of alpha^2 exp(-(x_i - x_j)^2 / (2 rho^2)) + jitter I, batched over draws."""
    x = np.asarray(x, dtype=float)
    d2 = (x[:, None] - x[None, :]) ** 2
    K = alpha[..., None, None] ** 2 * np.exp(-0.5 * d2 / rho[..., None, None] ** 2)
    K = K + jitter * np.eye(len(x))
    return np.linalg.cholesky(K)


def gp_pois_regr_sites(draws, data):
    f_scalars = vector(draws, "f")
    f = np.stack([s.draws for s in f_scalars], axis=-1)  # (chains, draws, N)
    L = exp_quad_cholesky(data["x"], draws["alpha"], draws["rho"], 1e-10)
    f_tilde = np.linalg.solve(L, f[..., None])[..., 0]
    tilde = [Scalar("f_tilde", (i,), f"f_tilde[{i + 1}]", f_tilde[..., i],
                    "L^-1 f, L = cholesky(gp_exp_quad_cov(x, alpha, rho) + 1e-10 I)")
             for i in range(f.shape[-1])]
    return scalar(draws, "rho") + scalar(draws, "alpha") + tilde + f_scalars


SUITE: list[Entry] = [
    Entry("sblrc_blr", "sblrc-blr", keep("X", "y"), regression_sites,
          "X (N, D) and y kept; N and D dropped (implied by X)"),
    Entry("kidscore_interaction", "kidiq-kidscore_interaction", keep("mom_hs", "mom_iq", "kid_score"),
          regression_sites,
          "mom_hs, mom_iq and kid_score kept; N, mom_hs_new and mom_iq_new (unused) dropped"),
    Entry("logearn_interaction_z", "earnings-logearn_interaction_z", keep("height", "male", "earn"),
          regression_sites, "height, male and earn kept; N dropped"),
    Entry("kilpisjarvi", "kilpisjarvi_mod-kilpisjarvi",
          keep("x", "y", "pmualpha", "psalpha", "pmubeta", "psbeta"),
          lambda d, _: scalar(d, "alpha") + scalar(d, "beta") + scalar(d, "sigma"),
          "x, y and the prior constants kept; N and xpred (unused by the model) dropped"),
    Entry("eight_schools_noncentered", "eight_schools-eight_schools_noncentered", keep("sigma", "y"),
          eight_schools_noncentered_sites, "sigma and y kept; J dropped"),
    Entry("eight_schools_centered", "eight_schools-eight_schools_centered", keep("sigma", "y"),
          eight_schools_centered_sites, "sigma and y kept; J dropped"),
    Entry("arK", "arK-arK", keep("K", "y", integer=("K",)),
          lambda d, _: scalar(d, "alpha") + vector(d, "beta") + scalar(d, "sigma"),
          "K and y kept; T dropped"),
    Entry("arma11", "arma-arma11", keep("y"),
          lambda d, _: scalar(d, "mu") + scalar(d, "phi") + scalar(d, "theta") + scalar(d, "sigma"),
          "y kept; T dropped"),
    Entry("garch11", "garch-garch11", keep("sigma1", "y"), garch_sites, "sigma1 and y kept; T dropped"),
    Entry("low_dim_gauss_mix", "low_dim_gauss_mix-low_dim_gauss_mix", keep("y"),
          lambda d, _: vector(d, "mu") + vector(d, "sigma") + scalar(d, "theta"), "y kept; N dropped"),
    Entry("hmm_example", "hmm_example-hmm_example", keep("y"), hmm_sites,
          "y kept; N and K (= 2, fixed by the model's priors) dropped"),
    Entry("gp_regr", "gp_pois_regr-gp_regr", keep("x", "y"),
          lambda d, _: scalar(d, "rho") + scalar(d, "alpha") + scalar(d, "sigma"),
          "x and y kept; N and k (used by gp_pois_regr) dropped"),
    Entry("gp_pois_regr", "gp_pois_regr-gp_pois_regr", keep("x", "k", integer=("k",)), gp_pois_regr_sites,
          "x and k kept; N and y (used by gp_regr) dropped"),
]


# ---------------------------------------------------------------------------------------------
# summaries


def summarise(x: np.ndarray) -> dict:
    """Summary of one scalar's draws, shape (chains, draws)."""
    import arviz as az

    x = np.asarray(x, dtype=float)
    flat = x.reshape(-1)
    q = np.quantile(flat, QUANTILES)
    return {
        "mean": float(flat.mean()),
        "sd": float(flat.std(ddof=1)),
        "mcse_mean": float(az.mcse(x, method="mean")),
        "mcse_sd": float(az.mcse(x, method="sd")),
        "ess_bulk": float(az.ess(x, method="bulk")),
        "ess_tail": float(az.ess(x, method="tail")),
        "r_hat": float(az.rhat(x)),
        "q05": float(q[0]), "q25": float(q[1]), "q50": float(q[2]), "q75": float(q[3]), "q95": float(q[4]),
    }


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1) + "\n")


LICENSE = "posteriordb, BSD-3-Clause, Copyright (c) 2011-2024, Stan Developers and their Assignees"
STATISTICS = ("over all chains x draws: mean, sd (ddof=1), quantiles q05..q95 (numpy, linear); "
              "mcse_mean, mcse_sd, ess_bulk, ess_tail, r_hat (rank-normalised split) from ArviZ "
              "as az.summary(kind='diagnostics') reports them")


def write_data(pdb: PosteriorDB, entry: Entry, post: dict, out: Path, command: str) -> dict:
    """Convert the posterior's posteriordb data set for the Pyro model, write
    ``<out>/data/<NAME>.json`` with its provenance, and return the converted data."""
    data = entry.convert(pdb.data(post["data_name"]))
    write_json(out / "data" / f"{entry.name}.json", {
        "name": entry.name,
        "posterior": entry.posterior,
        "data_name": post["data_name"],
        "source": f"posterior_database/data/data/{post['data_name']}.json.zip",
        "posteriordb_commit": pdb.commit,
        "conversion": entry.conversion,
        "license": LICENSE,
        "command": command,
        "data": data,
    })
    return data


def summary_rows(scalars: list[Scalar]) -> list[dict]:
    """One summary row (`summarise`) per scalar, with its site, index and Stan name."""
    rows = []
    for s in scalars:
        row = {"site": s.site, "index": list(s.index), "stan": s.stan}
        if s.from_draws is not None:
            row["from_draws"] = s.from_draws
        row.update(summarise(s.draws))
        rows.append(row)
    return rows


def build(pdb: PosteriorDB, entry: Entry, out: Path, command: str) -> dict:
    post = pdb.posterior(entry.posterior)
    ref_name = post["reference_posterior_name"]
    if not ref_name:
        raise SystemExit(f"{entry.posterior} has no reference posterior")
    data = write_data(pdb, entry, post, out, command)
    draws = pdb.draws(ref_name)
    info = pdb.draws_info(ref_name)
    chains, ndraws = next(iter(draws.values())).shape
    rows = summary_rows(entry.sites(draws, data))
    write_json(out / "reference" / f"{entry.name}.json", {
        "name": entry.name,
        "posterior": entry.posterior,
        "model_name": post["model_name"],
        "data_name": post["data_name"],
        "reference_posterior": ref_name,
        "posteriordb_commit": pdb.commit,
        "source": f"posterior_database/reference_posteriors/draws/draws/{ref_name}.json.zip",
        "reference_inference": info.get("inference"),
        "chains": int(chains),
        "draws_per_chain": int(ndraws),
        "statistics": STATISTICS,
        "license": LICENSE,
        "command": command,
        "scalars": rows,
    })
    n = max((len(v) for v in data.values() if isinstance(v, list)), default=0)
    return {"name": entry.name, "posterior": entry.posterior, "scalars": len(rows), "N": n,
            "max_r_hat": max(r["r_hat"] for r in rows), "min_ess_bulk": min(r["ess_bulk"] for r in rows)}


def suite_arguments(doc: str) -> argparse.ArgumentParser:
    """The arguments of a script that writes suite files: POSTERIORDB, --out, --only, --commit."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("posteriordb", help="posteriordb checkout or bare git directory")
    parser.add_argument("--out", type=Path, default=ROOT / "posteriordb", help="suite folder (default: %(default)s)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="zoo names to regenerate (default: all)")
    parser.add_argument("--commit", help="posteriordb commit to record (default: git rev-parse HEAD)")
    return parser


def selected(parser: argparse.ArgumentParser, only: list[str] | None, suite: list[Entry]) -> list[Entry]:
    """The entries ``--only`` names (every one by default); an unknown name is a usage error."""
    names = [e.name for e in suite]
    unknown = sorted(set(only or ()) - set(names))
    if unknown:
        parser.error(f"unknown names {unknown}; known: {names}")
    return [e for e in suite if not only or e.name in only]


def command_line(script: str, argv: list[str] | None) -> str:
    """The command that made a file, for its provenance."""
    return " ".join(["python", f"benchmarks/{script}", *(argv if argv is not None else sys.argv[1:])])


def main(argv: list[str] | None = None) -> int:
    parser = suite_arguments(__doc__)
    args = parser.parse_args(argv)
    entries = selected(parser, args.only, SUITE)
    pdb = PosteriorDB(args.posteriordb, args.commit)
    command = command_line("posteriordb_references.py", argv)
    print(f"posteriordb {pdb.commit}")
    print("| name | posterior | scalars | N | max r_hat | min ess_bulk |")
    print("|---|---|---|---|---|---|")
    for entry in entries:
        r = build(pdb, entry, args.out, command)
        print(f"| {r['name']} | {r['posterior']} | {r['scalars']} | {r['N']} | {r['max_r_hat']:.4f} | "
              f"{r['min_ess_bulk']:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
