"""`slicegpt`: width pruning by rotating and slicing the residual stream (Ashkboos et al. 2024,
https://arxiv.org/abs/2401.15024).

Lifecycle (`slice_model`):

1. **Untie** lm_head from embed_tokens when they share a tensor (SmolLM2 and the tiny models do):
   the embedding is rotated on its output side and lm_head on its input side with a *different*
   basis (first vs last residual position), so one tensor cannot serve both. `config.tie_word_embeddings`
   is set to False so `save_pretrained` writes both matrices and loaders never re-tie them.
2. **Fuse RMSNorm scales** into the linears that read the norm's output: `input_layernorm` -> q/k/v,
   `post_attention_layernorm` -> gate/up, the final `model.norm` -> lm_head (W <- W diag(g)); the norms'
   weights become ones. A scale-free RMSNorm only divides by the vector's norm, so it commutes with
   any orthogonal Q: norm(x Q) = norm(x) Q.
3. **Rotate and slice, block by block** with calibration activations. The residual stream has 2L+1
   positions: p = 2i is block i's input (attention side), p = 2i+1 its post-attention residual (MLP
   side), p = 2L the final norm's input. For each position, Q_p holds the eigenvectors of the
   (uncentred) covariance sum_t x_t x_tᵀ of the residual vectors there, by decreasing eigenvalue, computed
   on the activations of the *already sliced* earlier blocks (as in the paper, so slicing errors are
   seen by later bases). The stream at p is stored as z_p = x_p Q_p[:, :d_p]: d_p = D - round(s·D)
   leading directions are kept, the rest deleted. Linears that read the stream get W <- W Q_p[:, :d_p]
   (q/k/v, gate/up, lm_head; embed_tokens E <- E Q_0[:, :d_0]); linears that write into it get
   W <- Q_qᵀ[:d_q, :] W (o_proj, down_proj, and their bias b <- b Q_q).
4. **Shortcuts.** The residual add of block i crosses two positions with different bases, so the
   skip connection carries S = Q_p[:, :d_p]ᵀ Q_q[:, :d_q] (a d_p x d_q matrix): the decoder layer is
   replaced by `SlicedDecoderLayer`, which applies `attn_shortcut` (p=2i -> 2i+1) and `mlp_shortcut`
   (2i+1 -> 2i+2) as bias-free linears on the residual path. They cost 2·L·d² parameters, which the
   report counts (params_after is measured on the model).
5. RMSNorm over d_p < D entries divides by sqrt(|x|²/d_p + eps) instead of sqrt(|x|²/D + eps); each norm's
   weight is therefore set to the constant sqrt(D/d_p) and its epsilon to eps·D/d_p (unchanged at 0 %
   slicing), so it computes exactly the original norm of the rotated vector (eps included: SmolLM2's
   residual stream is small enough for eps to matter).

`sparsity` is the fraction of the hidden dimension D sliced away (the same d at every position).
At sparsity 0 the model computes the dense function (up to float rounding): tests check this.

Save and reload: the sliced shapes are recorded in `config.slicegpt` ({"hidden_size": D, "dims": [d_0..d_2L]}),
which `save_pretrained` writes into config.json. `AutoModelForCausalLM.from_pretrained` cannot
build the shortcut modules, so use `load_sliced(dir)` (model and tokenizer), or
`restore_sliced_structure(model, config.slicegpt)` on a freshly built dense model before loading the
state dict. `backend.models.loading.load_model` on such a directory goes through `load_sliced` too.

Supported: Llama-style blocks (`input_layernorm`, `self_attn.{q,k,v,o}_proj`, `post_attention_layernorm`,
`mlp.{gate,up,down}_proj`) with RMSNorm `weight * x / rms` (Llama, Mistral, Qwen2, Qwen3; Qwen3's
per-head q/k norms act after q/k_proj and are untouched). Gemma's (1 + weight) norms are refused.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from pydantic import BaseModel, ConfigDict

from backend.pruning.base import PruneReport, PruningMethod, register_method

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["SliceGPT", "load_sliced", "restore_sliced_structure", "slice_model"]

logger = logging.getLogger(__name__)

BATCH_SIZE = 8
"""Calibration sequences per forward."""
SUPPORTED_TYPES = ("llama", "mistral", "qwen2", "qwen3")
CONFIG_KEY = "slicegpt"


class SliceGPTParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_LAYER_CLASS: list[type] = []


def _sliced_layer_class() -> type:
    """`SlicedDecoderLayer`, built on first use: torch stays out of import time (the CLI lists methods)."""
    if _LAYER_CLASS:
        return _LAYER_CLASS[0]
    from torch import nn

    class SlicedDecoderLayer(nn.Module):
        """A Llama-style decoder block whose residual path carries the shortcut rotations.

        Holds the original block's submodules under their original names (so state-dict keys are
        unchanged) plus `attn_shortcut` (d_in -> d_mid) and `mlp_shortcut` (d_mid -> d_out).
        """

        def __init__(self, layer: "nn.Module", d_in: int, d_mid: int, d_out: int):
            super().__init__()
            self.self_attn = layer.self_attn
            self.mlp = layer.mlp
            self.input_layernorm = layer.input_layernorm
            self.post_attention_layernorm = layer.post_attention_layernorm
            for attr in ("attention_type", "layer_idx", "hidden_size"):
                if hasattr(layer, attr):
                    setattr(self, attr, getattr(layer, attr))
            weight = layer.self_attn.q_proj.weight
            self.attn_shortcut = nn.Linear(d_in, d_mid, bias=False, dtype=weight.dtype, device=weight.device)
            self.mlp_shortcut = nn.Linear(d_mid, d_out, bias=False, dtype=weight.dtype, device=weight.device)

        def attention(self, hidden_states, **kwargs):
            out = self.self_attn(hidden_states=self.input_layernorm(hidden_states), **kwargs)
            return out[0] if isinstance(out, (tuple, list)) else out

        def feed_forward(self, hidden_states):
            return self.mlp(self.post_attention_layernorm(hidden_states))

        def forward(self, hidden_states, attention_mask=None, position_ids=None, past_key_values=None,
                    use_cache=False, position_embeddings=None, **kwargs):
            hidden_states = self.attn_shortcut(hidden_states) + self.attention(
                hidden_states, attention_mask=attention_mask, position_ids=position_ids,
                past_key_values=past_key_values, use_cache=use_cache, position_embeddings=position_embeddings,
                **kwargs,
            )
            return self.mlp_shortcut(hidden_states) + self.feed_forward(hidden_states)

    SlicedDecoderLayer.__module__ = __name__
    SlicedDecoderLayer.__qualname__ = "SlicedDecoderLayer"  # picklable via the module __getattr__
    _LAYER_CLASS.append(SlicedDecoderLayer)
    return SlicedDecoderLayer


def __getattr__(name: str):
    if name == "SlicedDecoderLayer":
        return _sliced_layer_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --- structure helpers ----------------------------------------------------------------------------


def _configs(model) -> list[Any]:
    seen: list[Any] = []
    for owner in (model, getattr(model, "model", None)):
        config = getattr(owner, "config", None)
        if config is not None and all(config is not c for c in seen):
            seen.append(config)
    return seen


def _check_supported(model) -> None:
    from backend.pruning.layers import get_decoder_layers

    model_type = getattr(model.config, "model_type", "")
    if model_type not in SUPPORTED_TYPES:
        raise ValueError(f"slicegpt supports {', '.join(SUPPORTED_TYPES)} models, not {model_type!r}")
    for i, layer in enumerate(get_decoder_layers(model)):
        if isinstance(layer, _sliced_layer_class()):
            raise ValueError("slicegpt: the model is already sliced")
        for name in ("input_layernorm", "post_attention_layernorm", "self_attn", "mlp"):
            if not hasattr(layer, name):
                raise ValueError(f"slicegpt: decoder layer {i} has no {name}")
    if getattr(model, "lm_head", None) is None or getattr(model.model, "norm", None) is None:
        raise ValueError("slicegpt: the model needs model.norm and lm_head")


def untie_embeddings(model) -> bool:
    """Give lm_head its own copy of the embedding matrix; returns whether they were tied."""
    from torch import nn

    embed = model.model.embed_tokens
    tied = model.lm_head.weight is embed.weight or model.lm_head.weight.data_ptr() == embed.weight.data_ptr()
    if tied:
        model.lm_head.weight = nn.Parameter(embed.weight.detach().clone())
    for config in _configs(model):
        config.tie_word_embeddings = False
        text = getattr(config, "get_text_config", None)
        if text is not None:
            text().tie_word_embeddings = False
    if hasattr(model, "_tied_weights_keys"):
        model._tied_weights_keys = None
    return tied


def _fuse_norm(norm, linears) -> None:
    import torch

    with torch.no_grad():
        g = norm.weight.detach().to(torch.float64)
        for linear in linears:
            linear.weight.copy_((linear.weight.to(torch.float64) * g[None, :]).to(linear.weight.dtype))
        norm.weight.fill_(1.0)


def _set_norm(norm, dim: int, hidden: int) -> None:
    """Resize an RMSNorm to `dim` entries with the constant scale sqrt(D/dim) and epsilon eps x D/dim
    (see module docstring): then it computes exactly the full-width RMSNorm of the rotated vector."""
    import torch
    from torch import nn

    if hasattr(norm, "variance_epsilon"):
        dense_eps = norm.__dict__.setdefault("_dense_epsilon", norm.variance_epsilon)
        norm.variance_epsilon = dense_eps * hidden / dim
    weight = norm.weight
    norm.weight = nn.Parameter(torch.full((dim,), math.sqrt(hidden / dim), dtype=weight.dtype, device=weight.device))


def _new_linear(linear, weight: "torch.Tensor", bias: "torch.Tensor | None"):
    """Swap `linear`'s parameters for new (smaller) ones in place."""
    from torch import nn

    dtype = linear.weight.dtype
    linear.weight = nn.Parameter(weight.to(dtype).contiguous())
    linear.in_features, linear.out_features = weight.shape[1], weight.shape[0]
    if bias is not None:
        linear.bias = nn.Parameter(bias.to(dtype).contiguous())


