"""A zoo of probabilistic models from the study notes, each runnable by name under
interchangeable inference back-ends and scored against its exact posterior.

>>> import zoo
>>> data, truth = zoo.simulate("normal_gamma", seed=0)
>>> cmp = zoo.compare("normal_gamma", backends=["exact", "nuts", "svi", "cavi"], data=data)
>>> cmp.table

Layers: `zoo.core` (specs, validation, errors, files, the one ArviZ module) is imported by the
models (`zoo.models`) and the back-ends (`zoo.inference`); the facade (this package's other
modules) imports them all, and nothing below it imports the facade.
"""
from zoo.api import (
           catalogue,
           compare,
           get_model,
           list_backends,
           list_models,
           register,
           run,
           simulate,
)
from zoo.bandit import simulate_bandit
from zoo.calibration import sbc
from zoo.core.errors import InferenceError, ZooError
from zoo.grids import grid
from zoo.model_comparison import ModelComparison, compare_models
from zoo.posteriordb import suite
from zoo.results import Comparison, Result, load
from zoo.sequential import sequential_update

suite.register_suite()  # lists the posteriordb suite; each model registers on its first use

__all__ = ["Comparison", "InferenceError", "ModelComparison", "Result", "ZooError", "catalogue", "compare", "compare_models",
           "get_model", "grid", "list_backends", "list_models", "load", "register", "run", "sbc", "sequential_update",
           "simulate", "simulate_bandit"]
