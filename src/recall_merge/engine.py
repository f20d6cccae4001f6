"""The streaming merge: plan with the method, then one output tensor at a time.

For each output tensor: read the base tensor and each expert's (or the base + LoRA delta), apply
the method's tensor function, append to the current shard, free. Everything goes to a temporary
folder beside the output, renamed into place only when complete.
"""

from __future__ import annotations

import json
import math
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from recall_merge.config import MergeConfig, load_config
from recall_merge.io import atomic, hub, lora_out
from recall_merge.io.lora import low_rank_combination
from recall_merge.io.output import (
    MergeResult,
    check_free_space,
    check_output,
    check_output_finite,
    copy_support_files,
    peak_rss_mb,
    publish,
    removed_on_failure,
)
from recall_merge.io.pool import ModelPool
from recall_merge.io.reader import check_finite
from recall_merge.io.writer import StreamingShardWriter
from recall_merge.methods.registry import get_method
from recall_merge.provenance import versions
from recall_merge.reports.model_card import model_card

# every dtype a config names: `dtype` (the output) and `compute_dtype` (RECALL's arithmetic)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "float64": torch.float64}


def merge(config: MergeConfig | dict | str | Path, *, overwrite: bool = False, quiet: bool = False,
          emit_mergekit: Path | None = None) -> MergeResult:
    """Run a merge described by a config (a validated MergeConfig, a dict, or a YAML path).

    Returns the output folder and the report (also written as ``recall_report.json`` there).
    Raises a :class:`~recall_merge.errors.RecallError` subclass for bad input, before any weight
    is read wherever the fault can be seen from configs and headers.
    """
    if not isinstance(config, MergeConfig):
        config = load_config(config)
    if config.mergekit is not None:
        # A mergekit config with slices, filters, a tokenizer or a float16/bfloat16 dtype: merged
        # per output tensor as mergekit plans it (output tensors that are not the base's tensors).
        from recall_merge.interop.mergekit_plan import merge_planned

        return merge_planned(config, overwrite=overwrite, quiet=quiet, emit_mergekit=emit_mergekit)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    output = Path(config.output)
    check_output(output, config, overwrite)
    torch.manual_seed(config.seed)

    pool = ModelPool.open(config.base, config.models, allow_pickle=config.allow_pickle,
                          trust_remote_code=config.trust_remote_code)
    as_lora = config.output_format == "lora"
    if as_lora:
        lora_out.check_lora_output_inputs(pool, config, emit_mergekit)
    else:  # an adapter is a small fraction of the model: the full output's estimate does not apply
        _check_free_space(output, pool, config)
    method_cls = get_method(config.method)
    method = method_cls(config.method_parameters(), config, pool.num_layers)
    timings["open_s"] = time.perf_counter() - started

    # Built early, written at the end: an unsupported export fails before the streaming merge,
    # and before the planning pass (LiNeS' alpha: auto reads every tensor there) except for
    # RECALL, whose export needs the weights that pass chooses.
    early = emit_mergekit is not None and config.method != "recall"
    mergekit_document = _mergekit_document(method, config, pool) if early else None

    stage = time.perf_counter()
    method.plan(pool, quiet=quiet)
    timings["plan_s"] = time.perf_counter() - stage
    rss_after_plan = peak_rss_mb()
    if emit_mergekit is not None and not early:
        mergekit_document = _mergekit_document(method, config, pool)

    temp = atomic.temporary_folder_for(output)
    with removed_on_failure(temp, output):
        stage = time.perf_counter()
        lora_report = None
        if as_lora:
            base_hub = hub.snapshot_record(config.base)
            files, lora_report = lora_out.write_merge_as_lora(
                pool, method, config, temp, DTYPES[config.dtype], quiet=quiet,
                base_name=base_hub["id"] if base_hub else None,
                base_revision=base_hub["commit"] if base_hub else None)
        else:
            files = _stream_merge(pool, method, config, temp, quiet)
        timings["merge_s"] = time.perf_counter() - stage
        if not as_lora:  # an adapter folder holds no config.json: PEFT reads the base's
            copy_support_files(pool.base.folder, temp, config)
        timings["total_s"] = time.perf_counter() - started
        report = _build_report(config, method, pool, files, timings, rss_after_plan)
        if lora_report is not None:
            report["lora_output"] = lora_report
        publish(temp, output, report, model_card(report), overwrite=overwrite, state=method.state(),
                emit_mergekit=emit_mergekit, mergekit_document=mergekit_document)
    return MergeResult(output=output, report=report)