def _rotate_input(linear, q: "torch.Tensor") -> None:
    """A linear reading the stream: W <- W Q (q: D x d)."""
    import torch

    w = linear.weight.detach().to(torch.float64) @ q.to(linear.weight.device)
    _new_linear(linear, w, None)


def _rotate_output(linear, q: "torch.Tensor") -> None:
    """A linear writing into the stream: W <- Qᵀ W, b <- b Q (q: D x d)."""
    import torch

    q = q.to(linear.weight.device)
    w = q.t() @ linear.weight.detach().to(torch.float64)
    b = None if linear.bias is None else linear.bias.detach().to(torch.float64) @ q
    _new_linear(linear, w, b)


def _principal_basis(batches: list["torch.Tensor"]) -> "torch.Tensor":
    """Eigenvectors of sum_t x_t x_tᵀ over every token (float64), by decreasing eigenvalue (D x D)."""
    import torch

    dim = batches[0].shape[-1]
    cov = torch.zeros(dim, dim, dtype=torch.float64)
    for x in batches:
        flat = x.detach().reshape(-1, dim).to(torch.float64).cpu()
        cov.addmm_(flat.t(), flat)
    cov = (cov + cov.t()) / 2
    damp = 1e-10 * float(torch.diagonal(cov).mean()) + 1e-30
    cov += damp * torch.eye(dim, dtype=torch.float64)
    _, vectors = torch.linalg.eigh(cov)
    return vectors.flip(-1)


