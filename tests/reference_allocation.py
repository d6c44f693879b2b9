"""A plain, independently written re-derivation of OWL's layer sparsities (luuyin/OWL `lib/prune_all.py`,
`prune_wanda_outlier`), never calling `backend.pruning`.

Per decoder layer, the Wanda metric |W_ij| x ||X_j||_2 of every linear of the layer (X: the layer's
inputs in a forward of the dense model, captured with hooks), concatenated; the outlier ratio is the
percentage of entries above `hyper_m` x their mean (`check_outlier_mean`). The ratios are min-max
scaled to [0, 2 lambda], centred, and added to the target density 1 - s; each layer's sparsity is one
minus its density.
"""
from __future__ import annotations

import torch
from torch import nn


def owl_layer_sparsity(model: nn.Module, ids: torch.Tensor, sparsity: float, hyper_m: float = 5.0,
                       lamda: float = 0.08) -> list[float]:
    inputs: dict[str, list[torch.Tensor]] = {}
    handles = []
    for i, layer in enumerate(model.model.layers):
        for name, module in layer.named_modules():
            if isinstance(module, nn.Linear):
                key = f"{i}.{name}"
                inputs[key] = []
                handles.append(module.register_forward_hook(lambda mod, args, out, key=key: inputs[key].append(
                    args[0].detach().reshape(-1, args[0].shape[-1]))))
    try:
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    ratios = []
    for i, layer in enumerate(model.model.layers):
        metrics = []
        for name, module in layer.named_modules():
            if isinstance(module, nn.Linear):
                norms = torch.cat(inputs[f"{i}.{name}"]).double().norm(dim=0)
                metrics.append((module.weight.detach().double().abs() * norms[None, :]).flatten())
        metric = torch.cat(metrics)
        ratios.append(float((metric > hyper_m * metric.mean()).sum()) / metric.numel() * 100)
    low, high = min(ratios), max(ratios)
    scaled = [(r - low) * (1 / (high - low) * lamda * 2) for r in ratios]
    mean = sum(scaled) / len(scaled)
    density = [r - mean + (1 - sparsity) for r in scaled]
    return [1 - d for d in density]
