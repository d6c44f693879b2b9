"""Dynamic (router) pruning: per-token routers trained on calibration data decide which tokens run
which modules; skipped tokens really skip the compute (`routing.py`, `routed_block.py`: gather, run,
scatter, and the KV cache rules). `sparsity` is the target skip ratio in [0, 1): the share of routing
decisions that skip.

* `skipgpt-style` (after SkipGPT, Zhao et al. 2025): a router before every attention and every MLP;
  Gumbel-sigmoid straight-through training with a penalty pulling the skip ratio to the target; an
  optional LoRA restoration phase (`lora_steps` > 0) on the routed model, merged into the weights.
  Skipped tokens keep writing their K/V.
* `dllm-style` (after D-LLM, Jiang et al. 2024): one MLP router per block decides, per token, whether
  the whole block runs; the penalty targets the average ratio, so layers and tokens vary (dynamic
  ratio). `skipped_kv`: `evict` (default, D-LLM's KV-cache eviction: a token that skips a block
  writes no K/V there, and later tokens of that layer do not attend to it) or `keep` (it still
  writes its K/V, PruneBoard's earlier rule).
* `mod-style` (after Mixture-of-Depths, Raposo et al. 2024), `variant`:
  * `seed` (default; the seed study's MoD): two routers per block (attention and MLP), the first
    and the last decoder layer not routed, a routed module's output scaled by its router weight
    (sigmoid of the router logit), top-k per sequence (the top (1 - sparsity) share of each
    prompt's tokens runs, at training and inference; cached decoding runs every token, so only the
    prompt is routed); skipped tokens write no K/V (MoD's routed attention sees routed tokens only).
  * `causal-threshold` (PruneBoard's earlier MoD): one linear router per block; training routes
    the top (1 - sparsity) share of each sequence, an auxiliary loss teaches the score to predict
    top-k membership, and inference (prefill and decode) uses a causal threshold per layer
    calibrated to the capacity; skipped tokens keep writing their K/V.

After training, threshold routers are calibrated on the calibration tokens so the hard,
deterministic decisions skip the target share there (`training.calibrate_thresholds`); top-k routers
skip exactly that share per sequence and need no calibration. The report's `achieved_sparsity` is
the ratio measured on the calibration tokens; `details.calibration_skip` holds it per layer ({} for
a layer without routers), and the pipeline adds `details.evaluation_skip` (the same, counted while
the tasks were evaluated) with `evaluation_skip_report`. Routers add parameters, so `params_after`
> `params_before`. `details.variant` / `details.kv_cache` say which rules ran.

Not supported: saving the routed model (`keep_model`) or evaluating it with vLLM keep only the
weights, not the routers (vLLM is refused at submission).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from backend.pruning.base import PruneReport, PruningMethod, register_method

if TYPE_CHECKING:
    import torch

    from backend.pruning.dynamic.routing import RoutingPolicy

__all__ = ["DLLMStyle", "DynamicPruningMethod", "MoDStyle", "SkipGPTStyle", "evaluation_skip_report",
           "reset_skip_counters"]

KV_CACHE_RULES = {
    "keep": ("a token that skips an attention still writes its K/V to the cache (k_proj, v_proj, rotary), "
             "so later tokens attend to it as in the dense model; it skips q_proj, the attention and o_proj"),
    "evict": ("a token that skips an attention computes no K/V: its cache slot stays empty and is masked out, "
              "so later tokens of that layer do not attend to it (positions stay aligned; memory is not reclaimed)"),
}


class RouterTraining(BaseModel):
    """Training knobs every dynamic method shares; CPU-sized defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    steps: int = Field(30, ge=0, le=100_000)
    """Router training steps, one calibration batch each (cycling through the batches)."""
    lr: float = Field(0.05, gt=0.0, le=10.0)
    """Adam learning rate of the routers (the model's weights stay frozen)."""
    batch_size: int = Field(4, ge=1, le=1024)
    """Calibration sequences per step."""
    threshold_rounds: int = Field(12, ge=1, le=100)
    """Most forward passes over the calibration data spent finding the threshold shift after training
    (skipgpt-style, dllm-style; mod-style sets its per-layer thresholds in one pass)."""


class GumbelParams(RouterTraining):
    temperature: float = Field(1.0, gt=0.0, le=100.0)
    """Gumbel-sigmoid temperature of the training gates."""
    penalty: float = Field(10.0, ge=0.0, le=1e6)
    """Weight of (soft skip ratio - target)^2 in the training loss."""


class SkipGPTParams(GumbelParams):
    lora_steps: int = Field(0, ge=0, le=100_000)
    """LoRA restoration steps after router training; 0 (the CPU default) turns the phase off."""
    lora_rank: int = Field(8, ge=1, le=1024)
    lora_lr: float = Field(1e-4, gt=0.0, le=1.0)


class DLLMParams(GumbelParams):
    router_hidden: int = Field(64, ge=1, le=65_536)
    """Hidden width of each block's two-layer router."""
    skipped_kv: Literal["evict", "keep"] = "evict"
    """evict: a token that skips a block writes no K/V there and is not attended to (D-LLM); keep: it does."""


