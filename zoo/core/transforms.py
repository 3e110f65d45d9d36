"""A bijection onto symmetric positive-definite matrices, registered with ``biject_to``.

Why this exists: neither torch 2.13 nor pyro-ppl 1.9 registers a *bijection* onto
``constraints.positive_definite``. ``transform_to(positive_definite)`` exists, but it maps a
full D x D real matrix through ``LowerCholeskyTransform`` (which ignores the upper triangle),
so it is not bijective and has no usable Jacobian; ``biject_to(positive_definite)`` raises
``NotImplementedError: Cannot transform _PositiveDefinite constraints``. NUTS/HMC (their
``initialize_model`` calls ``biject_to`` on every site's support) and every autoguide
(``AutoNormal``, ``AutoMultivariateNormal``, ...) therefore fail on a ``Wishart`` site.

`PositiveDefiniteBijection` maps a vector ``v`` of length D(D+1)/2 to a lower-triangular ``L``
(row-major lower-triangle order, ``torch.tril_indices``), the diagonal through ``exp`` so it is
positive, and returns ``A = L L^T``. Every SPD matrix has exactly one such Cholesky factor, so
the map is a bijection from R^{D(D+1)/2} onto SPD matrices, and the density it induces is with
respect to Lebesgue measure on the D(D+1)/2 distinct entries of ``A`` (the measure a Wishart
density is written against). Its log |Jacobian| is

    log|d vech(A) / d v| = D log 2 + sum_{i=1..D} (D - i + 1) log L_ii  +  sum_i log L_ii
                         = D log 2 + sum_{i=1..D} (D - i + 2) v_ii

(the first part is the Cholesky map L -> L L^T, the second the ``exp`` on the diagonal).

Importing this module registers the bijection (``biject_to.register(positive_definite)``);
``pyro.distributions.constraints.positive_definite`` is the same object as torch's, so Pyro
sees it too. ``transform_to`` is left alone (Pyro already registers one).
"""
from __future__ import annotations

import math

import torch
from torch.distributions import biject_to, constraints
from torch.distributions.transforms import Transform

__all__ = ["PositiveDefiniteBijection", "vec_size", "matrix_size"]


def vec_size(D: int) -> int:
    """Number of free entries D(D+1)/2 of a symmetric D x D matrix."""
    return D * (D + 1) // 2


def matrix_size(m: int) -> int:
    """The D with D(D+1)/2 == m; raises ValueError if there is none."""
    D = int(round((math.sqrt(8 * m + 1) - 1) / 2))
    if D < 1 or vec_size(D) != m:
        raise ValueError(f"a vector of length {m} is not the lower triangle of a square matrix")
    return D


class PositiveDefiniteBijection(Transform):
    """Unconstrained R^{D(D+1)/2} -> symmetric positive-definite D x D, ``v -> L L^T``.

    ``L`` is lower triangular with the entries of ``v`` in ``torch.tril_indices`` order and
    ``exp`` applied to its diagonal. Leading batch dimensions are carried through.
    """

    domain = constraints.independent(constraints.real, 1)
    codomain = constraints.positive_definite
    bijective = True

    def __init__(self, cache_size: int = 0):
        super().__init__(cache_size=cache_size)

    def __eq__(self, other):
        return isinstance(other, PositiveDefiniteBijection)

    def __hash__(self):
        return hash(type(self))

    @staticmethod
    def _indices(D: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        rows, cols = torch.tril_indices(D, D, device=device)
        return rows, cols

    def _lower(self, v: torch.Tensor) -> torch.Tensor:
        """The Cholesky factor L (positive diagonal) of the image of ``v``."""
        D = matrix_size(v.shape[-1])
        rows, cols = self._indices(D, v.device)
        on_diag = rows == cols
        entries = torch.where(on_diag, v.exp(), v)
        L = v.new_zeros(v.shape[:-1] + (D, D))
        L[..., rows, cols] = entries
        return L

    def _call(self, v: torch.Tensor) -> torch.Tensor:
        L = self._lower(v)
        A = L @ L.mT
        return 0.5 * (A + A.mT)  # exactly symmetric whatever the matmul's summation order

    def _inverse(self, A: torch.Tensor) -> torch.Tensor:
        L = torch.linalg.cholesky(A)
        D = A.shape[-1]
        rows, cols = self._indices(D, A.device)
        entries = L[..., rows, cols]
        on_diag = rows == cols
        return torch.where(on_diag, entries.clamp(min=torch.finfo(A.dtype).tiny).log(), entries)

    def log_abs_det_jacobian(self, v: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
        D = matrix_size(v.shape[-1])
        rows, cols = self._indices(D, v.device)
        diag = v[..., rows == cols]  # log L_ii, i = 1..D
        powers = torch.arange(D + 1, 1, -1, dtype=v.dtype, device=v.device)  # D - i + 2
        return D * math.log(2.0) + (powers * diag).sum(-1)

    def forward_shape(self, shape):
        if len(shape) < 1:
            raise ValueError("PositiveDefiniteBijection needs an input with at least one dim")
        D = matrix_size(shape[-1])
        return torch.Size(shape[:-1]) + (D, D)

    def inverse_shape(self, shape):
        if len(shape) < 2 or shape[-1] != shape[-2]:
            raise ValueError(f"PositiveDefiniteBijection needs square matrices, got {tuple(shape)}")
        return torch.Size(shape[:-2]) + (vec_size(shape[-1]),)


@biject_to.register(constraints.positive_definite)
def _biject_to_positive_definite(constraint):
    return PositiveDefiniteBijection()
