"""The contract every pruning method implements, and the method registry."""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from backend.registry import Registry
from common.vocabulary import Family, ordered_families

if TYPE_CHECKING:  # torch stays out of import time
    from pathlib import Path

    import torch


class NoParams(BaseModel):
    """Methods without knobs besides `sparsity`."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class KeepEdgeLayers(BaseModel):
    """Decoder layers at both ends that a method leaves alone (the papers' "keep the first and last
    blocks" rules): `keep_first_layers` from the start, `keep_last_layers` from the end. The default,
    4 and 2, is the rule of Shortened LLaMA's Taylor+ and of LLM-Pruner's LLaMA recipe (blocks 4-29
    of 32 pruned)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    keep_first_layers: int = Field(4, ge=0, le=10_000)
    keep_last_layers: int = Field(2, ge=0, le=10_000)

    def prunable_layers(self, total: int, method: str) -> list[int]:
        """Indices of the layers the method may prune; ValueError when none is left."""
        layers = list(range(self.keep_first_layers, total - self.keep_last_layers))
        if not layers:
            raise ValueError(f"{method}: keep_first_layers {self.keep_first_layers} + keep_last_layers "
                             f"{self.keep_last_layers} leave no layer to prune in a {total}-layer model")
        return layers


@dataclass
class PruneReport:
    """What pruning did, measured on the pruned model (never the requested figures)."""

    method: str
    requested_sparsity: float
    achieved_sparsity: float
    """Fraction of zero weights over the linears the method prunes (or of layers, for depth)."""
    params_before: int
    params_after: int
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The report as stored with a run (`prune_report`): the figures, the removed parameters and
        the method's own details."""
        return {"method": self.method, "requested_sparsity": self.requested_sparsity,
                "achieved_sparsity": self.achieved_sparsity, "params_before": self.params_before,
                "params_after": self.params_after, "params_removed": self.params_before - self.params_after,
                **self.details}


class PruningMethod(abc.ABC):
    """A pruning method: `prune` changes the model in place and reports what it did.

    Class attributes: `name` (registry key), `family` (dense | unstructured | depth | width | dynamic),
    `Params` (pydantic model of method-specific knobs), `needs_calibration`, `description`, `layerwise`.
    """

    name: ClassVar[str]
    family: ClassVar[Family | str]
    """One of `common.vocabulary.FAMILIES`; a method may bring a new one (listed after them)."""
    description: ClassVar[str] = ""
    Params: ClassVar[type[BaseModel]] = NoParams
    needs_calibration: ClassVar[bool] = False
    sparsity_meaning: ClassVar[str] = "fraction of weights set to zero"
    layerwise: ClassVar[bool] = False
    """Prunes one decoder block at a time (`backend.pruning.sequential.replay_layers`) and runs nothing
    else on the accelerator, so the model's weights may stay on CPU (`backend.models.placement`: offload)."""

    @classmethod
    def check_sparsity(cls, sparsity: float) -> None:
        """Raise ValueError when the sparsity makes no sense for this method (before any work)."""

    @classmethod
    def check_params(cls, sparsity: float, params: BaseModel) -> None:
        """Raise ValueError when the sparsity and the validated params contradict each other."""

    @classmethod
    def vllm_unsupported(cls, params: BaseModel) -> str | None:
        """Why vLLM cannot evaluate what this method produces with these params (None: it can). Asked
        when a config is validated, so such a config is refused before any work."""
        return None

    @classmethod
    def uses_calibration(cls, params: BaseModel) -> bool:
        """Whether a run with these params needs calibration data (default: `needs_calibration`)."""
        return cls.needs_calibration

    # --- hooks: a method's own special cases, so the pipeline and the loaders name no method ---------

    @classmethod
    def check_run(cls, config: Any) -> None:
        """Raise ValueError when the run (a `backend.config.JobConfig`) cannot keep what this method
        produces, before any model is loaded (default: every run can)."""

    def before_evaluation(self, model: "torch.nn.Module") -> None:
        """Called on the pruned model right before it is evaluated (default: nothing)."""

    def after_evaluation(self, model: "torch.nn.Module") -> dict[str, Any]:
        """Details to add to the prune report once the model was evaluated (default: none)."""
        return {}

    @classmethod
    def is_saved_format(cls, directory: "Path") -> bool:
        """Whether `directory` holds a model saved in this method's own format, one that plain
        `from_pretrained` cannot rebuild (default: the method has none)."""
        return False

    @classmethod
    def load_saved(cls, directory: "Path", dtype: Any = None, device: str = "cpu") -> "torch.nn.Module":
        """Load a model in this method's saved format (asked only when `is_saved_format` is true)."""
        raise NotImplementedError(f"{cls.name} has no saved format of its own")

    @abc.abstractmethod
    def prune(
        self,
        model: "torch.nn.Module",
        sparsity: float,
        params: BaseModel,
        calibration: "torch.Tensor | None",
        progress: Callable[[float, str], None],
    ) -> PruneReport:
        """Prune `model` in place. `calibration` is a (num_samples, seq_len) token-id tensor or None.

        `progress(fraction, text)` reports progress within the pruning stage and may raise `Cancelled`.
        """


_METHODS: Registry[type[PruningMethod]] = Registry("pruning method", "backend.pruning")


def register_method(cls: type[PruningMethod]) -> type[PruningMethod]:
    if not issubclass(cls, PruningMethod):
        raise TypeError(f"{cls!r} is not a PruningMethod")
    return _METHODS.register(cls.name, cls)


def get_method(name: str) -> type[PruningMethod]:
    return _METHODS.get(name)


def list_methods() -> list[type[PruningMethod]]:
    return _METHODS.items()


def method_families() -> list[str]:
    """Families of the registered methods: `FAMILIES` order, then any new family a method brings."""
    return ordered_families({method.family for method in list_methods()})


def saved_format_method(directory: "Path") -> type[PruningMethod] | None:
    """The method whose own saved format `directory` holds (None: a plain `from_pretrained` model)."""
    return next((method for method in list_methods() if method.is_saved_format(directory)), None)
