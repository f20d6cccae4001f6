"""OPCM, Orthogonal Projection-based Continual Merging (Tang et al., NeurIPS 2025, arXiv
2501.09522), with the semantics of FusionBench 0.2.33 (``method/opcm/opcm.py``, ``OPCMForCLIP``).

Step t merges the running merge M_{t-1} (a task vector, θ_merged − θ_base) with the task vector
τ_t = θ_t − θ_base of the new expert:

* **Matrices** (:func:`project_out`): with the SVD M_{t-1} = U S Vᵀ, the new task vector's
  coordinates in M's singular basis, Uᵀ τ_t V, lose their diagonal (one entry per singular pair)
  and their top-left k × k block, where k is the first index at which the cumulative share of
  Σ s exceeds ``alpha``; what is left goes back, P(τ_t) = U (·) Vᵀ.
* **Unscaled running sum:** S_t = λ_{t-1} M_{t-1} + P(τ_t) for matrices, + τ_t for every other
  floating tensor.
* **Scale:** the whole model is rescaled so that its task vector has the mean norm of the task
  vectors so far: n̄_t = mean_k ‖τ_k‖, λ_t = ‖S_t‖ / n̄_t, M_t = S_t / λ_t (norms over every
  floating tensor of the model).

λ_{t-1} M_{t-1} is S_{t-1}, and the projection depends only on the singular vectors of M and the
shares of its singular values, which a positive scale leaves alone. So S_t = S_{t-1} + P(τ_t)
does not depend on the λ's: the chain over N experts runs per tensor, and only the final scale
n̄_N / ‖S_N‖ needs the whole model. That takes one planning pass over every tensor (with the
same SVDs) before the streaming pass, so a step costs two SVDs per matrix.

Between steps the merged weights carry M_t; ``merge_state.json`` beside them (:class:`OpcmState`)
carries λ_t and the norms ‖τ_1‖ … ‖τ_t‖. Given ``[that merge, next expert]`` the method reads
it back, S_t = λ_t (θ_merged − θ_base), and checks that the merge's task vector still has the
norm the state recorded (the same base, the same weights).

Differences from FusionBench, none of which shows on full-rank task vectors (fine-tuned full
models): the diagonal is removed only for the singular pairs of non-zero singular values (and k is
at most their number), since the vectors of zero singular values are an arbitrary basis of the
null space that LAPACK happens to return; a previous merged matrix that is all zero has no
subspace, so τ_t is kept whole (FusionBench zeroes the diagonal of that arbitrary basis); a model
whose task vectors are all zero stays the base (FusionBench divides 0 by 0).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from pydantic import Field, ValidationError, field_validator, model_validator
from tqdm.auto import tqdm

from recall_merge.errors import CheckpointError, ConfigError, excerpt
from recall_merge.io.reader import check_finite, read_json_object
from recall_merge.io.writer import REPORT_NAME
from recall_merge.methods.base import MERGE_STATE_NAME, StrictParameters, TensorPosition
from recall_merge.methods.chain import ChainMerge, ChainParameters, model_folder

if TYPE_CHECKING:
    from recall_merge.config import MergeConfig
    from recall_merge.io.pool import ModelPool

STATE_VERSION = 1
# |measured − recorded| / recorded above this: the previous merge is not the model its state
# describes. Both norms sum the same float32 values in float64, so only the order of the sum
# differs (≈ 1e-12 relative); 1e-4 leaves room and still catches any real change.
NORM_TOLERANCE = 1e-4


# --- the maths, one matrix at a time ------------------------------------------------------------

def protected_rank(singular_values: torch.Tensor, alpha: float) -> int:
    """k: the first index at which the cumulative share of Σ s exceeds ``alpha`` (FusionBench's
    ``(s.cumsum(0) / s.sum() > alpha).float().argmax()``: 0 where no share exceeds it)."""
    total = singular_values.sum()
    if not total > 0:
        return 0
    return int((singular_values.cumsum(dim=0) / total > alpha).float().argmax())


def nonzero_rank(singular_values: torch.Tensor, shape: torch.Size) -> int:
    """How many singular values are non-zero, at numpy's ``matrix_rank`` tolerance
    (s_max · max(m, n) · ε of the dtype)."""
    if singular_values.numel() == 0 or not singular_values[0] > 0:
        return 0
    tolerance = singular_values[0] * max(shape) * torch.finfo(singular_values.dtype).eps
    return int((singular_values > tolerance).sum())


def project_out(previous: torch.Tensor, task: torch.Tensor, alpha: float) -> tuple[torch.Tensor, int, int]:
    """P(τ): ``task`` without its coordinates on the singular pairs of ``previous`` (the diagonal
    of Uᵀ τ V) and on the pairs among its top-k directions (the k × k block), k from ``alpha``.

    Returns (P(τ), rank of ``previous``, k). FusionBench takes the full SVD and writes
    U · mask(Uᵀ τ V) · Vᵀ; every removed coordinate lies in the first r rows and columns, so
    τ − U_r R V_rᵀ with the thin SVD and R the removed coordinates (r × r) is the same matrix,
    without the m × m and n × n bases. m × n, m × n → m × n."""
    u, s, vh = torch.linalg.svd(previous, full_matrices=False)
    rank = nonzero_rank(s, previous.shape)
    if rank == 0:
        return task.clone(), 0, 0
    protected = min(protected_rank(s, alpha), rank)
    u, vh = u[:, :rank], vh[:rank]
    coordinates = u.T @ task @ vh.T
    removed = torch.zeros_like(coordinates)
    removed[:protected, :protected] = coordinates[:protected, :protected]
    removed.diagonal().copy_(coordinates.diagonal())
    return torch.addmm(task, u @ removed, vh, alpha=-1.0), rank, protected


# --- the state a merge leaves for its next step -----------------------------------------------

class OpcmState(StrictParameters):
    """``merge_state.json`` of an OPCM merge: what its next step needs besides the weights."""

    method: Literal["opcm"]
    version: Literal[1]
    tasks_merged: int = Field(ge=1, description="t: how many experts this merge holds")
    task_vector_norms: list[float] = Field(description="‖τ_1‖ … ‖τ_t‖ over every floating tensor")
    lambda_: float = Field(alias="lambda", ge=0, description="λ_t: S_t = λ_t (θ_merged − θ_base)")
    merged_task_vector_norm: float = Field(ge=0, description="‖θ_merged − θ_base‖ as written")
    alpha: float
    exclude: list[str]

    @field_validator("task_vector_norms")
    @classmethod
    def _non_negative(cls, value: list[float]) -> list[float]:
        if any(norm < 0 for norm in value):
            raise ValueError("a norm is negative")
        return value

    @model_validator(mode="after")
    def _one_norm_per_task(self) -> OpcmState:
        if len(self.task_vector_norms) != self.tasks_merged:
            raise ValueError(f"task_vector_norms has {len(self.task_vector_norms)} entries for "
                             f"tasks_merged {self.tasks_merged}")
        return self


def read_state(folder: Path) -> OpcmState | None:
    """The OPCM state in ``folder``, None where there is none, a CheckpointError where it is
    not one this version wrote."""
    path = folder / MERGE_STATE_NAME
    if not path.exists():
        return None
    fix = (f"{MERGE_STATE_NAME} is written by `recall merge` with method opcm; merge again from "
           "the first expert, or give the folder the file its merge wrote")
    data = read_json_object(path, "the state of a continual merge", fix)
    if data.get("method") != "opcm":
        raise CheckpointError(f"{path} holds the state of method {excerpt(data.get('method'))}, "
                              "not of opcm", "give the output of an earlier opcm merge, or an expert")
    try:
        return OpcmState.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "the file"
        raise CheckpointError(f"{path} is not a valid OPCM state: {where}: {first['msg']}", fix) from None


def is_opcm_output(folder: Path) -> bool:
    """Whether ``folder`` is the output of a ``recall merge`` with method opcm (its report says so)."""
    report = folder / REPORT_NAME
    if not report.is_file():
        return False
    try:
        return read_json_object(report, "a merge report", "").get("method") == "opcm"
    except CheckpointError:
        return False


# --- the method ---------------------------------------------------------------------------------

class OpcmParameters(ChainParameters):
    alpha: float = Field(
        0.5, ge=0, le=1, description="protected share: a step keeps the new task vector off the "
        "previous merge's top-k singular directions, k the first at which the cumulative share "
        "of the singular-value sum exceeds alpha (FusionBench's `alpha`, 0.5 in its config)",
    )


class Opcm(ChainMerge):
    """OPCM (Tang et al., NeurIPS 2025): each new task vector is projected off the previous
    merge's singular directions, summed, and the model rescaled to the mean task-vector norm.

    Per matrix and step: one thin SVD of the running sum (twice: planning and merging); peak
    ≈ 6·m·n floats beyond the inputs."""

    name = "opcm"
    summary = ("continual: each new task vector projected off the previous merge's singular "
               "directions, mean-norm rescaled (Tang et al. 2025)")
    parameters_model: ClassVar[type[OpcmParameters]] = OpcmParameters

    def __init__(self, parameters: OpcmParameters, config: MergeConfig, num_layers: int) -> None:
        super().__init__(parameters, config, num_layers)
        self.alpha = parameters.alpha
        self.output_dtype = getattr(torch, config.dtype)
        folders = [model_folder(ref) for ref in config.models]
        first = self.chain[0]
        self.previous = read_state(folders[first])
        if self.previous is None and is_opcm_output(folders[first]):
            raise CheckpointError(
                f"{folders[first]} is the output of an opcm merge but holds no {MERGE_STATE_NAME}, "
                "which its next step needs (λ and the task-vector norms so far)",
                "give the folder as the opcm merge wrote it, or merge again from the first expert")
        if self.previous is not None and len(self.chain) == 1:
            raise ConfigError(
                f"models holds only the earlier opcm merge {folders[first]}: there is no new expert",
                "add the next expert after it: models: [previous merge, new expert]")
        for index in self.chain[1:]:
            if read_state(folders[index]) is not None:
                raise ConfigError(
                    f"model {folders[index]} is an earlier opcm merge, but only the first model "
                    "may be one (the running merge); the others are new experts",
                    "put the previous merge first: models: [previous merge, new expert, …]")
        # what the planning pass fixes: the norms and the final scale
        self.task_norms: list[float] = list(self.previous.task_vector_norms) if self.previous else []
        self.scale: float | None = 1.0 if self.copies_first_model else None
        self.lambda_t = 1.0
        self.first_norm_squared = 0.0
        self.written_norm_squared = 0.0
        self.previous_norm: float | None = None

    @property
    def copies_first_model(self) -> bool:
        """The first step alone: the merge is the first expert itself (FusionBench's step 0)."""
        return self.previous is None and len(self.chain) == 1

    # -- per tensor ---------------------------------------------------------------------------

    def running_sum(self, name: str, position: TensorPosition, base: torch.Tensor,
                    experts: list[torch.Tensor], record: dict[str, Any] | None = None) -> torch.Tensor:
        """S_N of one tensor: the chain of unscaled steps over ``self.chain``."""
        first, *new = self.chain
        total = experts[first] - base
        if self.previous is not None:
            total.mul_(self.previous.lambda_)
        matrix = self.is_matrix(name, position, base)
        ranks: list[int] = []
        protected: list[int] = []
        for index in new:
            task = experts[index] - base
            if matrix:
                task, rank, kept = project_out(total, task, self.alpha)
                ranks.append(rank)
                protected.append(kept)
            total.add_(task)
            del task
        if record is not None:
            record["merged_as"] = "projection" if matrix else "sum"
            if matrix:
                record.update(previous_rank=ranks, protected_rank=protected)
        return total

    def merge_tensor(self, name: str, position: TensorPosition, base: torch.Tensor,
                     experts: list[torch.Tensor]) -> torch.Tensor:
        if self.copies_first_model:
            merged = experts[self.chain[0]].clone()
            self.first_norm_squared += _squared_norm(merged - base)
            self.record(name, position, {"shape": list(base.shape), "merged_as": "first model"})
        else:
            if self.scale is None:
                raise RuntimeError("opcm's planning pass did not run")
            record: dict[str, Any] = {"shape": list(base.shape)}
            merged = self.running_sum(name, position, base, experts, record).mul_(self.scale).add_(base)
            self.record(name, position, record)
        # the norm the next step will measure: of the weights as written (after the cast)
        self.written_norm_squared += _squared_norm(merged.to(self.output_dtype).to(torch.float32) - base)
        return merged

    # -- the planning pass: norms and the scale ---------------------------------------------

    def plan(self, pool: ModelPool, *, quiet: bool = False) -> None:
        if self.copies_first_model:
            return
        first, *new = self.chain
        new_squared = [0.0] * len(new)
        sum_squared = first_squared = 0.0
        names = [name for name in pool.tensor_names if pool.base.tensors[name].dtype.is_floating_point]
        for name in tqdm(names, desc="opcm: running sum and norms", disable=quiet, unit="tensor"):
            base = pool.base_tensor(name).to(torch.float32)
            experts = [pool.expert_tensor(k, name, base) if k in self.chain else base
                       for k in range(len(pool.experts))]
            # the streaming pass checks this too, but an SVD of a NaN matrix fails first with a
            # LAPACK error: refuse here, naming the model
            for folder, tensor in zip(pool.folders(), [base, *experts], strict=True):
                check_finite(tensor, name, folder)
            for slot, index in enumerate(new):
                new_squared[slot] += _squared_norm(experts[index] - base)
            first_squared += _squared_norm(experts[first] - base)
            sum_squared += _squared_norm(self.running_sum(name, pool.position(name), base, experts))
            del experts
        if self.previous is not None:
            self.previous_norm = math.sqrt(first_squared)  # ‖M_{t-1}‖, the previous merge's
            self._check_previous(pool.folders()[1 + first], self.previous_norm)
        else:
            self.task_norms.append(math.sqrt(first_squared))  # ‖τ_1‖, the chain's first expert
        self.task_norms += [math.sqrt(value) for value in new_squared]
        mean_norm = sum(self.task_norms) / len(self.task_norms)
        total_norm = math.sqrt(sum_squared)
        # all-zero task vectors: S = 0 and the merge is the base, whatever the scale
        self.scale = mean_norm / total_norm if total_norm > 0 else 0.0
        self.lambda_t = total_norm / mean_norm if mean_norm > 0 else 0.0

    def _check_previous(self, folder: Path, measured: float) -> None:
        assert self.previous is not None
        recorded = self.previous.merged_task_vector_norm
        if abs(measured - recorded) > NORM_TOLERANCE * max(measured, recorded) + 1e-12:
            raise CheckpointError(
                f"the earlier opcm merge {folder} does not match its {MERGE_STATE_NAME}: its task "
                f"vector on this base has norm {measured:.6g}, the state records {recorded:.6g}",
                "give the base that merge was made on, and the merge as it was written (not "
                "converted or edited since); or merge again from the first expert")

    # -- what goes out ------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        if self.copies_first_model:
            self.task_norms = [math.sqrt(self.first_norm_squared)]
        return {"method": "opcm", "version": STATE_VERSION, "tasks_merged": len(self.task_norms),
                "task_vector_norms": self.task_norms, "lambda": self.lambda_t,
                "merged_task_vector_norm": math.sqrt(self.written_norm_squared),
                "alpha": self.alpha, "exclude": self.exclude}

    def report(self) -> dict[str, Any]:
        continued = None
        if self.previous is not None:
            continued = {"tasks_merged": self.previous.tasks_merged, "lambda": self.previous.lambda_,
                         "measured_task_vector_norm": self.previous_norm}
        return {
            "method": self.name,
            "applied": {"alpha": self.alpha, "exclude": self.exclude,
                        "parameters": self.parameters.model_dump(by_alias=True),
                        "skipped_first_model_as_base": self.skipped_base,
                        "continued_from": continued, "scale": self.scale, "state": self.state()},
            **self.tensor_report(),
        }


def _squared_norm(tensor: torch.Tensor) -> float:
    """‖tensor‖², summed in float64 (one float32 temporary, not a float64 copy)."""
    return float(tensor.square().sum(dtype=torch.float64))
