"""The validated configuration of a prune-and-evaluate job, its loaders and its canonical hash.

Every error becomes a `ConfigError` whose message is one line naming the field, so the CLI and the
UI can show it as it is. Fields left at their default are dropped from the canonical form, so adding
a field with a default later does not change existing hashes.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from common.vocabulary import Paradigm

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from backend.calibration.tasks import CALIBRATION_TASKS
from backend.models.ids import BUILTIN_LINEAR_NAMES, NOOP_MODEL, check_model_id
from backend.pruning import get_method
from backend.registry import UnknownName
from backend.tasks import get_task

MAX_CONFIG_BYTES = 64 * 1024
MAX_STRING = 1000


class ConfigError(ValueError):
    """A config that cannot be run; the message is one line and names the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_max_length=MAX_STRING, allow_inf_nan=False)


OUTSIDE_DATA_DIR = ("path must name a file under PRUNEBOARD_DATA_DIR (relative, without '..' or a URL scheme, "
                    "and not a link that leads out of it)")
"""One message for every refused path, so an error never tells whether some file exists."""


def data_file(path: str, data_dir: Path | None = None) -> Path:
    """`path` resolved against the data directory (default `settings.data_dir()`), symlinks followed;
    ValueError(OUTSIDE_DATA_DIR) unless the result stays inside it."""
    from common import settings

    if "://" in path or Path(path).is_absolute() or ".." in Path(path).parts:
        raise ValueError(OUTSIDE_DATA_DIR)
    root = Path(data_dir if data_dir is not None else settings.data_dir()).resolve()
    resolved = (root / path).resolve()
    if resolved == root or not resolved.is_relative_to(root):
        raise ValueError(OUTSIDE_DATA_DIR)
    return resolved


def _check_relative_path(path: str) -> str:
    data_file(path)
    return path


