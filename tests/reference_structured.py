"""Plain, slow, independently written reference implementations of the structured methods' selection rules.

Written from the papers' official code (ShortGPT's reference script, SLEB, Shortened LLaMA's Taylor+,
FLAP's AL-AM/WIFV, LLM-Pruner's block-wise Taylor importances) and the documented choices of
PruneBoard's methods (tie-break to the lower index, `loss_stride`, the earlier variants kept as
params), never calling `backend.pruning`: every score comes from full forwards of the unmodified
model (blocks swapped out of `model.model.layers` for a removal), gradients from `torch.autograd.grad`
over the whole calibration batch (or one sequence at a time for the Fisher term), activations from
forward hooks. Used by tests/test_structured_reference.py to check what the project's exports pick.
"""
from __future__ import annotations

import contextlib
import copy
import math

import torch
import torch.nn.functional as F
from torch import nn


@contextlib.contextmanager
def without_blocks(model: nn.Module, drop: list[int] | set[int]):
    """The model with decoder blocks `drop` (original indices) taken out, for full forwards only."""
    layers = model.model.layers
    model.model.layers = nn.ModuleList([layer for i, layer in enumerate(layers) if i not in set(drop)])
    try:
        yield model
    finally:
        model.model.layers = layers


def strided_ppl(model: nn.Module, ids: torch.Tensor, loss_stride: int = 1) -> float:
    """exp(mean NLL) over the predictions at positions stride-1, 2*stride-1, ... (predicting the next token)."""
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False).logits.double()
    positions = list(range(loss_stride - 1, ids.shape[1] - 1, loss_stride))
    total, count = 0.0, 0
    for pos in positions:
        logp = torch.log_softmax(logits[:, pos], dim=-1)
        total -= float(logp.gather(1, ids[:, pos + 1:pos + 2]).sum())
        count += ids.shape[0]
    return math.exp(total / count)


def lowest(scores: list[float], count: int) -> list[int]:
    return sorted(sorted(range(len(scores)), key=lambda i: (scores[i], i))[:count])


# --- depth -------------------------------------------------------------------------------------------


