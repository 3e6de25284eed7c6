"""Settings: the one place that reads the environment and `.env`.

Every variable of the model-backends guide keeps its exact name and default. The real environment
wins over `.env`; a bad value fails at start with one line naming the variable, the value and the fix.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .registry import backend_names, names_text
from .settings_io import (
    SettingSource,
    display_url,
    env_name,
    load_backend_settings,
    secret_fields,
    setting_sources,
)

__all__ = [
    "SECRET_FIELDS",
    "DEFAULT_MODEL_1B_PATH",
    "DEFAULT_MODEL_7B_PATH",
    "Settings",
    "SettingSource",
    "apply_gpu_environment",
    "display_url",
    "effective_values",
    "env_name",
    "secret_fields",
    "load_backend_settings",
    "load_settings",
    "physical_cores",
    "setting_sources",
]

# CUDA's own variables keep their meaning as given: an empty CUDA_VISIBLE_DEVICES hides every GPU.
_PASSED_THROUGH = ("cuda_visible_devices", "ggml_cuda_force_cublas")
TorchDtype = Literal["float16", "bfloat16", "float32"]

DEFAULT_MODEL_7B_PATH = Path("models/qwen-7b/qwen2.5-7b-instruct-q4_k_m-00001-of-00002.gguf")
DEFAULT_MODEL_1B_PATH = Path("models/qwen-1.5b/model.gguf")


def physical_cores() -> int:
    """Physical cores this process may use: more llama.cpp threads than cores slows it down."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    cores: set[tuple[str, str]] = set()
    try:
        physical_id = core_id = ""
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "physical id":
                physical_id = value.strip()
            elif key == "core id":
                core_id = value.strip()
                cores.add((physical_id, core_id))
    except OSError:
        pass
    return max(1, min(usable, len(cores) or usable))


def _field(default: Any, env: str, description: str, **bounds: Any) -> Any:
    """A settings field read from exactly the guide's variable name."""
    return Field(default, validation_alias=AliasChoices(env), description=description, **bounds)


