"""Recovery fine-tuning: LoRA adapters trained on the pruned model, then merged into its weights.

Config (`recovery:` in the job config, `backend.config.RecoveryConfig`; absent = no recovery, so
existing run hashes are unchanged):

```yaml
recovery:
  enabled: true            # false: keep the section, skip the stage
  data: text               # text | task-aligned | self-generated | synthetic: built by backend.calibration.build
  path: wikitext2/train.txt   # text only; task/split for task-aligned and self-generated
  num_samples: 16          # training windows of seq_len tokens
  seq_len: 128
  batch_size: 2
  steps: 8                 # optimizer steps (small CPU default)
  learning_rate: 2.0e-4
  rank: 8
  alpha: 16
  dropout: 0.0
  target_modules: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]
  seed: 0
```

Lifecycle (`recover`): check `target_modules` against the model's linear modules (a name that
matches nothing is a ValueError naming `recovery.target_modules`) -> build the training windows with
`build_calibration` (self-generated text comes from the *pruned* model's tokenizer and the model given)
-> wrap with peft LoRA (seeded init) -> `steps` AdamW steps of next-token loss on batches drawn in
a seeded order (cycling through the windows) -> `merge_and_unload` (no peft module remains; the
parameter count is unchanged) -> re-apply the zero masks of weights that pruning zeroed (a merged
low-rank delta is dense, so unstructured / N:M sparsity would otherwise be lost; the loss after is
measured on the masked, merged model) -> the per-step losses and the loss on the first batch before and after
training, for the run's prune report (`recovery: {losses: [...], loss_before, loss_after, ...}`).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from backend.config import RecoveryConfig

if TYPE_CHECKING:
    import torch

__all__ = ["check_target_modules", "linear_module_names", "recover"]

logger = logging.getLogger(__name__)



def linear_module_names(model: "torch.nn.Module") -> list[str]:
    """Qualified names of every nn.Linear in the model."""
    from torch import nn

    return [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]


def check_target_modules(model: "torch.nn.Module", targets: tuple[str, ...] | list[str]) -> None:
    """Raise ValueError when a target (peft suffix semantics) matches no linear of the model."""
    names = linear_module_names(model)
    unknown = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if unknown:
        leaves = sorted({n.rsplit(".", 1)[-1] for n in names})
        raise ValueError(f"recovery.target_modules: {', '.join(unknown)} match no linear module of the model "
                         f"(linears: {', '.join(leaves)})")


def _zero_masks(model) -> dict[str, "torch.Tensor"]:
    """Non-zero masks of the linear weights that hold exact zeros (unstructured / N:M pruning)."""
    import torch
    from torch import nn

    masks = {}
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear) and not bool(torch.all(module.weight != 0)):
                masks[name] = module.weight != 0
    return masks


def _apply_masks(model, masks: dict[str, "torch.Tensor"]) -> int:
    """Zero again what pruning zeroed: a merged LoRA delta is dense and would undo the sparsity."""
    import torch

    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, mask in masks.items():
            modules[name].weight.mul_(mask.to(modules[name].weight.dtype))
    return len(masks)


def recover(
    model: "torch.nn.Module",
    tokenizer: Any,
    cfg: RecoveryConfig,
    data_dir: Path,
    *,
    fingerprint: str | None = None,
    paradigm: str = "instruct",
    progress: Callable[[float, str], None] = lambda fraction, text: None,
) -> tuple["torch.nn.Module", dict[str, Any]]:
    """Train LoRA adapters on `model`, merge them, and return (merged model, report).

    The merged model is the same object as `model` (peft injects and removes its layers in place).
    """
    import torch
    from peft import LoraConfig, get_peft_model

    from backend.calibration.build import build_calibration
    from backend.models.loading import count_parameters

    check_target_modules(model, cfg.target_modules)
    started = time.perf_counter()
    params_before = count_parameters(model)
    data = build_calibration(cfg.data_config(), tokenizer, data_dir, model=model, fingerprint=fingerprint,
                             paradigm=paradigm, progress=lambda f, text: progress(0.05 * f, text))
    windows = data.tensor
    device = next(model.parameters()).device
    requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    masks = _zero_masks(model)
    was_training = model.training

    with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]):
        torch.manual_seed(cfg.seed)
        lora = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                          target_modules=list(cfg.target_modules), bias="none", task_type="CAUSAL_LM")
        peft_model = get_peft_model(model, lora)
        trainable = [p for p in peft_model.parameters() if p.requires_grad]
        trainable_count = sum(p.numel() for p in trainable)
        optimizer = torch.optim.AdamW(trainable, lr=cfg.learning_rate, weight_decay=0.0)
        generator = torch.Generator().manual_seed(cfg.seed)
        order: list[int] = []
        batches = []
        for _ in range(cfg.steps):
            picked = []
            while len(picked) < min(cfg.batch_size, len(windows)):
                if not order:
                    order = torch.randperm(len(windows), generator=generator).tolist()
                picked.append(order.pop(0))
            batches.append(sorted(picked))

        def loss_on(indices: list[int]) -> "torch.Tensor":
            ids = windows[indices].to(device)
            return peft_model(input_ids=ids, labels=ids, use_cache=False).loss

        peft_model.eval()
        with torch.no_grad():
            loss_before = float(loss_on(batches[0]))
        peft_model.train()
        losses: list[float] = []
        for step, indices in enumerate(batches):
            optimizer.zero_grad(set_to_none=True)
            loss = loss_on(indices)
            if not torch.isfinite(loss):
                raise RuntimeError(f"recovery: loss is {float(loss)} at step {step + 1}")
            loss.backward()
            optimizer.step()
            losses.append(round(float(loss.detach()), 6))
            progress(0.05 + 0.9 * (step + 1) / cfg.steps,
                     f"recovery: step {step + 1}/{cfg.steps}, loss {losses[-1]:.4f}")
        merged = peft_model.merge_and_unload()
        restored = _apply_masks(merged, masks)
        merged.eval()
        with torch.no_grad():
            ids = windows[batches[0]].to(device)
            loss_after = float(merged(input_ids=ids, labels=ids, use_cache=False).loss)

    for name, p in merged.named_parameters():
        p.requires_grad_(requires_grad.get(name, False))
    merged.train(was_training)
    if not was_training:
        merged.eval()
    leftover = [n for n, m in merged.named_modules() if type(m).__module__.startswith("peft")]
    if leftover:
        raise RuntimeError(f"recovery: peft modules left after merging: {leftover[:3]}")
    params_after = count_parameters(merged)
    progress(1.0, f"recovery: merged, loss {loss_before:.4f} -> {loss_after:.4f}")
    report = {
        "losses": losses,
        "loss_before": round(loss_before, 6),
        "loss_after": round(loss_after, 6),
        "steps": cfg.steps,
        "data": data.source,
        "data_sha256": data.sha256,
        "rank": cfg.rank,
        "alpha": cfg.alpha,
        "target_modules": list(cfg.target_modules),
        "learning_rate": cfg.learning_rate,
        "batch_size": cfg.batch_size,
        "seq_len": cfg.seq_len,
        "seed": cfg.seed,
        "trainable_parameters": trainable_count,
        "params_before": params_before,
        "params_after": params_after,
        "merged": True,
        "sparsity_masks_reapplied": restored,
        "seconds": round(time.perf_counter() - started, 3),
    }
    logger.info("recovery: %d steps, loss %.4f -> %.4f", cfg.steps, loss_before, loss_after)
    return merged, report