def _install_layer(model, i: int, d_in: int, d_mid: int, d_out: int) -> "nn.Module":
    layers = model.model.layers
    new = _sliced_layer_class()(layers[i], d_in, d_mid, d_out)
    layers[i] = new
    return new


# --- slicing ---------------------------------------------------------------------------------------


def slice_model(
    model: "nn.Module",
    calibration: "torch.Tensor",
    sparsity: float,
    progress: Callable[[float, str], None] = lambda fraction, text: None,
) -> dict[str, Any]:
    """Rotate and slice `model` in place (see the module docstring); returns facts for the report."""
    import torch

    from backend.pruning.layers import capture_layer_inputs, get_decoder_layers

    _check_supported(model)
    layers = get_decoder_layers(model)
    hidden = int(model.model.embed_tokens.weight.shape[1])
    dim = hidden - round(sparsity * hidden)
    if dim < 1:
        raise ValueError(f"slicegpt: sparsity {sparsity} leaves no hidden dimension")
    device = next(model.parameters()).device
    tied = untie_embeddings(model)

    for layer in layers:
        attn, mlp = layer.self_attn, layer.mlp
        _fuse_norm(layer.input_layernorm, [attn.q_proj, attn.k_proj, attn.v_proj])
        _fuse_norm(layer.post_attention_layernorm, [mlp.gate_proj, mlp.up_proj])
    _fuse_norm(model.model.norm, [model.lm_head])

    with torch.no_grad():
        captured = [capture_layer_inputs(model, batch.to(device)) for batch in calibration.split(BATCH_SIZE)]
        kwargs = [c.kwargs for c in captured]
        xs = [c.hidden for c in captured]  # original coordinates (D)
        q = _principal_basis(xs)[:, :dim]
        embed = model.model.embed_tokens
        embed.weight = torch.nn.Parameter(
            (embed.weight.detach().to(torch.float64) @ q.to(embed.weight.device)).to(embed.weight.dtype))
        embed.embedding_dim = dim
        zs = [(x.to(torch.float64) @ q.to(x.device)).to(x.dtype) for x in xs]
        dims = [dim]
        count = len(layers)
        for i in range(count):
            layer = layers[i]
            attn, mlp = layer.self_attn, layer.mlp
            # attention side: reads z_in (basis q), writes into the new basis q_mid
            for linear in (attn.q_proj, attn.k_proj, attn.v_proj):
                _rotate_input(linear, q)
            _set_norm(layer.input_layernorm, dim, hidden)
            sliced = _install_layer(model, i, dim, dim, dim)
            x_mid = []
            for z, kw in zip(zs, kwargs):
                a = sliced.attention(z, **kw)
                x_mid.append((z.to(torch.float64) @ q.t().to(z.device)).to(z.dtype) + a)
            q_mid = _principal_basis(x_mid)[:, :dim]
            _rotate_output(attn.o_proj, q_mid)
            sliced.attn_shortcut.weight.copy_((q.t() @ q_mid).t().to(sliced.attn_shortcut.weight))
            zs = [(x.to(torch.float64) @ q_mid.to(x.device)).to(x.dtype) for x in x_mid]
            del x_mid
            # MLP side: reads z_mid, writes into q_out (the next block's input basis)
            for linear in (mlp.gate_proj, mlp.up_proj):
                _rotate_input(linear, q_mid)
            _set_norm(layer.post_attention_layernorm, dim, hidden)
            x_out = [(z.to(torch.float64) @ q_mid.t().to(z.device)).to(z.dtype) + sliced.feed_forward(z) for z in zs]
            q_out = _principal_basis(x_out)[:, :dim]
            _rotate_output(mlp.down_proj, q_out)
            sliced.mlp_shortcut.weight.copy_((q_mid.t() @ q_out).t().to(sliced.mlp_shortcut.weight))
            zs = [(x.to(torch.float64) @ q_out.to(x.device)).to(x.dtype) for x in x_out]
            del x_out
            q = q_out
            dims += [dim, dim]
            progress((i + 1) / count, f"slicegpt: rotated and sliced block {i + 1}/{count}")
        _rotate_input(model.lm_head, q)
        _set_norm(model.model.norm, dim, hidden)

    meta = {"hidden_size": hidden, "dims": dims}
    for config in _configs(model):
        setattr(config, CONFIG_KEY, meta)
    logger.info("slicegpt: hidden %d -> %d (%d positions), tied embeddings: %s", hidden, dim, len(dims), tied)
    return {"hidden_size_before": hidden, "hidden_size_after": dim, "untied_embeddings": tied,
            "shortcut_matrices": 2 * count}