class MoDParams(RouterTraining):
    variant: Literal["seed", "causal-threshold"] = "seed"
    """seed: two routers per block, first and last layer not routed, router-weighted output, top-k per
    sequence (only the prompt routed); causal-threshold: one router per block, causal thresholds."""
    aux_weight: float = Field(1.0, ge=0.0, le=1e6)
    """causal-threshold only: weight of the BCE term that makes the causal score predict top-k membership."""


class DynamicPruningMethod(PruningMethod):
    """Install routers, train them on calibration data, calibrate their thresholds (see the module docstring)."""

    family = "dynamic"
    needs_calibration = True
    sparsity_meaning = "target skip ratio: share of per-token routing decisions that skip their module(s)"
    granularity: ClassVar[str]
    """"module": a router before each attention and each MLP; "block": one router per decoder block."""
    per_gate_thresholds: ClassVar[bool] = False

    @classmethod
    def check_run(cls, config: Any) -> None:
        if config.keep_model or config.evaluation.backend == "vllm":
            raise ValueError(f"{cls.name}: routers live in the Python model only; keep_model and the vllm backend "
                             "would keep the weights without them (use the hf backend, keep_model: false)")

    def before_evaluation(self, model: "torch.nn.Module") -> None:
        reset_skip_counters(model)  # routers count their decisions during the evaluation only

    def after_evaluation(self, model: "torch.nn.Module") -> dict[str, Any]:
        return {"evaluation_skip": evaluation_skip_report(model)}

    def layout(self, params: BaseModel) -> str:
        """The routers' granularity with these params (default: the class's)."""
        return self.granularity

    def policy(self, sparsity: float, params: BaseModel) -> "RoutingPolicy":
        """What the routers' scores decide (default: causal thresholds, skipped tokens keep their K/V)."""
        from backend.pruning.dynamic.routing import RoutingPolicy

        return RoutingPolicy()

    def exempt_layers(self, params: BaseModel, total: int) -> tuple[int, ...]:
        """Decoder layers left without routers (default: none)."""
        return ()

    def variant(self, params: BaseModel) -> str | None:
        """The named variant these params select, for the report (None: the method has one)."""
        return None

    @classmethod
    def check_sparsity(cls, sparsity: float) -> None:
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(f"{cls.name}: the target skip ratio must be in [0, 1), got {sparsity}")

    @classmethod
    def vllm_unsupported(cls, params: BaseModel) -> str | None:
        return "its routers are not part of the saved weights, so vLLM would evaluate the dense model"

    def router_hidden(self, params: BaseModel) -> int:
        return 0

    def gate_factory(self, sparsity: float, params: BaseModel):
        from backend.pruning.dynamic.training import gumbel_gate

        return lambda stats: gumbel_gate(stats, params.temperature)

    def extra_loss(self, sparsity: float, params: BaseModel):
        import torch

        return lambda stats: params.penalty * (torch.stack(stats["skip"]).mean() - sparsity) ** 2

    def restore(self, model, calibration, params, progress) -> dict[str, Any]:
        """Optional phase after threshold calibration; returns report details."""
        return {}

    def prune(
        self,
        model: "torch.nn.Module",
        sparsity: float,
        params: BaseModel | None,
        calibration: "torch.Tensor | None",
        progress: Callable[[float, str], None],
    ) -> PruneReport:
        from backend.models.loading import count_parameters
        from backend.pruning.dynamic.routed_block import install_routing
        from backend.pruning.dynamic.routing import check_structure, decode_flops
        from backend.pruning.dynamic.training import calibrate_thresholds, measure_skip, train_routers
        from backend.pruning.layers import get_decoder_layers

        self.check_sparsity(sparsity)
        params = self.Params() if params is None else params
        if calibration is None:
            raise ValueError(f"{self.name} needs calibration data to train its routers")
        check_structure(model, self.name)
        params_before = count_parameters(model)
        policy = self.policy(sparsity, params)
        exempt = self.exempt_layers(params, len(get_decoder_layers(model)))
        install_routing(model, self.layout(params), self.router_hidden(params), self.name, policy, exempt)
        losses = train_routers(model, calibration, self.gate_factory(sparsity, params),
                               self.extra_loss(sparsity, params), params.steps, params.lr, params.batch_size,
                               lambda f, text: progress(0.75 * f, f"{self.name}: {text}"))

        def calibrate(start: float, end: float) -> dict[str, Any]:
            if policy.selection == "top-k":  # exact per sequence: only measured
                return measure_skip(model, calibration, params.batch_size)
            return calibrate_thresholds(model, calibration, sparsity, self.per_gate_thresholds, params.batch_size,
                                        params.threshold_rounds,
                                        lambda f, text: progress(start + (end - start) * f, f"{self.name}: {text}"))

        ratios = calibrate(0.75, 0.85)
        extra = self.restore(model, calibration, params, progress)
        if extra:
            ratios = calibrate(0.95, 1.0)
        flops = decode_flops(model, ratios)
        progress(1.0, f"{self.name}: calibration skip ratio {ratios['overall']}")
        return PruneReport(
            method=self.name,
            requested_sparsity=sparsity,
            achieved_sparsity=ratios["overall"],
            params_before=params_before,
            params_after=count_parameters(model),
            details={
                **({"variant": self.variant(params)} if self.variant(params) else {}),
                "granularity": self.layout(params),
                "routed_layers": [i for i in range(len(get_decoder_layers(model))) if i not in exempt],
                "selection": policy.selection,
                "router_weighted_output": policy.scale_by_router,
                "target_skip_ratio": sparsity,
                "calibration_skip": ratios,
                "calibration_ideal_speedup": round(flops["dense"] / flops["routed"], 4),
                "router_params": count_parameters(model) - params_before,
                "router_train_loss": {"first": losses[0], "last": losses[-1]} if losses else None,
                "kv_cache": KV_CACHE_RULES["evict" if policy.evict_skipped_kv else "keep"],
                **extra,
            },
        )


