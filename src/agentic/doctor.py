"""`agentic doctor`: preflight checks of the configured backend, each with the fix when it fails."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from .config import Settings, setting_sources
from .errors import AgenticError
from .ml.default_model import embedded_model_path
from .ml.gguf import gguf_parts

__all__ = ["Check", "gpu_visible", "run_checks"]

@dataclass(frozen=True)
class Check:
    """One line of the report: what was checked, whether it passed, what to do if not."""

    name: str
    ok: bool
    detail: str
    fix: str = ""


def gpu_visible() -> bool:
    """Whether this machine shows an NVIDIA GPU (driver device node or nvidia-smi)."""
    return Path("/dev/nvidia0").exists() or shutil.which("nvidia-smi") is not None


def _available_memory_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _gguf_files(path: Path) -> tuple[list[Path], list[Path]]:
    """All parts of a (possibly split) GGUF model: (present, missing)."""
    parts = gguf_parts(path)
    return [p for p in parts if p.is_file()], [p for p in parts if not p.is_file()]


def _magic(path: Path) -> bytes:
    with path.open("rb") as file:
        return file.read(4)


def _check_gguf(variable: str, path: Path) -> Check:
    present, missing = _gguf_files(path)
    if missing:
        return Check(f"{variable} file", False, f"missing: {', '.join(str(p) for p in missing)}",
                     f"ls {path.parent}/ and download the missing part(s), or fix {variable}")
    bad = [p for p in present if _magic(p) != b"GGUF"]
    if bad:
        return Check(f"{variable} file", False, f"{bad[0]} does not start with the GGUF magic bytes",
                     "download the file again (a partial download or an HTML error page looks like this)")
    size = sum(p.stat().st_size for p in present)
    return Check(f"{variable} file", True, f"{path} ({len(present)} part(s), {size / 2**20:.0f} MiB)")


def _llama_cpp_checks(settings: Settings) -> list[Check]:
    checks, sources, sizes = [], setting_sources(settings), {}
    for field in ("model_7b_path", "model_1b_path"):
        variable, path = Settings.env_name(field), getattr(settings, field)
        if sources[field] == "default" and not path.is_file():
            path = embedded_model_path(settings.model_cache_dir)
        check = _check_gguf(variable, path)
        checks.append(check)
        if check.ok:
            sizes[str(path.resolve())] = sum(p.stat().st_size for p in _gguf_files(path)[0])
    available = _available_memory_bytes()
    if available is not None and sizes:
        needed = sum(sizes.values()) * 1.2  # weights plus KV cache and buffers, roughly
        checks.append(Check("memory", needed < available,
                            f"models need about {needed / 2**30:.1f} GiB, {available / 2**30:.1f} GiB available",
                            "use smaller quantizations, point both tiers at one file, or lower MODEL_PARALLEL / "
                            "MODEL_CONTEXT_SIZE"))
    checks.append(_gpu_build_check(settings))
    return checks


def _gpu_build_check(settings: Settings) -> Check:
    import llama_cpp

    gpu_build = bool(llama_cpp.llama_supports_gpu_offload())
    if settings.model_gpu_layers == 0:
        return Check("GPU offload", True, "MODEL_GPU_LAYERS=0: CPU only")
    if gpu_visible() and not gpu_build:
        return Check("GPU offload", False,
                     f"a GPU is visible and MODEL_GPU_LAYERS={settings.model_gpu_layers}, but this llama-cpp-python "
                     "was built without GPU support: the GPU is silently unused",
                     'CMAKE_ARGS="-DGGML_CUDA=on" pip install llama-cpp-python --force-reinstall --no-cache-dir')
    if not gpu_visible():
        return Check("GPU offload", True, f"no GPU visible: MODEL_GPU_LAYERS={settings.model_gpu_layers} is ignored")
    return Check("GPU offload", True, f"GPU build, {settings.model_gpu_layers} layers offloaded")


def _openai_checks(settings: Settings) -> list[Check]:
    from .ml.openai_model_manager import OpenAIModelManager

    try:
        manager = OpenAIModelManager(settings)
    except AgenticError as exc:
        return [Check("OpenAI client", False, exc.message.splitlines()[0], "see the message")]
    checks = []
    try:
        listed = manager.served_models()  # one models.list per server serves every check below
    finally:
        manager.close()
    for url, names in listed.items():
        if isinstance(names, AgenticError):
            fix = names.message.partition("\n")[2] or "check OPENAI_BASE_URL, OPENAI_API_KEY and the network"
            checks.append(Check(f"OpenAI server {url}", False, names.message.splitlines()[0], fix))
            continue
        checks.append(Check(f"OpenAI server {url}", True, "answers and accepts the key"))
        for field in ("openai_heavy_model", "openai_light_model"):
            name = getattr(settings, field)
            found = name in names
            checks.append(Check(Settings.env_name(field), found,
                                f"{name!r} is {'' if found else 'not '}listed by {url}",
                                f"pick one of: {', '.join(sorted(names)[:8])}"))
    return checks


def _transformers_checks(settings: Settings) -> list[Check]:
    try:
        import torch
    except ImportError:
        return [Check("torch / transformers", False, "not installed", "pip install 'agentic[gpu]'")]
    checks = []
    for field in ("gpu_heavy_model", "gpu_light_model"):
        reference = getattr(settings, field)
        variable = Settings.env_name(field)
        if reference is None or Path(reference).expanduser().exists():
            checks.append(Check(variable, True, reference or "embedded default (Gemma 3 270M)"))
            continue
        from huggingface_hub import snapshot_download

        try:
            snapshot_download(reference, local_files_only=True)
            checks.append(Check(variable, True, f"{reference} is in the local hub cache"))
        except Exception:  # noqa: BLE001 - any failure means "not available offline"
            checks.append(Check(variable, False, f"{reference} is not available offline",
                                f"huggingface-cli download {reference}, or point {variable} at a local directory"))
    cuda = torch.cuda.is_available()
    dtype_ok = not cuda or settings.gpu_torch_dtype != "bfloat16" or torch.cuda.is_bf16_supported()
    detail = (f"CUDA, {settings.gpu_torch_dtype}" if cuda else
              f"no CUDA: runs on the CPU in float32 (GPU_TORCH_DTYPE={settings.gpu_torch_dtype} ignored)")
    checks.append(Check("device and dtype", dtype_ok, detail, "use GPU_TORCH_DTYPE=float16 on this GPU"))
    return checks


BACKEND_CHECKS: dict[str, Callable[[Settings], list[Check]]] = {
    "llama_cpp": _llama_cpp_checks,
    "openai": _openai_checks,
    "transformers_gpu": _transformers_checks,
}


def run_checks(settings: Settings) -> list[Check]:
    """Every check for the configured backend, then for each MODEL_FALLBACK backend (names prefixed)."""
    checks = [Check("settings", True, f"MODEL_BACKEND={settings.model_backend}"
                    + (f", MODEL_FALLBACK={settings.model_fallback}" if settings.fallback_backends else "")),
              *BACKEND_CHECKS[settings.model_backend](settings)]
    for backend in settings.fallback_backends:
        fallback = settings.model_copy(update={"model_backend": backend})
        checks += [replace(check, name=f"fallback {backend}: {check.name}")
                   for check in BACKEND_CHECKS[backend](fallback)]
    return checks