def restore_sliced_structure(model: "nn.Module", meta: dict[str, Any]) -> "nn.Module":
    """Give a freshly built dense model the sliced shapes recorded in `meta` (config.slicegpt),
    so a sliced state dict loads into it with `load_state_dict(strict=True)`. Weights are placeholders."""
    import torch
    from torch import nn

    from backend.pruning.layers import get_decoder_layers

    _check_supported(model)
    hidden, dims = int(meta["hidden_size"]), [int(d) for d in meta["dims"]]
    layers = get_decoder_layers(model)
    if len(dims) != 2 * len(layers) + 1:
        raise ValueError(f"slicegpt: {len(dims)} dims recorded for {len(layers)} layers")
    untie_embeddings(model)

    def resize(linear, out_features=None, in_features=None):
        w = linear.weight
        shape = (out_features or w.shape[0], in_features or w.shape[1])
        _new_linear(linear, torch.zeros(shape, dtype=w.dtype, device=w.device),
                    None if linear.bias is None else torch.zeros(shape[0], dtype=w.dtype, device=w.device))

    embed = model.model.embed_tokens
    embed.weight = nn.Parameter(torch.zeros(embed.weight.shape[0], dims[0], dtype=embed.weight.dtype,
                                            device=embed.weight.device))
    embed.embedding_dim = dims[0]
    for i, layer in enumerate(layers):
        d_in, d_mid, d_out = dims[2 * i], dims[2 * i + 1], dims[2 * i + 2]
        attn, mlp = layer.self_attn, layer.mlp
        for linear in (attn.q_proj, attn.k_proj, attn.v_proj):
            resize(linear, in_features=d_in)
        resize(attn.o_proj, out_features=d_mid)
        for linear in (mlp.gate_proj, mlp.up_proj):
            resize(linear, in_features=d_mid)
        resize(mlp.down_proj, out_features=d_out)
        _set_norm(layer.input_layernorm, d_in, hidden)
        _set_norm(layer.post_attention_layernorm, d_mid, hidden)
        _install_layer(model, i, d_in, d_mid, d_out)
    resize(model.lm_head, in_features=dims[-1])
    _set_norm(model.model.norm, dims[-1], hidden)
    for config in _configs(model):
        setattr(config, CONFIG_KEY, {"hidden_size": hidden, "dims": dims})
    return model


