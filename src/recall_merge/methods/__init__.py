"""Merge methods: RECALL and the classic baselines, behind one registry."""

from .base import (
    MergeMethod,
    TensorPosition,
    available_methods,
    get_method,
    parameters_model,
    register,
)

__all__ = [
    "MergeMethod",
    "TensorPosition",
    "available_methods",
    "get_method",
    "parameters_model",
    "register",
]