class Settings(BaseSettings):
    """Every setting of agentic, named as in the guide (`MODEL_*`, `OPENAI_*`, `GPU_*`, `API_*`)."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        populate_by_name=True,
        protected_namespaces=(),
    )

    model_backend: str = _field(
        "llama_cpp", "MODEL_BACKEND",
        "Which backend serves both tiers: llama_cpp, openai, transformers_gpu, or one an installed package adds.",
    )
    model_fallback: str = _field(
        "", "MODEL_FALLBACK",
        "Comma-separated backends that serve a tier when MODEL_BACKEND fails (unreachable, timeout, 5xx, 429 "
        "after retries, or not configured), tried in order, e.g. llama_cpp.",
    )
    model_7b_path: Path = _field(
        DEFAULT_MODEL_7B_PATH, "MODEL_7B_PATH",
        "GGUF file of the heavy model (first part of a split model is fine). "
        "Unset and missing: the embedded Gemma 3 270M is used.",
    )
    model_1b_path: Path = _field(
        DEFAULT_MODEL_1B_PATH, "MODEL_1B_PATH",
        "GGUF file of the light model. Unset and missing: the embedded Gemma 3 270M is used.",
    )
    model_embedding_path: Path | None = _field(
        None, "MODEL_EMBEDDING_PATH",
        "GGUF file of the embedding model (/v1/embeddings, mean pooling). Unset: the embedded Gemma 3 270M.",
    )
    model_context_size: int = _field(
        4096, "MODEL_CONTEXT_SIZE", "Context window in tokens (prompt + completion).", ge=64, le=1_048_576
    )
    model_n_threads: int = _field(
        0, "MODEL_N_THREADS", "CPU threads for llama.cpp; 0 = this machine's physical cores.", ge=0, le=1024
    )
    model_gpu_layers: int = _field(
        30, "MODEL_GPU_LAYERS",
        "Layers offloaded to the GPU (0 = CPU only, -1 = all). Ignored, with one log line, "
        "when llama-cpp-python was built without GPU support.", ge=-1,
    )
    model_parallel: int = _field(
        8, "MODEL_PARALLEL",
        "Requests a local model generates together (llama.cpp: continuous batching; transformers: requests "
        "that arrive together share a batch); 1 = one at a time. llama.cpp's KV cache holds MODEL_PARALLEL x "
        "MODEL_CONTEXT_SIZE tokens.", ge=1, le=256,
    )
    model_prefix_cache: bool = _field(
        True, "MODEL_PREFIX_CACHE",
        "llama.cpp: keep each finished sequence's KV cells and reuse the longest shared prompt prefix (from any "
        "sequence) instead of computing it again; usage.prompt_tokens_details.cached_tokens counts the reuse. With "
        "one KV buffer, held cells move to host memory once the engine idles.",
    )
    model_flash_attention: bool = _field(
        True, "MODEL_FLASH_ATTENTION",
        "llama.cpp: flash attention where the build supports it (faster on long prompts; false = off).",
    )
    model_kv_unified: bool = _field(
        True, "MODEL_KV_UNIFIED",
        "llama.cpp: one KV buffer for all parallel sequences: a shared prompt prefix is stored once and a step "
        "with uneven token counts (json_schema answers) is one decode; false = one buffer per sequence, as "
        "llama-server has: each step attends over each sequence's own cells only (faster with many long "
        "independent answers, slower on json_schema jobs; README, 'KV layout').",
    )
    model_jump_forward: bool = _field(
        True, "MODEL_JUMP_FORWARD",
        "llama.cpp: in a json_schema answer, write the text the schema fixes (keys, colons, the quotes that open "
        "values) without sampling it, as compact JSON; false = the model writes every token, as with "
        "MODEL_PARALLEL=1.",
    )
    model_keep_alive: float = _field(
        0.0, "MODEL_KEEP_ALIVE",
        "Seconds a loaded model may stay unused before it is unloaded to free memory (the next request loads it "
        "again, like Ollama's keep_alive); 0 = keep models loaded.", ge=0,
    )
    model_memory_budget_mb: int = _field(
        0, "MODEL_MEMORY_BUDGET_MB",
        "Memory the local models may hold together, in MB (llama.cpp: weights + KV cache, estimated before "
        "loading). A load that would pass it first unloads the least recently used idle model, else it is refused "
        "with a clear error instead of the OOM killer; 0 = no budget.", ge=0,
    )
    model_preload: bool = _field(
        False, "MODEL_PRELOAD", "Load both tiers when the manager is created instead of on first use."
    )
    model_cache_dir: Path = _field(
        Path.home() / ".cache" / "agentic", "MODEL_CACHE_DIR",
        "Where the embedded model is assembled and converted models are cached.",
    )
    model_schema_max_bytes: int = _field(
        32_768, "MODEL_SCHEMA_MAX_BYTES",
        "Largest response_format JSON schema, in bytes of JSON; a larger one is a 400 before any grammar is built.",
        ge=256, le=1_048_576,
    )
    model_schema_max_depth: int = _field(
        32, "MODEL_SCHEMA_MAX_DEPTH", "Deepest nesting of objects and lists in a response_format schema.",
        ge=2, le=128,
    )
    model_schema_max_enum: int = _field(
        1_024, "MODEL_SCHEMA_MAX_ENUM", "Most values in one enum of a response_format schema.", ge=1, le=100_000
    )
    model_schema_max_repeat: int = _field(
        1_000, "MODEL_SCHEMA_MAX_REPEAT",
        "Largest minLength / maxLength / minItems / maxItems / min-maxProperties, and largest {m,n} bound of a "
        "pattern (nested bounds multiplied): grammars spell each repetition out. At most 1000: llama.cpp's "
        "grammar parser refuses more, and crashes far past it.", ge=1, le=1_000,
    )
    model_schema_max_pattern: int = _field(
        1_000, "MODEL_SCHEMA_MAX_PATTERN", "Longest regex `pattern` in a response_format schema, in characters.",
        ge=1, le=100_000,
    )
    model_grammar_max_bytes: int = _field(
        65_536, "MODEL_GRAMMAR_MAX_BYTES",
        "Largest grammar (GBNF text) llama.cpp may compile from a schema; a larger one is a 400.",
        ge=1_024, le=4_194_304,
    )
    model_grammar_time_budget: float = _field(
        10.0, "MODEL_GRAMMAR_TIME_BUDGET",
        "Seconds one llama.cpp sequence may spend enforcing its grammar (masking tokens) in all; past it the "
        "request ends with a schema_too_complex error instead of slowing every other sequence.", gt=0,
    )
    cuda_visible_devices: str | None = _field(
        None, "CUDA_VISIBLE_DEVICES", "Which GPUs CUDA may use; passed through to CUDA."
    )
    ggml_cuda_force_cublas: str | None = _field(
        None, "GGML_CUDA_FORCE_CUBLAS", "Force cuBLAS in llama.cpp's CUDA backend; passed through."
    )

    openai_api_key: SecretStr | None = _field(
        None, "OPENAI_API_KEY", "API key; required for api.openai.com, optional for a local server."
    )
    openai_heavy_model: str = _field("gpt-4", "OPENAI_HEAVY_MODEL", "Model for complex analysis.")
    openai_light_model: str = _field("gpt-3.5-turbo", "OPENAI_LIGHT_MODEL", "Model for simpler tasks.")
    openai_embedding_model: str = _field(
        "text-embedding-3-small", "OPENAI_EMBEDDING_MODEL", "Model for /v1/embeddings and create_embedding()."
    )
    openai_base_url: str | None = _field(
        None, "OPENAI_BASE_URL",
        "Any OpenAI-compatible server, e.g. http://127.0.0.1:8080/v1; several comma-separated URLs spread the "
        "requests over them (least outstanding requests first, a failing one is taken out and probed back).",
    )
    openai_organization: str | None = _field(None, "OPENAI_ORGANIZATION", "Organization id, for org accounts.")
    openai_timeout: float = _field(60.0, "OPENAI_TIMEOUT", "Seconds before a request times out.", gt=0)
    openai_max_retries: int = _field(
        2, "OPENAI_MAX_RETRIES", "Retries with backoff on 429, 5xx and connection errors.", ge=0, le=20
    )
    openai_response_format: Literal["auto", "json_schema", "json_object"] = _field(
        "auto", "OPENAI_RESPONSE_FORMAT",
        "How a JSON schema is sent: json_schema (OpenAI's structured outputs), json_object with a 'schema' "
        "field (llama.cpp's server), or auto (json_schema, switching to json_object once a server refuses it)."
    )

    gpu_heavy_model: str | None = _field(
        None, "GPU_HEAVY_MODEL",
        "Hub id, local directory or .gguf file of the heavy model. Unset: the embedded Gemma 3 270M.",
    )
    gpu_light_model: str | None = _field(
        None, "GPU_LIGHT_MODEL", "Hub id, local directory or .gguf file of the light model."
    )
    gpu_embedding_model: str | None = _field(
        None, "GPU_EMBEDDING_MODEL",
        "Hub id, local directory or .gguf file of the embedding model (mean pooling). Unset: the embedded Gemma.",
    )
    gpu_max_memory: float = _field(8.0, "GPU_MAX_MEMORY", "Max GPU memory per device in GB.", gt=0)
    gpu_torch_dtype: TorchDtype = _field(
        "float16", "GPU_TORCH_DTYPE", "Weights dtype on the GPU: float16, bfloat16 or float32."
    )

    api_host: str = _field("127.0.0.1", "API_HOST", "Address the API server listens on.")
    api_port: int = _field(8000, "API_PORT", "Port the API server listens on.", ge=1, le=65535)
    api_keys: SecretStr | None = _field(
        None, "API_KEYS",
        "Comma-separated keys; when set, every /v1 route and the web console's data routes (/console/api) need "
        "'Authorization: Bearer <key>'."
    )
    api_admin_keys: SecretStr | None = _field(
        None, "API_ADMIN_KEYS", "Comma-separated keys for /admin routes (POST /admin/reload); unset: /admin is off."
    )
    api_allow_unauthenticated: bool = _field(
        False, "API_ALLOW_UNAUTHENTICATED", "Allow listening beyond loopback without API_KEYS (not recommended)."
    )
    api_max_queue: int = _field(
        32, "API_MAX_QUEUE", "Requests that may wait per tier; past it the server answers 503 with Retry-After.",
        ge=0, le=100_000,
    )
    api_remote_concurrency: int = _field(
        16, "API_REMOTE_CONCURRENCY", "Requests sent at once per tier to a remote (openai) backend.", ge=1, le=1024
    )
    api_max_body_bytes: int = _field(
        4 * 1024 * 1024, "API_MAX_BODY_BYTES", "Largest request body accepted (413 past it).", ge=1024
    )
    api_max_connections: int = _field(
        256, "API_MAX_CONNECTIONS",
        "Most open connections (plus requests in progress); past it new requests get 503 (uvicorn's "
        "limit_concurrency).", ge=1, le=100_000,
    )
    api_header_timeout: float = _field(
        10.0, "API_HEADER_TIMEOUT",
        "Seconds a connection may take to send a request's headers (a new or an idle kept-alive one) before "
        "it is closed.", gt=0,
    )
    api_body_timeout: float = _field(
        30.0, "API_BODY_TIMEOUT", "Seconds a client may take to send a request body; past it the answer is 408.",
        gt=0,
    )
    api_log_prompts: bool = _field(
        False, "API_LOG_PROMPTS", "Log prompt text with each request (off: only ids, tiers, tokens, latency)."
    )
    api_runs_dir: Path = _field(
        Path("runs/console"), "API_RUNS_DIR",
        "Folder where the web console keeps the analyses run from the page (each upload, its results and report), "
        "relative to the server's working directory.",
    )

    @field_validator("*", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any, info: ValidationInfo) -> Any:
        """An empty `OPENAI_API_KEY=` line in .env means "not set" for any optional setting, not an empty key."""
        name = info.field_name
        optional = name is not None and name not in _PASSED_THROUGH and cls.model_fields[name].default is None
        return None if optional and isinstance(value, str) and not value.strip() else value

    @field_validator("api_keys", "api_admin_keys")
    @classmethod
    def _holds_a_key(cls, value: SecretStr | None) -> SecretStr | None:
        """`API_KEYS=,` must not read as SET while it accepts no key."""
        if value is not None and not _split_secret(value):
            raise ValueError("it holds no key, only commas or spaces; give key1,key2 or leave it unset")
        return value

    @classmethod
    def env_name(cls, field: str) -> str:
        """The environment variable that sets `field`."""
        return env_name(cls, field)

    @field_validator("model_cache_dir", "model_7b_path", "model_1b_path", "model_embedding_path", "api_runs_dir")
    @classmethod
    def _expand_home(cls, value: Path | None) -> Path | None:
        """`~/models/x.gguf` in .env means the home directory, as in a shell."""
        return value.expanduser() if value is not None else None

    @field_validator("model_backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        if value not in backend_names():
            raise ValueError(f"expected {names_text()}")
        return value

    @field_validator("model_fallback")
    @classmethod
    def _known_backends(cls, value: str) -> str:
        names = [name.strip() for name in value.split(",") if name.strip()]
        unknown = [name for name in names if name not in backend_names()]
        if unknown:
            raise ValueError(f"unknown backend {unknown[0]!r}; use a comma-separated list of "
                             f"{', '.join(backend_names())}")
        return ",".join(names)

    @field_validator("openai_base_url")
    @classmethod
    def _urls(cls, value: str | None) -> str | None:
        if value is None:
            return None
        urls = [url.strip() for url in value.split(",") if url.strip()]
        bad = [url for url in urls if not url.startswith(("http://", "https://"))]
        if bad:
            raise ValueError(f"{bad[0]!r} is not an http(s) URL; give one URL or several separated by commas")
        return ",".join(urls)

    @property
    def fallback_backends(self) -> list[str]:
        """MODEL_FALLBACK as a list, in order (MODEL_BACKEND itself left out)."""
        return [name for name in self.model_fallback.split(",") if name and name != self.model_backend]

    @property
    def openai_base_urls(self) -> list[str]:
        """OPENAI_BASE_URL split into its servers (empty: the official API)."""
        return self.openai_base_url.split(",") if self.openai_base_url else []

    @property
    def api_key_list(self) -> list[str]:
        """The server's accepted keys (empty: no auth)."""
        return _split_secret(self.api_keys)

    @property
    def admin_key_list(self) -> list[str]:
        """Keys accepted on /admin routes (empty: /admin is off)."""
        return _split_secret(self.api_admin_keys)

    @property
    def threads(self) -> int:
        """Effective llama.cpp thread count."""
        return self.model_n_threads or physical_cores()