def is_sliced_dir(directory: str | Path) -> bool:
    """Whether `directory` holds a SliceGPT-sliced model (its config.json has a `slicegpt` entry)."""
    path = Path(directory) / "config.json"
    try:
        return CONFIG_KEY in json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False


def load_sliced_model(directory: str | Path, dtype=None, device: str = "cpu"):
    """The sliced model saved in `directory` (by `save_pretrained` or `backend.publish.export.save_pruned`)."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    directory = Path(directory)
    config = AutoConfig.from_pretrained(directory, trust_remote_code=False)
    meta = getattr(config, CONFIG_KEY, None)
    if not meta:
        raise ValueError(f"{directory} is not a SliceGPT model (no '{CONFIG_KEY}' in config.json)")
    config.tie_word_embeddings = False
    state: dict[str, torch.Tensor] = {}
    for file in sorted(directory.glob("*.safetensors")):
        state.update(load_file(str(file)))
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    dtype = dtype or next(iter(state.values())).dtype  # None: as saved
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    restore_sliced_structure(model, meta)
    model.load_state_dict(state, strict=True)
    model.to(device=device, dtype=dtype)
    model.eval()
    return model


def load_sliced(directory: str | Path, dtype=None, device: str = "cpu"):
    """(model, tokenizer) of a SliceGPT model saved in `directory`: the project's loader for them."""
    from transformers import AutoTokenizer

    model = load_sliced_model(directory, dtype=dtype, device=device)
    tokenizer = AutoTokenizer.from_pretrained(directory, trust_remote_code=False)
    return model, tokenizer


@register_method
class SliceGPT(PruningMethod):
    """Rotate the residual stream onto its principal directions and delete the least significant ones."""

    name = "slicegpt"
    family = "width"
    description = "PCA-rotate the residual stream and slice the hidden dimension (Ashkboos et al. 2024)"
    Params = SliceGPTParams
    needs_calibration = True
    sparsity_meaning = "fraction of the hidden dimension sliced away (d = D - round(sparsity x D))"

    @classmethod
    def is_saved_format(cls, directory: Path) -> bool:
        return is_sliced_dir(directory)  # shortcut modules: plain from_pretrained cannot build them

    @classmethod
    def load_saved(cls, directory: Path, dtype: Any = None, device: str = "cpu") -> "nn.Module":
        import torch

        return load_sliced_model(directory, dtype=getattr(torch, dtype) if isinstance(dtype, str) else dtype,
                                 device=device).eval()

    @classmethod
    def vllm_unsupported(cls, params: BaseModel) -> str | None:
        return "its blocks carry shortcut matrices on the residual path, which vLLM's model classes do not have"

    def prune(
        self,
        model: "torch.nn.Module",
        sparsity: float,
        params: BaseModel,
        calibration: "torch.Tensor | None",
        progress: Callable[[float, str], None],
    ) -> PruneReport:
        from backend.models.loading import count_parameters

        if calibration is None:
            raise ValueError("slicegpt needs calibration data")
        params_before = count_parameters(model)
        details = slice_model(model, calibration, sparsity, lambda f, text: progress(0.99 * f, text))
        progress(1.0, f"slicegpt: hidden {details['hidden_size_before']} -> {details['hidden_size_after']}")
        hidden = details["hidden_size_before"]
        return PruneReport(
            method=self.name,
            requested_sparsity=sparsity,
            achieved_sparsity=(hidden - details["hidden_size_after"]) / hidden,
            params_before=params_before,
            params_after=count_parameters(model),
            details=details,
        )
