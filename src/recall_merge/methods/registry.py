"""Every merge method by name: one explicit table (no import-time self-registration), so the list
a user sees and the code that runs are the same object."""

from __future__ import annotations

import difflib

from pydantic import BaseModel

from recall_merge.errors import ConfigError, excerpt
from recall_merge.methods.base import MergeMethod
from recall_merge.methods.classic import (
    Breadcrumbs,
    BreadcrumbsTies,
    DareLinear,
    DareTies,
    Della,
    DellaLinear,
    Linear,
    MagMax,
    TaskArithmetic,
    Ties,
)
from recall_merge.methods.dop import Dop
from recall_merge.methods.knots import Knots
from recall_merge.methods.opcm import Opcm
from recall_merge.methods.slerp import Multislerp, Slerp
from recall_merge.methods.svd import IsoC, IsoCts, TsvMerge
from recall_merge.methods.wudi import Wudi
from recall_merge.recall.method import RecallMethod

METHODS: dict[str, type[MergeMethod]] = {
    method.name: method
    for method in (RecallMethod, Linear, TaskArithmetic, Ties, DareLinear, DareTies, Breadcrumbs,
                   BreadcrumbsTies, MagMax, TsvMerge, IsoC, IsoCts,
                   Knots, Wudi,
                   Della, DellaLinear, Slerp, Multislerp,
                   Opcm, Dop)
}


def available_methods() -> list[str]:
    return sorted(METHODS)


def get_method(name: str) -> type[MergeMethod]:
    if name not in METHODS:
        close = difflib.get_close_matches(name, list(METHODS), n=1, cutoff=0.5)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(f"unknown merge method {excerpt(name)}",
                          f"{hint}available methods: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def parameters_model(name: str) -> type[BaseModel]:
    return get_method(name).parameters_model


def summary(name: str) -> str:
    """One line on what a method does: what ``recall methods`` prints."""
    return get_method(name).summary