@register_method
class SkipGPTStyle(DynamicPruningMethod):
    name = "skipgpt-style"
    description = "per-token routers before every attention and MLP, Gumbel straight-through training (SkipGPT-style)"
    Params = SkipGPTParams
    granularity = "module"

    def restore(self, model, calibration, params, progress) -> dict[str, Any]:
        if not params.lora_steps:
            return {}
        from backend.pruning.dynamic.training import lora_restore

        losses = lora_restore(model, calibration, params.lora_steps, params.lora_rank, params.lora_lr,
                              params.batch_size, lambda f, text: progress(0.85 + 0.1 * f, f"{self.name}: {text}"))
        return {"lora_restoration": {"steps": params.lora_steps, "rank": params.lora_rank,
                                     "loss_first": losses[0], "loss_last": losses[-1], "merged": True}}


@register_method
class DLLMStyle(DynamicPruningMethod):
    name = "dllm-style"
    description = ("per-block token-level execution decisions with a dynamic ratio, skipped tokens' K/V evicted "
                   "(D-LLM-style)")
    Params = DLLMParams
    granularity = "block"

    def router_hidden(self, params: BaseModel) -> int:
        return params.router_hidden

    def policy(self, sparsity: float, params: BaseModel) -> "RoutingPolicy":
        from backend.pruning.dynamic.routing import RoutingPolicy

        return RoutingPolicy(evict_skipped_kv=params.skipped_kv == "evict")


@register_method
class MoDStyle(DynamicPruningMethod):
    name = "mod-style"
    description = ("Mixture-of-Depths top-k capacity routing: attention and MLP routers, first and last layer "
                   "unrouted, router-weighted output (variant seed), or causal per-block thresholds")
    Params = MoDParams
    granularity = "block"
    per_gate_thresholds = True

    def layout(self, params: BaseModel) -> str:
        return "module" if params.variant == "seed" else "block"

    def variant(self, params: BaseModel) -> str | None:
        return params.variant

    def policy(self, sparsity: float, params: BaseModel) -> "RoutingPolicy":
        from backend.pruning.dynamic.routing import RoutingPolicy

        if params.variant == "seed":
            return RoutingPolicy(selection="top-k", capacity=1.0 - sparsity, scale_by_router=True,
                                 evict_skipped_kv=True)
        return RoutingPolicy()

    def exempt_layers(self, params: BaseModel, total: int) -> tuple[int, ...]:
        return (0, total - 1) if params.variant == "seed" else ()

    def gate_factory(self, sparsity: float, params: BaseModel):
        from backend.pruning.dynamic.training import topk_gate, weighted_topk_gate

        if params.variant == "seed":
            return lambda stats: weighted_topk_gate(stats, 1.0 - sparsity)
        return lambda stats: topk_gate(stats, 1.0 - sparsity)

    def extra_loss(self, sparsity: float, params: BaseModel):
        import torch

        if params.variant == "seed":  # the language-model loss alone trains the router weights
            return lambda stats: torch.zeros(())
        return lambda stats: params.aux_weight * torch.stack(stats["aux"]).mean()


def reset_skip_counters(model: "torch.nn.Module") -> None:
    """Zero the routers' decision counters (before an evaluation)."""
    from backend.pruning.dynamic.routing import reset_counters

    reset_counters(model)


def evaluation_skip_report(model: "torch.nn.Module") -> dict[str, Any]:
    """Skip ratios counted since the last reset, per layer and overall, with the ideal decode speed-up
    they imply (FLOPs, lm_head included; see `routing.decode_flops`)."""
    from backend.pruning.dynamic.routing import decode_flops, skip_ratios

    ratios = skip_ratios(model)
    if not ratios["decisions"]:
        return {**ratios, "ideal_speedup": None}
    flops = decode_flops(model, ratios)
    return {**ratios, "ideal_speedup": round(flops["dense"] / flops["routed"], 4)}
