"""The one exception type the zoo raises for bad input."""
from __future__ import annotations

import difflib
from collections.abc import Iterable


class ZooError(ValueError):
    """Bad input to the zoo: names the model, the key or site, and the bad value."""


def unknown_name(kind: str, name: object, valid: Iterable[str], where: str = "") -> ZooError:
    """Build the error for an unknown name, listing the valid ones and the closest match.

    Parameters
    ----------
    kind : what the name is ("model", "back-end", "data key", ...).
    name : the name the user gave.
    valid : the names that would have been accepted.
    where : a prefix such as "model 'beta_bernoulli': ".
    """
    valid = sorted(valid)
    close = difflib.get_close_matches(str(name), valid, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ZooError(f"{where}unknown {kind} {name!r}{hint} Valid: {', '.join(valid) or '(none)'}")


class InferenceError(RuntimeError):
    """Inference broke down on valid input (a NaN ELBO): names the model, back-end and step."""
