"""Evaluation back ends and batch sizes: `evaluation.backend` (hf | vllm) and `evaluation.batch_size`.

* `hf` (default): lm-eval's HFLM on the in-memory pruned model (`backend.evaluation.lm_eval_adapter`).
* `vllm`: CUDA workers with `vllm` installed (an optional extra, not in requirements.txt:
  `pip install vllm` on the GPU worker). vLLM cannot take an in-memory torch module, so the pruned
  model and its tokenizer are saved (`save_pretrained`, safetensors; depth-pruned models carry their
  new layer count) into a temporary directory under the evaluation work directory and lm-eval's
  `VLLM` loads them from there, in the model's dtype. The directory is deleted with the work
  directory after the run. `check_backend` fails before any model is loaded when vllm or CUDA is
  absent, naming what is missing. Budget forcing / thinking extension (think paradigm) need
  token-level control and run on `hf` only.
* `batch_size: "auto"`: on CUDA, handed to HFLM, which probes the largest batch that fits. On CPU
  that probe runs a full-context forward pass at batch 64 and down (minutes, and many GiB of RAM for
  an 8k-context model), and a bigger batch is not faster there, so "auto" resolves to
  `CPU_AUTO_BATCH_SIZE` (8, the default). Batch size is not part of the comparability key.
"""
from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

__all__ = ["CPU_AUTO_BATCH_SIZE", "BackendUnavailable", "check_backend", "fixed_batch_size",
           "make_vllm_lm", "resolve_batch_size", "save_for_vllm"]

logger = logging.getLogger(__name__)

CPU_AUTO_BATCH_SIZE = 8
VLLM_GPU_MEMORY_UTILIZATION = 0.6
"""Share of GPU memory vLLM may take: the pruned HF model stays resident for the efficiency probe."""


class BackendUnavailable(RuntimeError):
    """The configured evaluation back end cannot run on this worker; the message says why."""


def resolve_batch_size(batch_size: int | str, device: str) -> int | str:
    """The batch size handed to lm-eval: "auto" stays "auto" on CUDA, becomes 8 elsewhere."""
    if batch_size == "auto" and device != "cuda":
        logger.info("batch_size auto on %s: using %d (lm-eval's probe is for GPUs)", device, CPU_AUTO_BATCH_SIZE)
        return CPU_AUTO_BATCH_SIZE
    return batch_size


def fixed_batch_size(batch_size: int | str) -> int:
    """An integer batch size for code that cannot probe (task runners): "auto" -> 8."""
    return CPU_AUTO_BATCH_SIZE if batch_size == "auto" else int(batch_size)


def check_backend(backend: str, *, cuda: bool | None = None) -> None:
    """Raise BackendUnavailable when `backend` cannot run here (checked before loading the model)."""
    if backend == "hf":
        return
    if backend != "vllm":
        raise BackendUnavailable(f"unknown evaluation backend {backend!r}")
    if importlib.util.find_spec("vllm") is None:
        raise BackendUnavailable(
            "evaluation.backend 'vllm' needs the vllm package on the worker (an optional extra: "
            "`pip install vllm` on a CUDA worker); use backend 'hf' elsewhere"
        )
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    if not cuda:
        raise BackendUnavailable("evaluation.backend 'vllm' needs a CUDA GPU on the worker; this one has none "
                                 "(use backend 'hf')")


def save_for_vllm(model, tokenizer, directory: Path) -> Path:
    """The pruned model and tokenizer as a plain HF directory vLLM can load."""
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


def make_vllm_lm(model, tokenizer, batch_size: int | str, tracker, workdir: Path, dtype: str):
    """lm-eval's VLLM on the saved pruned weights, reporting progress like the HF path."""
    check_backend("vllm")
    from lm_eval.models.vllm_causallms import VLLM

    from backend.evaluation.scoring import cut_at_stop

    directory = save_for_vllm(model, tokenizer, workdir / "vllm-model")

    class TrackedVLLM(VLLM):
        think_control = None

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            tracker.begin_requests(len(requests))
            tracker.before_batch()
            return super().loglikelihood(requests, disable_tqdm=True)

        def generate_until(self, requests, disable_tqdm: bool = False):
            control = self.think_control
            if control is not None and getattr(control, "controlled", False):
                raise BackendUnavailable("thinking_budget / extend_thinking need evaluation.backend 'hf'")
            tracker.begin_requests(len(requests))
            tracker.before_batch()
            results = super().generate_until(requests, disable_tqdm=True)
            if control is not None:
                results = [cut_at_stop(r, control.stops, control.markers[1]) for r in results]
            return results

        def get_model_info(self) -> dict[str, Any]:
            return {}

    return TrackedVLLM(pretrained=str(directory), tokenizer=str(directory), dtype=dtype,
                       batch_size=batch_size, trust_remote_code=False,
                       gpu_memory_utilization=VLLM_GPU_MEMORY_UTILIZATION)