class PruningConfig(_Strict):
    method: str = "dense"
    sparsity: float = Field(0.0, ge=0.0, lt=1.0)
    """Fraction in [0, 1): of weights (unstructured), of layers (depth: n = round(sparsity x L))."""
    params: dict[str, Any] = Field(default_factory=dict)
    """Method-specific knobs, validated by the method's own `Params` model."""

    @field_validator("method")
    @classmethod
    def _known_method(cls, name: str) -> str:
        try:
            get_method(name)
        except UnknownName as exc:
            raise ValueError(str(exc)) from None
        return name

    @field_validator("params")
    @classmethod
    def _normalise_params(cls, params: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        if "method" not in info.data:  # the method itself was invalid; that error is reported
            return params
        try:
            checked = get_method(info.data["method"]).Params(**params)
        except ValidationError as exc:
            raise ValueError(_first_error(exc)) from None
        return checked.model_dump(mode="json", exclude_defaults=True)

    @model_validator(mode="after")
    def _check_sparsity(self) -> "PruningConfig":
        method = get_method(self.method)
        method.check_sparsity(self.sparsity)
        method.check_params(self.sparsity, self.method_params())
        return self

    def method_params(self) -> BaseModel:
        return get_method(self.method).Params(**self.params)


class CalibrationConfig(_Strict):
    source: Literal["synthetic", "text", "task-aligned", "self-generated"] = "synthetic"
    """synthetic: random token ids; text: a local plain-text file (named hub datasets are not
    fetched: the hub is not reachable from workers, so download the text to a file first);
    task-aligned: a task's training split rendered with the model's chat template (question as
    the user turn, worked answer as the assistant turn); self-generated: the dense model answers a
    task's training prompts through its chat template and those conversations are the text."""
    path: str | None = None
    """For `text`: a plain-text file under PRUNEBOARD_DATA_DIR, relative to it (`data_file`)."""
    task: str | None = Field(None, max_length=100)
    """For `task-aligned` and `self-generated`: the prompt source (`backend.calibration.tasks.CALIBRATION_TASKS`)."""
    split: Literal["train", "test"] = "train"
    """Which split of `task` to draw from; `test` is allowed but flagged as a leak when evaluated on."""
    num_samples: int = Field(8, ge=1, le=4096)
    seq_len: int = Field(128, ge=8, le=32768)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    max_new_tokens: int = Field(256, ge=1, le=32768)
    """For `self-generated`: generation budget per prompt."""
    temperature: float = Field(0.0, ge=0.0, le=5.0)
    """For `self-generated`: 0 is greedy; above 0 samples with a per-prompt seed derived from `seed`."""
    top_p: float = Field(1.0, gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _check_source(self) -> "CalibrationConfig":
        if self.source == "text":
            if not self.path:
                raise ValueError("source 'text' needs a path")
            _check_relative_path(self.path)
        elif self.path is not None:
            raise ValueError(f"source {self.source!r} takes no path")
        if self.source in ("task-aligned", "self-generated"):
            if self.task not in CALIBRATION_TASKS:
                known = ", ".join(sorted(CALIBRATION_TASKS))
                raise ValueError(f"source {self.source!r} needs a task, one of: {known} (got {self.task!r})")
        elif self.task is not None or self.split != "train":
            raise ValueError(f"source {self.source!r} takes no task or split")
        generation = (self.max_new_tokens, self.temperature, self.top_p)
        if self.source != "self-generated" and generation != (256, 0.0, 1.0):
            raise ValueError("max_new_tokens, temperature and top_p apply to source 'self-generated' only")
        return self


DEFAULT_CALIBRATION = CalibrationConfig(source="text", path="wikitext2/valid.txt", num_samples=32, seq_len=256, seed=0)
"""What a calibrated method gets when its config has no `calibration` section: the seed study's generic
calibration (WikiText-2 validation text, `study-cpu`'s 32 x 256 tokens; leak-free for `wikitext2-ppl`,
which evaluates the test split). An empty section (`calibration: {}`) is CalibrationConfig's own
defaults, synthetic 8 x 128 random tokens, which is what configs without a section used before."""


def stored_calibration(document: dict[str, Any]) -> CalibrationConfig | None:
    """The calibration a stored config document names: its section, else `DEFAULT_CALIBRATION`
    (None when the section no longer validates)."""
    section = document.get("calibration")
    if section is None:
        return DEFAULT_CALIBRATION
    try:
        return CalibrationConfig(**section)
    except (ValidationError, TypeError):
        return None


def describe_calibration(document: dict[str, Any]) -> str:
    """One line saying what calibration data a stored config's run used, e.g.
    `text wikitext2/valid.txt 32x256 seed 0 (default)` or `synthetic 8x128 seed 0`."""
    cfg = stored_calibration(document)
    if cfg is None:
        return str((document.get("calibration") or {}).get("source", "?"))
    what = {"text": cfg.path, "task-aligned": f"{cfg.task} {cfg.split}",
            "self-generated": f"{cfg.task} {cfg.split}"}.get(cfg.source)
    label = " ".join(x for x in (cfg.source, what, f"{cfg.num_samples}x{cfg.seq_len}", f"seed {cfg.seed}") if x)
    return label + (" (default)" if document.get("calibration") is None else "")


class GenerationConfig(_Strict):
    max_new_tokens: int | None = Field(None, ge=1, le=32768)
    """None: the task's default budget."""
    temperature: float = Field(0.0, ge=0.0, le=5.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    num_samples: int = Field(1, ge=1, le=64)
    """Test-time scaling: k samples per prompt (k > 1 needs temperature > 0 and a task with
    `test_time_scaling`); adds `pass@1`, `pass@k` and `maj@k` metrics."""
    thinking_budget: int | None = Field(None, ge=1, le=32768)
    """Think paradigm, budget forcing: cap the reasoning at this many tokens, then append the
    end-of-thinking marker and let the model answer (None: no cap)."""
    extend_thinking: int = Field(0, ge=0, le=16)
    """Think paradigm: when the model ends its reasoning, replace the marker by "Wait" up to this
    many times so it keeps thinking."""

    @model_validator(mode="after")
    def _check_sampling(self) -> "GenerationConfig":
        if self.num_samples > 1 and self.temperature == 0:
            raise ValueError("num_samples > 1 needs temperature > 0 (greedy samples are identical)")
        return self


class TaskConfig(_Strict):
    name: str = Field(max_length=200)
    limit: int | None = Field(None, ge=1, le=1_000_000)
    """Evaluate only the first `limit` rows (None: all)."""
    num_fewshot: int = Field(0, ge=0, le=25)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    window: int | None = Field(None, ge=8, le=32768)
    """Perplexity tasks: tokens per non-overlapping window (None: the task's default, 512);
    `limit` then counts windows."""

    @field_validator("name")
    @classmethod
    def _known_task(cls, name: str) -> str:
        try:
            get_task(name)
        except UnknownName as exc:
            raise ValueError(str(exc)) from None
        return name

    @model_validator(mode="after")
    def _check_window(self) -> "TaskConfig":
        if self.window is not None and get_task(self.name).output_type != "perplexity":
            raise ValueError(f"window applies to perplexity tasks only, not {self.name!r}")
        return self

    @model_validator(mode="after")
    def _check_test_time_scaling(self) -> "TaskConfig":
        if self.generation.num_samples > 1 and not get_task(self.name).test_time_scaling:
            raise ValueError(f"generation.num_samples > 1 is not supported by task {self.name!r}")
        return self


class EvaluationConfig(_Strict):
    batch_size: int | Literal["auto"] = 8
    """Requests per model batch (1..1024), or "auto": lm-eval's HFLM finds the largest batch that fits."""
    backend: Literal["hf", "vllm"] = "hf"
    """hf: lm-eval's HFLM on the in-memory pruned model. vllm: CUDA workers with `vllm` installed;
    the pruned weights are saved to a temporary directory and loaded by lm-eval's vLLM backend."""

    @field_validator("batch_size", mode="before")
    @classmethod
    def _check_batch_size(cls, value: Any) -> Any:
        if value == "auto" and isinstance(value, str):
            return value
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1024:
            raise ValueError(f"must be an integer from 1 to 1024 or 'auto', got {value!r}")
        return value


RECOVERY_DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""LoRA targets by default: every attention and MLP projection of a Llama/Qwen-style block."""


class RecoveryConfig(_Strict):
    """LoRA recovery fine-tuning of the pruned model (`backend.recovery`); adapters are merged after."""

    enabled: bool = True
    """A `recovery:` section switches recovery on; `enabled: false` keeps the section but skips it."""
    data: Literal["task-aligned", "self-generated", "text", "synthetic"] = "text"
    """Training text, built like calibration data (`backend.calibration.build`) from the fields below."""
    path: str | None = None
    """For `text`: a plain-text file under PRUNEBOARD_DATA_DIR, relative to it (`data_file`)."""
    task: str | None = Field(None, max_length=100)
    """For `task-aligned` and `self-generated`: the prompt source (gsm8k)."""
    split: Literal["train", "test"] = "train"
    num_samples: int = Field(16, ge=1, le=65536)
    """Training sequences (windows of `seq_len` tokens), cycled through in a seeded order."""
    rank: int = Field(8, ge=1, le=1024)
    alpha: float = Field(16.0, gt=0.0, le=4096.0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: tuple[str, ...] = Field(RECOVERY_DEFAULT_TARGETS, min_length=1, max_length=64)
    """Module-name suffixes (peft semantics), checked against the model's linears before training."""
    steps: int = Field(8, ge=1, le=100_000)
    """Optimizer steps (the CPU default is small)."""
    learning_rate: float = Field(2e-4, gt=0.0, le=1.0)
    seq_len: int = Field(128, ge=8, le=32768)
    batch_size: int = Field(2, ge=1, le=1024)
    seed: int = Field(0, ge=0, le=2**31 - 1)

    @field_validator("target_modules")
    @classmethod
    def _check_targets(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        for name in names:
            if not name or not all(part.isidentifier() for part in name.split(".")):
                raise ValueError(f"not a module name: {name!r}")
        return tuple(dict.fromkeys(names))

    @model_validator(mode="after")
    def _check_data(self) -> "RecoveryConfig":
        try:
            self.data_config()
        except ValidationError as exc:
            raise ValueError(_first_error(exc).split(": ", 1)[-1]) from None
        return self

    def data_config(self) -> CalibrationConfig:
        """The training text as a calibration spec (same sources, same validation)."""
        return CalibrationConfig(source=self.data, path=self.path, task=self.task, split=self.split,
                                 num_samples=self.num_samples, seq_len=self.seq_len, seed=self.seed)


class NoopArgs(_Strict):
    sleep_ms: int = Field(0, ge=0, le=3_600_000)
    fail: str | None = None
    """When set, the pipeline raises RuntimeError(fail): for failure-path tests."""


class ResourcesConfig(_Strict):
    """Where a job may run and for how long. Workers claim only jobs they can run (`jobs.resources`);
    not part of the run's hash (they do not change what is computed)."""

    device: Literal["any", "cpu", "cuda"] = "any"
    """cuda: only GPU workers take it; cpu: only CPU workers; any: every worker."""
    min_accelerator_memory_gb: float | None = Field(None, gt=0.0, le=100_000.0)
    """Only workers whose accelerator has at least this much memory take it (implies a GPU worker)."""
    max_wall_minutes: float | None = Field(None, gt=0.0, le=7 * 24 * 60.0)
    """An attempt running longer than this fails with error type WallTimeExceeded."""

    @model_validator(mode="after")
    def _check_memory(self) -> "ResourcesConfig":
        if self.device == "cpu" and self.min_accelerator_memory_gb is not None:
            raise ValueError("min_accelerator_memory_gb needs device 'cuda' or 'any', not 'cpu'")
        return self


class HFModelArgs(_Strict):
    revision: str | None = Field(None, max_length=100)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    think_markers: tuple[str, str] | None = None
    """Think paradigm: (start, end) of the model's reasoning block; None: by model family
    (`backend.evaluation.scoring.THINK_MARKERS`, default `<think>` / `</think>`)."""
    think_prompt: bool | None = None
    """Think paradigm: prompted thinking (a system instruction to reason inside the markers and the
    start marker prefilled in the reply); None: on when the chat template does not mention the start
    marker (a model without a thinking mode). Ignored in the instruct paradigm."""


class JobConfig(_Strict):
    model: str = Field(max_length=300)
    paradigm: Paradigm = "instruct"
    model_args: dict[str, Any] = Field(default_factory=dict)
    pruning: PruningConfig = Field(default_factory=PruningConfig)
    calibration: CalibrationConfig | None = None
    """Calibration data of methods that use it; None: `DEFAULT_CALIBRATION` (see `effective_calibration`)."""
    tasks: list[TaskConfig] = Field(min_length=1, max_length=50)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    recovery: RecoveryConfig | None = None
    """LoRA recovery fine-tuning between pruning and evaluation (None: none; see `backend.recovery`)."""
    seed: int = Field(0, ge=0, le=2**31 - 1)
    keep_model: bool = False
    """Save the pruned model (safetensors, config, tokenizer) under $PRUNEBOARD_HOME/models/<config_hash>/."""
    resources: ResourcesConfig | None = None
    """Device, accelerator memory and wall time the job needs (None: any worker, no time limit)."""

    @field_validator("resources")
    @classmethod
    def _no_empty_resources(cls, resources: ResourcesConfig | None) -> ResourcesConfig | None:
        return None if resources == ResourcesConfig() else resources  # `resources: {}` is no resources

    @field_validator("model")
    @classmethod
    def _check_model(cls, model: str) -> str:
        return check_model_id(model)

    @field_validator("tasks", mode="before")
    @classmethod
    def _names_to_tasks(cls, tasks: Any) -> Any:
        if isinstance(tasks, list):
            return [{"name": t} if isinstance(t, str) else t for t in tasks]
        return tasks

    @field_validator("tasks")
    @classmethod
    def _unique_sorted(cls, tasks: list[TaskConfig]) -> list[TaskConfig]:
        names = [t.name for t in tasks]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"task listed twice: {', '.join(dupes)}")
        return sorted(tasks, key=lambda t: t.name)  # order does not change results or the hash

    @field_validator("model_args")
    @classmethod
    def _check_model_args(cls, model_args: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        args_model = NoopArgs if info.data.get("model") == NOOP_MODEL else HFModelArgs
        try:
            args = args_model(**model_args)
        except ValidationError as exc:
            raise ValueError(_first_error(exc)) from None
        return args.model_dump(mode="json", exclude_defaults=True)

    @model_validator(mode="after")
    def _check_thinking_controls(self) -> "JobConfig":
        for task in self.tasks:
            gen = task.generation
            if self.paradigm != "think" and (gen.thinking_budget is not None or gen.extend_thinking):
                raise ValueError(f"tasks.{task.name}.generation: thinking_budget and extend_thinking "
                                 "need paradigm 'think'")
        return self

    @model_validator(mode="after")
    def _check_recovery_targets(self) -> "JobConfig":
        if self.recovery is not None and self.recovery.enabled and self.model.startswith("builtin:") \
                and self.model != NOOP_MODEL:
            unknown = [t for t in self.recovery.target_modules if t.split(".")[-1] not in BUILTIN_LINEAR_NAMES]
            if unknown:
                raise ValueError(f"recovery.target_modules: {', '.join(unknown)} match no linear module of "
                                 f"{self.model} (linears: {', '.join(BUILTIN_LINEAR_NAMES)})")
        return self

    @model_validator(mode="after")
    def _check_backend_loads_the_method(self) -> "JobConfig":
        if self.evaluation.backend == "vllm":
            reason = get_method(self.pruning.method).vllm_unsupported(self.pruning.method_params())
            if reason:
                raise ValueError(f"evaluation.backend: vllm cannot evaluate pruning.method {self.pruning.method!r}: "
                                 f"{reason}; use backend 'hf'")
        return self

    def effective_calibration(self) -> CalibrationConfig:
        """The calibration a calibrated method uses: the config's section, else `DEFAULT_CALIBRATION`."""
        return self.calibration if self.calibration is not None else DEFAULT_CALIBRATION

    def noop_args(self) -> NoopArgs:
        return NoopArgs(**self.model_args)

    def hf_args(self) -> HFModelArgs:
        return HFModelArgs(**self.model_args)


def _first_error(exc: ValidationError) -> str:
    err = exc.errors(include_url=False, include_input=False)[0]
    loc = ".".join(str(p) for p in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    return f"{loc}: {msg}" if loc else msg


def validate_config(data: Any) -> JobConfig:
    """Validate a parsed document; raise ConfigError naming the field."""
    if not isinstance(data, dict):
        kind = "empty" if data is None else type(data).__name__
        raise ConfigError(f"config must be a mapping of fields, got {kind}")
    try:
        return JobConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_first_error(exc)) from None


def parse_config_text(text: str, fmt: Literal["yaml", "json"] = "yaml") -> JobConfig:
    """Parse YAML (safe_load only) or JSON text into a validated config."""
    if len(text.encode("utf-8", "replace")) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config is larger than {MAX_CONFIG_BYTES // 1024} KiB")
    try:
        data = json.loads(text) if fmt == "json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"malformed {fmt.upper()}: {first}") from None
    return validate_config(data)


def load_config(path: str | Path) -> JobConfig:
    """Load a config file; `.json` is JSON, anything else YAML."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config {str(path)!r}: {exc.__class__.__name__}") from None
    return parse_config_text(text, "json" if path.suffix.lower() == ".json" else "yaml")


def canonical_dict(config: JobConfig) -> dict[str, Any]:
    return config.model_dump(mode="json", exclude_defaults=True)


def canonical_json(config: JobConfig) -> str:
    return json.dumps(canonical_dict(config), sort_keys=True, separators=(",", ":"))


def config_hash(config: JobConfig) -> str:
    """Identifies a run: sha256 of the canonical JSON without `resources` (where a job runs and its
    time limit do not change what it computes)."""
    data = {k: v for k, v in canonical_dict(config).items() if k != "resources"}
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