def shortgpt_scores(model: nn.Module, ids: torch.Tensor, last_block_output: str = "final-norm") -> list[float]:
    """Block Influence 1 - mean cos(h_in, h_out). `final-norm`: consecutive entries of
    `output_hidden_states`, as ShortGPT's script computes (the last entry is the final norm's output);
    `raw`: the last block's output is taken before the final norm, from a pre-hook on it."""
    final: list[torch.Tensor] = []
    handle = model.model.norm.register_forward_pre_hook(lambda module, args: final.append(args[0]))
    try:
        with torch.no_grad():
            states = list(model(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states)
    finally:
        handle.remove()
    count = len(model.model.layers)
    inputs = states[:count]
    outputs = states[1:] if last_block_output == "final-norm" else states[1:count] + [final[0]]
    return [1.0 - float(F.cosine_similarity(a.double(), b.double(), dim=-1).mean()) for a, b in zip(inputs, outputs)]


def ppl_without_each(model: nn.Module, ids: torch.Tensor, loss_stride: int = 1) -> list[float]:
    """Shortened-PPL: perplexity of the whole model with block i removed, for each i (a full forward each)."""
    scores = []
    for i in range(len(model.model.layers)):
        with without_blocks(model, [i]):
            scores.append(strided_ppl(model, ids, loss_stride))
    return scores


def sleb_order(model: nn.Module, ids: torch.Tensor, count: int, loss_stride: int = 1) -> list[int]:
    """SLEB, naively: each round a full forward per remaining candidate; remove the cheapest, repeat."""
    removed: list[int] = []
    for _ in range(count):
        best, best_ppl = None, math.inf
        for i in range(len(model.model.layers)):
            if i in removed:
                continue
            with without_blocks(model, removed + [i]):
                ppl = strided_ppl(model, ids, loss_stride)
            if ppl < best_ppl:
                best, best_ppl = i, ppl
        removed.append(best)
    return removed


def taylor_block_scores(model: nn.Module, ids: torch.Tensor, aggregate: str = "weight") -> list[float]:
    """Shortened-Taylor: sum |w * dL/dw| (the official code, `weight`) or |sum w * dL/dw| (`block`) per
    block, L the mean next-token loss of the whole calibration batch, gradients by one autograd.grad call."""
    blocks = [list(layer.parameters()) for layer in model.model.layers]
    flat = [p for group in blocks for p in group]
    with torch.enable_grad():
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        grads = torch.autograd.grad(loss, flat, allow_unused=True)
    by_param = {id(p): g for p, g in zip(flat, grads)}
    scores = []
    for group in blocks:
        terms = [(p.detach().double() * by_param[id(p)].double()) for p in group if by_param[id(p)] is not None]
        if aggregate == "block":
            scores.append(abs(sum(float(t.sum()) for t in terms)))
        else:
            scores.append(sum(float(t.abs().sum()) for t in terms))
    return scores


def taylor_plus_removed(scores: list[float], count: int, keep_first: int = 4, keep_last: int = 2) -> list[int]:
    """Shortened LLaMA's block_prune.py: the unimportance order (ascending score) without the first
    `keep_first` and the last `keep_last` blocks, its first `count` entries."""
    order = sorted(range(len(scores)), key=lambda i: (scores[i], i))
    protected = set(range(keep_first)) | set(range(len(scores) - keep_last, len(scores)))
    return sorted([i for i in order if i not in protected][:count])


# --- width -------------------------------------------------------------------------------------------


def _shapes(model: nn.Module) -> dict:
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    rep = config.num_attention_heads // config.num_key_value_heads
    hidden = config.hidden_size
    group_cost = head_dim * rep * hidden * 2 + head_dim * hidden * 2  # q rows, o columns, k rows, v rows (no biases)
    return {"head_dim": head_dim, "rep": rep, "groups": config.num_key_value_heads, "hidden": hidden,
            "channels": config.intermediate_size, "group_cost": group_cost, "channel_cost": 3 * hidden}


def block_param_count(model: nn.Module) -> int:
    return sum(p.numel() for layer in model.model.layers for p in layer.parameters())


def flap_plan(model: nn.Module, ids: torch.Tensor, sparsity: float, bias_compensation: bool = True,
              standardize: str = "per-layer") -> dict:
    """FLAP: fluctuation Var(x_j) * ||W[:, j]||^2 of o_proj / down_proj inputs. `per-layer` (FLAP's
    prune_flap, AL-AM with WIFV): the attention metric squared, each layer's columns standardised
    (torch.std over that layer's row of the stacked metrics), a head group the mean of its columns'
    z; each layer's MLP channels standardised alike. `per-module-type`: a head group the sum of its
    columns' metric, then all head groups standardised together, and all MLP channels together. Units
    removed lowest first across layers until the parameter target (new bias vectors included) is met,
    skipping a unit that overshoots by more than half its size or would empty its layer's module.

    Returns {"groups": {layer: [removed head groups]}, "channels": {layer: [removed channels]},
    "o_bias": {layer: vector}, "down_bias": {layer: vector}}.
    """
    s = _shapes(model)
    layers = model.model.layers
    seen: dict[str, list[torch.Tensor]] = {}
    handles = []
    for i, layer in enumerate(layers):
        for name, module in (("o", layer.self_attn.o_proj), ("down", layer.mlp.down_proj)):
            key = f"{name}{i}"
            seen[key] = []
            handles.append(module.register_forward_hook(
                lambda m, args, out, key=key: seen[key].append(args[0].detach().reshape(-1, args[0].shape[-1]))))
    try:
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    x = {key: torch.cat(values).double() for key, values in seen.items()}
    width = s["rep"] * s["head_dim"]
    attn_cols = torch.stack([x[f"o{i}"].var(dim=0, unbiased=False)
                             * layer.self_attn.o_proj.weight.double().pow(2).sum(0) for i, layer in enumerate(layers)])
    mlp_cols = torch.stack([x[f"down{i}"].var(dim=0, unbiased=False)
                            * layer.mlp.down_proj.weight.double().pow(2).sum(0) for i, layer in enumerate(layers)])
    if standardize == "per-layer":
        def per_row(metric):  # FLAP's `standarlization`
            return (metric - metric.mean(dim=1, keepdim=True)) / metric.std(dim=1, keepdim=True)

        z_attn = per_row(attn_cols.pow(2)).reshape(len(layers), s["groups"], width).mean(dim=2).tolist()
        z_mlp = per_row(mlp_cols).tolist()
    else:
        def standardise(rows):
            flat = torch.tensor([v for row in rows for v in row], dtype=torch.float64)
            return [[(v - float(flat.mean())) / float(flat.std()) for v in row] for row in rows]

        attn_scores = [[float(row[g * width:(g + 1) * width].sum()) for g in range(s["groups"])] for row in attn_cols]
        z_attn, z_mlp = standardise(attn_scores), standardise(mlp_cols.tolist())
    units = []  # (z, unit number, kind, layer, index, cost)
    for i in range(len(layers)):
        for g in range(s["groups"]):
            units.append(["attn", i, g, s["group_cost"], z_attn[i][g]])
        for c in range(s["channels"]):
            units.append(["mlp", i, c, s["channel_cost"], z_mlp[i][c]])
    order = sorted(range(len(units)), key=lambda u: (units[u][4], u))
    target = round(sparsity * block_param_count(model))

    def select(budget):
        left = {("attn", i): s["groups"] for i in range(len(layers))}
        left.update({("mlp", i): s["channels"] for i in range(len(layers))})
        removed, taken = 0, []
        for u in order:
            kind, i, _, cost, _ = units[u]
            if removed >= budget:
                break
            if removed + cost > budget and 2 * (removed + cost - budget) > cost:
                continue
            if left[(kind, i)] <= 1:
                continue
            left[(kind, i)] -= 1
            taken.append(u)
            removed += cost
        return taken

    extra = 0
    for _ in range(5):
        taken = select(target + extra)
        touched = {(units[u][0], units[u][1]) for u in taken}
        needed = s["hidden"] * len(touched) if bias_compensation else 0
        if needed == extra:
            break
        extra = needed
    groups: dict[int, list[int]] = {}
    channels: dict[int, list[int]] = {}
    for u in taken:
        kind, i, index, _, _ = units[u]
        (groups if kind == "attn" else channels).setdefault(i, []).append(index)
    o_bias, down_bias = {}, {}
    if bias_compensation:
        for i, layer in enumerate(layers):
            if groups.get(i):
                cols = [c for g in groups[i] for c in range(g * width, (g + 1) * width)]
                o_bias[i] = layer.self_attn.o_proj.weight.double()[:, cols] @ x[f"o{i}"].mean(0)[cols]
            if channels.get(i):
                cols = channels[i]
                down_bias[i] = layer.mlp.down_proj.weight.double()[:, cols] @ x[f"down{i}"].mean(0)[cols]
    return {"groups": {i: sorted(v) for i, v in groups.items()}, "channels": {i: sorted(v) for i, v in channels.items()},
            "o_bias": o_bias, "down_bias": down_bias, "z_attn": z_attn, "z_mlp": z_mlp}


def _group_vectors(model: nn.Module, matrices: list[torch.Tensor], kind: str, unit: int) -> list[torch.Tensor]:
    """The weight vectors (rows of q/k/v/gate/up, columns of o/down) of one head group or MLP channel,
    taken from per-matrix tensors `matrices` = [q, k, v, o, gate, up, down] of one layer."""
    s = _shapes(model)
    q, k, v, o, gate, up, down = matrices
    if kind == "attn":
        qw, kw = s["rep"] * s["head_dim"], s["head_dim"]
        q_rows, kv_rows = range(unit * qw, (unit + 1) * qw), range(unit * kw, (unit + 1) * kw)
        return [q[r] for r in q_rows] + [k[r] for r in kv_rows] + [v[r] for r in kv_rows] + [o[:, c] for c in q_rows]
    return [gate[unit], up[unit], down[:, unit]]


def llm_pruner_importance(model: nn.Module, ids: torch.Tensor, importance: str = "element1",
                          layers: list[int] | None = None) -> tuple[list[list[float]], list[list[float]]]:
    """LLM-Pruner's block-wise Taylor importance (hf_prune.py + TaylorImportance, group reduction sum),
    per layer: head groups (q/k/v rows + o columns of one KV head and its query heads) and MLP channels
    (gate/up rows + down column). With s = w * dL/dw (L the mean next-token loss of the whole batch,
    one autograd.grad call): `element1` (param_first) sum |s|; `element2` (param_mix) sum |s - 1/2 w^2 F|,
    F the mean over sequences of each sequence's squared gradient (one autograd.grad per sequence);
    `vector` (vectorize) the sum over the group's weight vectors of |sum s|; `whole-group` |sum s| over
    the whole group. Only `layers` are scored (default: all)."""
    count = len(model.model.layers)
    layers = list(range(count)) if layers is None else layers
    s = _shapes(model)
    mats = []
    for layer in model.model.layers:
        a, m = layer.self_attn, layer.mlp
        mats.append([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight, a.o_proj.weight,
                     m.gate_proj.weight, m.up_proj.weight, m.down_proj.weight])
    flat = [w for row in mats for w in row]
    with torch.enable_grad():
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        grads = torch.autograd.grad(loss, flat)
    salience = [w.detach().double() * g.double() for w, g in zip(flat, grads)]
    if importance == "element2":
        fisher = [torch.zeros_like(w, dtype=torch.float64) for w in flat]
        for row in ids:
            with torch.enable_grad():
                one = model(input_ids=row[None], labels=row[None], use_cache=False).loss
                for f, g in zip(fisher, torch.autograd.grad(one, flat)):
                    f += g.double().pow(2) / ids.shape[0]
        salience = [sal - 0.5 * w.detach().double().pow(2) * f for sal, w, f in zip(salience, flat, fisher)]
    heads, channels = [], []
    for i in layers:
        per_layer = salience[7 * i:7 * i + 7]

        def score(kind, unit):
            vectors = _group_vectors(model, per_layer, kind, unit)
            if importance in ("element1", "element2"):
                return sum(float(vec.abs().sum()) for vec in vectors)
            if importance == "vector":
                return sum(abs(float(vec.sum())) for vec in vectors)
            return abs(sum(float(vec.sum()) for vec in vectors))

        heads.append([score("attn", g) for g in range(s["groups"])])
        channels.append([score("mlp", c) for c in range(s["channels"])])
    return heads, channels


def llm_pruner_per_layer_counts(model: nn.Module, sparsity: float, pruned: int | None = None) -> tuple[int, list[int]]:
    """(head groups removed per pruned layer, channels removed per pruned layer) of the per-layer plan:
    the target is round(sparsity x all block parameters), taken from the `pruned` layers (default: all);
    one ratio r = target / their removable parameters; round(r x groups) head groups per layer, then
    MLP channels (spread evenly, earlier layers take the remainder) for the rest of the target."""
    s = _shapes(model)
    count = len(model.model.layers) if pruned is None else pruned
    target = round(sparsity * block_param_count(model))
    removable = count * (s["groups"] * s["group_cost"] + s["channels"] * s["channel_cost"])
    heads = round(target / removable * s["groups"])
    channels = round((target - count * heads * s["group_cost"]) / s["channel_cost"])
    return heads, [channels // count + (1 if i < channels % count else 0) for i in range(count)]


def llm_pruner_global_counts(model: nn.Module, sparsity: float) -> tuple[int, int]:
    """(head groups, MLP channels) removed in total by the global plan: the same ratio r = target /
    removable parameters as per-layer, so round(r x all head groups) head groups, then as many channels
    as bring the total nearest the target (so it lands within half a channel of it)."""
    s = _shapes(model)
    count = len(model.model.layers)
    target = round(sparsity * block_param_count(model))
    removable = count * (s["groups"] * s["group_cost"] + s["channels"] * s["channel_cost"])
    heads = round(target / removable * count * s["groups"])
    return heads, round((target - heads * s["group_cost"]) / s["channel_cost"])


def global_candidates(scores: list[list[float]]) -> list[tuple[int, int]]:
    """(layer, index) of every unit the global scope may remove, layer-major: all but the most important
    unit of each layer. Reproduces the documented rule "every layer keeps at least one head group and one
    channel" as a constraint on the set rather than a walk: removing the `count` lowest candidates is what
    walking all units lowest first and skipping a layer's last unit gives, since the unit skipped is the
    layer's last in that order (among tied maxima the higher index, ties going to the lower index)."""
    candidates = []
    for layer, row in enumerate(scores):
        kept = max(range(len(row)), key=lambda i: (row[i], i))
        candidates.extend((layer, i) for i in range(len(row)) if i != kept)
    return candidates


def kept_rows(dense: torch.Tensor, pruned: torch.Tensor, block: int = 1) -> list[int]:
    """Which `block`-row chunks of `dense` survive, in order, in `pruned` (exact copies)."""
    index = {dense[i:i + block].numpy().tobytes(): i // block for i in range(0, dense.shape[0], block)}
    return [index[pruned[i:i + block].numpy().tobytes()] for i in range(0, pruned.shape[0], block)]


# --- SliceGPT ------------------------------------------------------------------------------------------


class ProjectedModel:
    """SliceGPT's sliced model expressed in the original coordinates: at each of the 2L+1 residual
    positions (block inputs, post-attention residuals, final norm input) the stream is projected onto
    the span of the top-d eigenvectors (torch.linalg.eigh) of sum_t x_t x_t^T of the calibration
    activations there, computed in float64 with every earlier projection already applied. The sliced
    model computes the same function (RMSNorm commutes with the rotation; its norm-scale correction
    keeps the scale), so its logits must match; comparing projections avoids eigenvector signs."""

    def __init__(self, model: nn.Module, calibration: torch.Tensor, sparsity: float):
        self.model = copy.deepcopy(model).double().eval()
        hidden = self.model.config.hidden_size
        self.dim = hidden - round(sparsity * hidden)
        self.projections: dict[tuple[int, str], torch.Tensor] = {}
        self._fitting = True
        with self._hooks(), torch.no_grad():
            self.model(input_ids=calibration, use_cache=False)
        self._fitting = False

    def _project(self, key, x: torch.Tensor) -> torch.Tensor:
        if self._fitting and key not in self.projections:
            flat = x.reshape(-1, x.shape[-1]).double()
            values, vectors = torch.linalg.eigh(flat.t() @ flat)
            top = vectors[:, torch.argsort(values, descending=True)[:self.dim]]
            self.projections[key] = top @ top.t()
        return x @ self.projections[key]

    @contextlib.contextmanager
    def _hooks(self):
        handles = []
        entering: dict[int, torch.Tensor] = {}
        for i, layer in enumerate(self.model.model.layers):
            def pre(module, args, kwargs, i=i):
                x = self._project((i, "in"), args[0] if args else kwargs["hidden_states"])
                entering[i] = x
                if args:
                    return (x, *args[1:]), kwargs
                return args, {**kwargs, "hidden_states": x}

            def after_attention(module, args, out, i=i):
                attn = out[0] if isinstance(out, tuple) else out
                mid = self._project((i, "mid"), entering[i] + attn)
                new = mid - entering[i]  # the layer adds the residual back: its sum is the projected stream
                return (new, *out[1:]) if isinstance(out, tuple) else new

            def after_block(module, args, kwargs, out, i=i):
                h = out[0] if isinstance(out, tuple) else out
                h = self._project((i, "out"), h)
                return (h, *out[1:]) if isinstance(out, tuple) else h

            handles.append(layer.register_forward_pre_hook(pre, with_kwargs=True))
            handles.append(layer.self_attn.register_forward_hook(after_attention))
            handles.append(layer.register_forward_hook(after_block, with_kwargs=True))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        with self._hooks(), torch.no_grad():
            return self.model(input_ids=ids, use_cache=False).logits
