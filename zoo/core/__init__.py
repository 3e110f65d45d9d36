"""The core layer: what models (`zoo.models`) and back-ends (`zoo.inference`) build on.

- `zoo.core.spec`: `ModelSpec` (what a model provides), `Backend` (what a back-end provides),
  `Fit`, `ExactPosterior`, `DataKey`, `Hyper`.
- `zoo.core.problem`: validation of data, hyperparameters and options; the `Problem` a
  back-end receives.
- `zoo.core.errors`, `zoo.core.files`, `zoo.core.transforms`, and `zoo.core.arviz_io`, the one
  module that calls ArviZ.

Nothing here imports `zoo.models`, `zoo.inference` or the facade (`zoo.api` and the rest).
"""
