"""A zoo of probabilistic models from the study notes, each runnable by name under
interchangeable inference back-ends and scored against its exact posterior.

>>> import zoo
>>> data, truth = zoo.simulate("normal_gamma", seed=0)
>>> cmp = zoo.compare("normal_gamma", backends=["exact", "nuts", "svi", "cavi"], data=data)
>>> cmp.table
"""
from importlib import import_module

from zoo.errors import InferenceError, ZooError

_API = ["Comparison", "Result", "compare", "get_model", "list_backends", "list_models", "load",
        "register", "run", "simulate", "simulate_bandit", "sequential_update", "sbc", "grid"]
# Names defined outside zoo.api, and their module.
_MODULES = {"simulate_bandit": "zoo.bandit", "sequential_update": "zoo.sequential", "sbc": "zoo.calibration",
            "grid": "zoo.grids"}
__all__ = _API + ["InferenceError", "ZooError"]


def __getattr__(name: str):
    # The API is loaded on first use, so model modules can import zoo.spec without a cycle
    # (zoo.api imports the registry, which imports every model module).
    if name in _API:
        return getattr(import_module(_MODULES.get(name, "zoo.api")), name)
    raise AttributeError(f"module 'zoo' has no attribute {name!r}")
