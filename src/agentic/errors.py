"""One small error hierarchy: each error says how to fix it and carries its HTTP status and OpenAI type."""

from __future__ import annotations

__all__ = [
    "AdminDisabledError",
    "AgenticError",
    "AnalysisRunningError",
    "BackendNotInstalledError",
    "ClientAuthenticationError",
    "ConfigError",
    "ContextLengthExceededError",
    "EngineFailedError",
    "HeadersTooLargeError",
    "InvalidAPIKeyError",
    "InvalidOutputError",
    "InvalidRequestError",
    "KeyMissingError",
    "MemoryBudgetError",
    "ModelClosedError",
    "ModelFileNotFoundError",
    "ModelLoadError",
    "ModelNotAvailableError",
    "ModelNotFoundError",
    "OpenAIKeyMissingError",
    "OutOfMemoryError",
    "PayloadTooLargeError",
    "RateLimitError",
    "ReloadRefusedError",
    "RequestTimeoutError",
    "RunNotFoundError",
    "SchemaTooComplexError",
    "ServerBusyError",
    "UpstreamConnectionError",
    "UpstreamError",
    "UpstreamTimeoutError",
]


class AgenticError(Exception):
    """Base of every error agentic raises on purpose; the message says what to do."""

    status_code: int = 500
    error_type: str = "server_error"
    code: str | None = None
    param: str | None = None
    retry_after: int | None = None  # seconds, sent as Retry-After (a full queue sets it)

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if param is not None:
            self.param = param

    def to_openai(self) -> dict[str, dict[str, str | None]]:
        """The OpenAI error envelope."""
        return {"error": {"message": self.message, "type": self.error_type, "param": self.param, "code": self.code}}


class ConfigError(AgenticError, ValueError):
    """A setting is missing or has a bad value."""

    error_type = "configuration_error"
    code = "invalid_configuration"


class KeyMissingError(ConfigError):
    """A backend needs a key that is not set; `param` names its setting."""

    code = "missing_api_key"


class OpenAIKeyMissingError(KeyMissingError):
    """The OpenAI backend needs OPENAI_API_KEY for api.openai.com."""

    param = "OPENAI_API_KEY"


class BackendNotInstalledError(AgenticError, ImportError):
    """The Python package a backend needs is not installed."""

    error_type = "configuration_error"
    code = "backend_not_installed"


class ModelFileNotFoundError(ConfigError, FileNotFoundError):
    """A model path the user set does not exist."""

    code = "model_file_not_found"


class ModelNotAvailableError(ConfigError):
    """A transformers model is neither local nor downloadable."""

    code = "model_not_available"


class ModelLoadError(AgenticError):
    """The model file exists but the backend could not load it."""

    code = "model_load_failed"


class ModelClosedError(AgenticError):
    """A model was called after it was unloaded (MODEL_KEEP_ALIVE, MODEL_MEMORY_BUDGET_MB) or its manager closed."""

    status_code = 503
    code = "model_unloaded"
    retry_after = 1

    def __init__(self, message: str = ("This model was unloaded (MODEL_KEEP_ALIVE or MODEL_MEMORY_BUDGET_MB) or "
                                       "its manager was closed; call manager.get() again, which loads it.")) -> None:
        super().__init__(message)


class InvalidRequestError(AgenticError, ValueError):
    """A generation argument is out of range."""

    status_code = 400
    error_type = "invalid_request_error"
    code = "invalid_value"


class SchemaTooComplexError(InvalidRequestError):
    """A response_format schema is over a limit that keeps grammar compilation safe (or too slow to enforce)."""

    code = "schema_too_complex"
    param = "response_format"


class ContextLengthExceededError(InvalidRequestError):
    """The prompt does not fit the context window; nothing is truncated silently."""

    code = "context_length_exceeded"
    param = "messages"


class ModelNotFoundError(AgenticError):
    """The requested model does not exist on the backend."""

    status_code = 404
    error_type = "invalid_request_error"
    code = "model_not_found"
    param = "model"


class InvalidAPIKeyError(AgenticError):
    """The upstream API rejected the configured key (HTTP 401)."""

    status_code = 502
    error_type = "upstream_authentication_error"
    code = "invalid_api_key"


class RateLimitError(AgenticError):
    """The upstream kept answering 429 after every retry."""

    status_code = 429
    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"


class UpstreamError(AgenticError):
    """The upstream server failed (5xx, bad answer) after every retry."""

    status_code = 502
    error_type = "upstream_error"
    code = "upstream_error"


class UpstreamConnectionError(UpstreamError):
    """The upstream server could not be reached or cut the connection."""

    code = "upstream_unreachable"


class UpstreamTimeoutError(UpstreamError):
    """The upstream server did not answer within OPENAI_TIMEOUT."""

    status_code = 504
    code = "upstream_timeout"


class InvalidOutputError(AgenticError):
    """The model's answer did not match the requested JSON schema on any attempt."""

    status_code = 502
    error_type = "server_error"
    code = "invalid_model_output"


class OutOfMemoryError(AgenticError):
    """The device ran out of memory; the message lists the settings that lower its use."""

    status_code = 503
    code = "out_of_memory"


class MemoryBudgetError(OutOfMemoryError):
    """Loading a model would pass MODEL_MEMORY_BUDGET_MB; the message names the figures and the fix."""

    code = "memory_budget"

    def __init__(self, message: str, *, param: str | None = None, retry_after: int | None = None) -> None:
        super().__init__(message, param=param)
        self.retry_after = retry_after


class EngineFailedError(AgenticError):
    """A model's worker failed while this request was waiting or running; the worker was restarted."""

    status_code = 503
    error_type = "server_error"
    code = "engine_failed"


class ServerBusyError(AgenticError):
    """A tier's queue is full; the client should retry after a pause."""

    status_code = 503
    error_type = "server_error"
    code = "queue_full"
    retry_after = 1


class ClientAuthenticationError(AgenticError):
    """A request to our API server without a valid Bearer key."""

    status_code = 401
    error_type = "invalid_request_error"
    code = "invalid_api_key"


class AdminDisabledError(AgenticError):
    """An /admin route was called but API_ADMIN_KEYS is not set."""

    status_code = 403
    error_type = "permission_error"
    code = "admin_disabled"


class ReloadRefusedError(AgenticError):
    """A reload found a bad configuration; the old one keeps serving."""

    status_code = 400
    error_type = "invalid_request_error"
    code = "reload_refused"


class PayloadTooLargeError(AgenticError):
    """The request body is larger than API_MAX_BODY_BYTES."""

    status_code = 413
    error_type = "invalid_request_error"
    code = "request_too_large"


class HeadersTooLargeError(AgenticError):
    """The request line and headers are larger than the server takes."""

    status_code = 431
    error_type = "invalid_request_error"
    code = "headers_too_large"


class RequestTimeoutError(AgenticError):
    """The client sent its request body too slowly (API_BODY_TIMEOUT)."""

    status_code = 408
    error_type = "invalid_request_error"
    code = "request_timeout"


class AnalysisRunningError(AgenticError):
    """The console got an upload while another analysis runs (one at a time per server)."""

    status_code = 409
    error_type = "invalid_request_error"
    code = "analysis_running"


class RunNotFoundError(AgenticError):
    """No console analysis run by that id under API_RUNS_DIR, or no such file in it."""

    status_code = 404
    error_type = "invalid_request_error"
    code = "run_not_found"