def compute_placement(method, config: MergeConfig) -> tuple[torch.device, torch.dtype]:
    """Where and in what precision the per-tensor arithmetic runs: ``config.device`` and
    ``config.compute_dtype`` for a method whose tensor function keeps every tensor it makes on its
    inputs' device (``compute_on_device``, RECALL); the CPU in float32 for the others."""
    if getattr(method, "compute_on_device", False):
        return torch.device(config.device), DTYPES[config.compute_dtype]
    return torch.device("cpu"), torch.float32


def _to_compute(tensor: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return tensor.to(device=device, dtype=dtype)


def _stream_merge(pool: ModelPool, method, config: MergeConfig, folder: Path, quiet: bool) -> list[str]:
    out_dtype = DTYPES[config.dtype]
    device, compute_dtype = compute_placement(method, config)
    plan = []
    for name in pool.tensor_names:
        info = pool.base.tensors[name]
        dtype = out_dtype if info.dtype.is_floating_point else info.dtype
        plan.append((name, dtype, info.shape))
    writer = StreamingShardWriter(folder, plan, config.shard_size_bytes(),
                                  metadata={"merged_by": "recall-merge", "method": config.method})
    names = [name for shard in writer.shards for name in shard.names]
    num_experts = len(pool.experts)
    items = _work_items(pool, method, names, config.block_size_bytes())

    # LoRA experts and a merge linear in the models (RECALL's paper and task-vector forms): the
    # merged rows are made from the adapters' factors in one product on the reader thread, not
    # from N rebuilt expert tensors (io.lora.low_rank_combination; on CPU in float32 only, where
    # the arithmetic is float64 rounded once, so a row block still gives the whole tensor's bytes)
    from_factors = (pool.all_lora and device.type == "cpu" and compute_dtype == torch.float32)

    def read_inputs(item: tuple[str, tuple[int, int] | None, bool],
                    ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor | None]:
        name, rows, _ = item
        base_tensor = pool.base_tensor(name, rows)
        if not base_tensor.dtype.is_floating_point:
            return base_tensor, [], None
        if from_factors:
            merged = _merge_from_factors(pool, method, name, rows, base_tensor, out_dtype)
            if merged is not None:
                return base_tensor, [], merged
        return base_tensor, [pool.expert_tensor(k, name, base_tensor, rows) for k in range(num_experts)], None

    # Three stages overlap: the next block is read while this one is merged and the previous one
    # written (file I/O and torch kernels release the GIL). At most three blocks' inputs are alive
    # at once, and elementwise methods cut large tensors into row blocks: memory stays flat.
    with ThreadPoolExecutor(1, thread_name_prefix="read") as reader, \
            ThreadPoolExecutor(1, thread_name_prefix="write") as write_pool:
        pending_read = reader.submit(read_inputs, items[0]) if items else None
        pending_write: Future | None = None
        try:
            for index, item in enumerate(tqdm(items, desc=f"merging ({config.method})",
                                              disable=quiet, unit="block")):
                name, _, last = item
                base_tensor, experts, merged = pending_read.result()
                if index + 1 < len(items):
                    pending_read = reader.submit(read_inputs, items[index + 1])
                if not base_tensor.dtype.is_floating_point:
                    merged = base_tensor  # integer buffers are not merged
                elif merged is not None:  # made from the LoRA factors by the reader, in out_dtype
                    check_output_finite(name, merged, config)
                else:
                    base32 = base_tensor.to(torch.float32)
                    _check_finite(name, pool, base32, experts)
                    # one row block at a time on the compute device; the result comes back to
                    # the CPU (in the output dtype) for the writer thread
                    merged = method.merge_tensor(
                        name, pool.position(name), _to_compute(base32, device, compute_dtype),
                        [_to_compute(tensor, device, compute_dtype) for tensor in experts])
                    merged = merged.to(device="cpu", dtype=out_dtype)
                    check_output_finite(name, merged, config)
                if pending_write is not None:
                    pending_write.result()  # surfaces write errors (e.g. a full disk) promptly
                pending_write = write_pool.submit(writer.write_part, name, merged, last)
                del base_tensor, experts, merged
            if pending_write is not None:
                pending_write.result()
            return writer.finish()
        finally:
            if pending_read is not None:
                pending_read.cancel()
            writer.abort()


def _work_items(pool: ModelPool, method, names: list[str], block_bytes: int,
                ) -> list[tuple[str, tuple[int, int] | None, bool]]:
    """(tensor name, row range or None for the whole tensor, is-last-block) in write order."""
    models = len(pool.experts) + 1
    items: list[tuple[str, tuple[int, int] | None, bool]] = []
    for name in names:
        info = pool.base.tensors[name]
        rows_total = info.shape[0] if info.shape else 0
        row_bytes = 4 * (math.prod(info.shape[1:]) if info.shape else 1) * models  # float32, all models
        if (not method.is_elementwise() or not info.dtype.is_floating_point or rows_total < 2
                or row_bytes * rows_total <= block_bytes):
            items.append((name, None, True))
            continue
        step = max(1, block_bytes // row_bytes)
        for start in range(0, rows_total, step):
            stop = min(start + step, rows_total)
            items.append((name, (start, stop), stop == rows_total))
    return items


def _merge_from_factors(pool: ModelPool, method, name: str, rows: tuple[int, int] | None,
                        base_tensor: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor | None:
    """The merged rows Σ_i c_i θ_i (in ``out_dtype``) from the base and the experts' LoRA factors,
    where the method is linear at this tensor and every expert adapts it with LoRA or not at all;
    else None."""
    coefficients = method.linear_coefficients(pool.position(name))
    factors = pool.lora_factors(name, rows) if coefficients is not None else None
    if factors is None:
        return None
    check_finite(base_tensor, name, pool.base.folder)  # in the file's dtype: no float32 copy
    terms = []
    for expert, coefficient, pair in zip(pool.experts, coefficients[1:], factors, strict=True):
        if pair is not None:
            for factor in pair:  # a non-finite factor names its adapter, as a rebuilt tensor would
                check_finite(factor, name, expert.folder)
            terms.append((coefficient, *pair))
    return low_rank_combination(base_tensor, sum(coefficients), terms, out_dtype)


def _check_finite(name: str, pool: ModelPool, base: torch.Tensor, experts: list[torch.Tensor]) -> None:
    for folder, tensor in zip(pool.folders(), [base, *experts], strict=True):
        check_finite(tensor, name, folder)


def _check_free_space(output: Path, pool: ModelPool, config: MergeConfig) -> None:
    """Refuse early when the output cannot fit, rather than fail after gigabytes were written."""
    itemsize = torch.empty((), dtype=DTYPES[config.dtype]).element_size()
    needed = sum(
        (info.nbytes // info.dtype.itemsize) * (itemsize if info.dtype.is_floating_point else info.dtype.itemsize)
        for info in pool.base.tensors.values())
    check_free_space(output, needed)


def _build_report(config: MergeConfig, method, pool: ModelPool, files: list[str],
                  timings: dict[str, float], rss_after_plan: float) -> dict[str, Any]:
    report: dict[str, Any] = {
        "method": config.method,
        "models": [str(folder) for folder in pool.folders()],
        "model_kinds": ["base"] + ["lora" if e.is_lora else "full" for e in pool.experts],
        # per model: {id, revision asked for, commit} when it came from the Hugging Face hub
        "hub": [hub.snapshot_record(ref) for ref in [config.base, *config.models]],
        "output_format": config.output_format,
        "num_layers": pool.num_layers,
        "seed": config.seed,
        "config": json.loads(config.model_dump_json()),
        "parameters": json.loads(config.method_parameters().model_dump_json(by_alias=True)),
        "versions": versions(),
        "output_files": files,
    }
    device, compute_dtype = compute_placement(method, config)
    report["compute"] = {"device": config.device, "compute_dtype": config.compute_dtype,
                         "merge_arithmetic": {"device": str(device),
                                              "dtype": str(compute_dtype).removeprefix("torch.")}}
    report.update(method.report())
    # Everything above is a pure function of config and inputs (bit-identical run to run); what
    # varies between runs (timings, memory) is kept apart under "run".
    report["run"] = {
        "timings": {**timings, **report.pop("planning_timings", {})},
        "peak_rss_mb": {"after_planning": rss_after_plan, "total": peak_rss_mb()},
    }
    return report


def _mergekit_document(method, config: MergeConfig, pool: ModelPool) -> dict[str, Any]:
    from recall_merge.interop.mergekit import to_mergekit

    return to_mergekit(method, config, pool)