def _split_secret(secret: SecretStr | None) -> list[str]:
    raw = secret.get_secret_value() if secret else ""
    return [key.strip() for key in raw.split(",") if key.strip()]


SECRET_FIELDS = secret_fields(Settings)


def load_settings(env_file: str | Path | None = ".env", **overrides: Any) -> Settings:
    """Read settings from the environment and `env_file`; raise ConfigError on a bad value."""
    return load_backend_settings(Settings, env_file, **overrides)


def effective_values(settings: BaseSettings) -> list[tuple[str, str, SettingSource]]:
    """(variable, value as shown, source) for every setting; secrets only as SET / NOT SET."""
    sources = setting_sources(settings)
    secrets = secret_fields(type(settings))
    rows = []
    for field in type(settings).model_fields:
        value = getattr(settings, field)
        if field in secrets:
            shown = "SET" if value else "NOT SET"
        elif isinstance(settings, Settings) and field == "model_n_threads" and not value:
            shown = f"(auto: {settings.threads} physical cores)"
        elif isinstance(settings, Settings) and field == "openai_base_url" and value:
            shown = ",".join(display_url(url) for url in settings.openai_base_urls)
        else:
            shown = "" if value is None else str(value)
        rows.append((env_name(type(settings), field), shown, sources[field]))
    return rows


def apply_gpu_environment(settings: Settings) -> None:
    """Pass CUDA_VISIBLE_DEVICES / GGML_CUDA_FORCE_CUBLAS from `.env` on to CUDA and ggml."""
    for field in _PASSED_THROUGH:
        value = getattr(settings, field)
        if value is not None:
            os.environ.setdefault(Settings.env_name(field), value)
