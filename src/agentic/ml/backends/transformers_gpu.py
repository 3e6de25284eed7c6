"""Transformers backend: hub ids, local directories or .gguf files, on the GPU (CPU when there is none).

A `.gguf` file is de-quantized by transformers (`gguf_file=`) once and cached as safetensors in
MODEL_CACHE_DIR, because converting it takes a minute and loading the cache takes seconds.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from ...checks import Check
from ...config import Settings, apply_gpu_environment
from ...errors import BackendNotInstalledError, ModelLoadError, ModelNotAvailableError, OutOfMemoryError
from ..base import BaseModelManager, Delta, GenerationParams, Message, Model, ModelSpec, TokenTextStream
from ..chat_templates import ChatTemplate, fallback_template
from ..default_model import EMBEDDED_LABEL, cache_dir_error, embedded_model_path
from ..embeddings import EmbeddingModel
from ..engines.gbnf import tool_gbnf
from ..engines.structured import JsonConstraint, JsonGrammars
from ..engines.transformers_batch import TransformersBatcher, kv_forward
from ..engines.transformers_embed import TransformersEmbeddingModel
from ..generation import GenerationRequest
from ..tiers import Tier
from ..tools import template_input

__all__ = ["GPUModelManager", "TransformersModel"]

_log = logging.getLogger(__name__)
TOP_K = 40  # the same default as llama.cpp, so both local backends sample alike
# One forward pass on this text after loading: a dtype that overflows (Gemma 2/3 in float16) gives NaN logits.
# Also the tokenizer check after a .gguf conversion: transformers must split it as the file's own vocabulary does.
PROBE_TEXT = "The capital of France is Paris. Ünïcödé, 12345!"
OOM_HELP = (
    "CUDA out of memory while {what}. Lower GPU_MAX_MEMORY to leave room for activations, use "
    "GPU_TORCH_DTYPE=float16 (half of float32), pick a smaller GPU_HEAVY_MODEL / GPU_LIGHT_MODEL, or shorten "
    "the prompt and max_tokens (MODEL_CONTEXT_SIZE=2048). On llama.cpp: reduce MODEL_GPU_LAYERS (e.g. 15)."
)


def _import_torch_stack() -> tuple[Any, Any]:
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise BackendNotInstalledError(
            f"{exc.name} module not found: MODEL_BACKEND=transformers_gpu needs torch and transformers. "
            "Solution: pip install 'agentic[gpu]' (torch, transformers, accelerate, gguf)"
        ) from None
    return torch, transformers


class _IncrementalText:
    """Detokenizes one token at a time by decoding the whole answer, so spaces and UTF-8 stay right."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.emitted = ""

    def __call__(self, token: int) -> bytes:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # a character split over tokens: wait for the rest
            return b""
        new, self.emitted = text[len(self.emitted):], text
        return new.encode("utf-8")


class TransformersModel(Model):
    """A causal LM loaded by transformers, generating token by token with its KV cache."""

    backend = "transformers_gpu"

    def __init__(self, name: str, model: Any, tokenizer: Any, settings: Settings) -> None:
        torch, _ = _import_torch_stack()
        self._torch = torch
        limit = getattr(model.config, "max_position_embeddings", None) or settings.model_context_size
        super().__init__(name, min(settings.model_context_size, int(limit)))
        self.model, self.tokenizer = model, tokenizer
        self.device = next(model.parameters()).device
        self.template = self._chat_template()
        first = tokenizer("", add_special_tokens=True).input_ids[:1]  # does the tokenizer start with BOS?
        self._bos = first if first and first[0] == tokenizer.bos_token_id else []
        ends = model.generation_config.eos_token_id
        self.end_tokens = set(ends if isinstance(ends, list) else [ends]) | {tokenizer.eos_token_id}
        # A turn end such as Gemma's <end_of_turn> is one special token that decoding hides: stop on its id.
        vocab = tokenizer.get_vocab()
        self.end_tokens |= {vocab[stop] for stop in self.template.stop if stop in vocab}
        self._grammars: JsonGrammars | None = None
        self._grammars_lock = threading.Lock()
        self.batcher: TransformersBatcher | None = None
        self._forward = kv_forward(model)
        if settings.model_parallel > 1:
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
            self.batcher = TransformersBatcher(lambda cache, **inputs: self._forward(cache, **inputs), self.device, pad,
                                               self.end_tokens, self._sample, settings.model_parallel)
            self.concurrent, self.parallel = True, settings.model_parallel  # calls that arrive together batch

    def _chat_template(self) -> ChatTemplate:
        bos, eos = self.tokenizer.bos_token or "", self.tokenizer.eos_token or ""
        if self.tokenizer.chat_template:
            return ChatTemplate(self.tokenizer.chat_template, bos, eos, (), self.name)
        return fallback_template(str(self.model.config.model_type), bos, eos)

    def _complete(self, prompt: str, params: GenerationParams) -> Iterator[Delta]:
        return self._generate(self.tokenizer(prompt).input_ids, params, "prompt")

    def _chat(self, messages: list[Message], params: GenerationParams) -> Iterator[Delta]:
        messages, tools = template_input(messages, params.tools, self.template.hermes_tools)
        ids = self.template.tokenize(messages, self._tokenize, self._bos, tools)
        return self._generate(ids, replace(params, stop=params.stop + self.template.stop), "messages")

    def _tokenize(self, text: str, special: bool) -> list[int]:
        """Token ids of `text` (no BOS); `special`: whether control-token text becomes control tokens."""
        return list(self.tokenizer(text, add_special_tokens=False, split_special_tokens=not special).input_ids)

    def _constraint(self, params: GenerationParams) -> JsonConstraint | None:
        """The grammar that keeps this generation to its tool calls or response_format's JSON (None: free text)."""
        tools = params.tools if params.tools is not None and params.tools.calls_allowed else None
        schema = params.json_schema
        if tools is None and schema is None:
            return None
        with self._grammars_lock:  # the tokenizer's grammar tables take ~2 s to build: once, on first use
            if self._grammars is None:
                vocab = max(int(self.model.config.vocab_size), len(self.tokenizer))
                self._grammars = JsonGrammars(self.tokenizer, vocab, self.end_tokens)
        if tools is not None:  # the same grammar as llama.cpp's (xgrammar reads GBNF)
            import llama_cpp

            return self._grammars.grammar_constraint(tool_gbnf(llama_cpp.llama_grammar, tools), "tools")
        assert schema is not None
        return self._grammars.constraint(schema)

    def _generate(self, ids: list[int], params: GenerationParams, what: str) -> Iterator[Delta]:
        request = GenerationRequest.resolve(ids, params, self.context_size, what)
        constraint = self._constraint(params)
        stream = TokenTextStream(_IncrementalText(self.tokenizer), self.end_tokens.__contains__, request, params.stop,
                                 params.stop_when)
        tokens: Iterator[int]  # a TokenChannel from the batcher, or this thread's own loop
        if self.batcher is not None:
            tokens = self.batcher.generate(request, constraint)
        else:
            tokens = self._tokens(request, constraint)
        return stream.run(self._out_of_memory_guard(tokens))

    def _out_of_memory_guard(self, tokens: Iterator[int]) -> Iterator[int]:
        try:
            yield from tokens
        except self._torch.cuda.OutOfMemoryError:
            raise OutOfMemoryError(OOM_HELP.format(what="generating")) from None

    def _tokens(self, request: GenerationRequest, constraint: JsonConstraint | None) -> Iterator[int]:
        torch, sampling = self._torch, request.sampling
        generator = torch.Generator(device=self.device)
        generator.manual_seed(sampling.seed if sampling.seed is not None else random.getrandbits(63))
        step, past = torch.tensor([request.prompt], device=self.device), None
        while True:
            with torch.inference_mode():
                logits, past = self._forward(past, input_ids=step)
                logits = logits[0, -1].float()
                if constraint is not None:
                    constraint.mask(logits)
                token = self._sample(logits, sampling.temperature, sampling.top_p, generator)
                if constraint is not None:
                    constraint.accept(token)
            yield token
            step = torch.tensor([[token]], device=self.device)

    def _sample(self, logits: Any, temperature: float, top_p: float, generator: Any) -> int:
        """Greedy at temperature 0; else top-k, then top-p (nucleus) sampling."""
        torch = self._torch
        if temperature == 0:
            return int(logits.argmax())
        values, indices = torch.topk(logits / temperature, min(TOP_K, logits.shape[-1]))
        probs = torch.softmax(values, dim=-1)
        outside = torch.cumsum(probs, dim=-1) - probs >= top_p
        probs = probs.masked_fill(outside, 0.0)
        choice = torch.multinomial(probs / probs.sum(), 1, generator=generator)
        return int(indices[choice])

    def close(self) -> None:
        """Stop the batcher, drop the weights and release cached GPU memory."""
        if self.batcher is not None:
            self.batcher.close()
        self.batcher = None  # it and the forward function hold the model: drop them with it
        del self._forward, self.model
        if self._torch.cuda.is_available():
            self._torch.cuda.empty_cache()


def outputs_are_finite(model: Any, tokenizer: Any) -> bool:
    """One forward pass on PROBE_TEXT: False when any output (the logits, or an embedding model's hidden states)
    is NaN or inf (an overflowing dtype)."""
    torch, _ = _import_torch_stack()
    ids = tokenizer(PROBE_TEXT, return_tensors="pt").input_ids.to(next(model.parameters()).device)
    with torch.inference_mode():
        out = model(input_ids=ids)
    values = out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state
    return bool(torch.isfinite(values).all())


def check_converted_tokenizer(gguf: Path, tokenizer: Any) -> None:
    """Refuse a conversion whose tokenizer splits text unlike the GGUF file's own vocabulary (seen with
    transformers 5.17 on Gemma 3: one token per character), since the weights only know the file's ids."""
    import llama_cpp

    vocab = llama_cpp.Llama(model_path=str(gguf), vocab_only=True, verbose=False)
    try:
        expected = vocab.tokenize(PROBE_TEXT.encode(), add_bos=False, special=False)
    finally:
        vocab.close()
    converted = list(tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"])
    if converted != expected:
        import transformers

        raise ModelLoadError(
            f"transformers {transformers.__version__} converts the tokenizer of {gguf.name} wrongly: "
            f"{PROBE_TEXT!r} is {len(expected)} tokens in the file and {len(converted)} after conversion, so the "
            "model would read garbage. Upgrade transformers (pip install -U transformers; 5.24 converts it "
            "right), or point GPU_HEAVY_MODEL / GPU_LIGHT_MODEL at the original model's hub id or folder."
        )


def _model_available(variable: str, reference: str | None) -> Check:
    """A tier's model is the embedded one, a local path, or a hub id already in the local cache."""
    if reference is None or Path(reference).expanduser().exists():
        return Check(variable, True, reference or "embedded default (Gemma 3 270M)")
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(reference, local_files_only=True)
        return Check(variable, True, f"{reference} is in the local hub cache")
    except Exception:  # noqa: BLE001 - any failure means "not available offline"
        return Check(variable, False, f"{reference} is not available offline",
                     f"huggingface-cli download {reference}, or point {variable} at a local directory")


class GPUModelManager(BaseModelManager):
    """Transformers models: heavy = GPU_HEAVY_MODEL, light = GPU_LIGHT_MODEL (default: the embedded Gemma)."""

    backend = "transformers_gpu"
    tier_settings = ("GPU_HEAVY_MODEL", "GPU_LIGHT_MODEL")

    @classmethod
    def tier_labels(cls, settings: Settings) -> tuple[str, str]:
        """The configured models, or the embedded model where none is set."""
        return settings.gpu_heavy_model or EMBEDDED_LABEL, settings.gpu_light_model or EMBEDDED_LABEL

    @classmethod
    def preflight(cls, settings: Settings) -> list[Check]:
        """torch installed, each tier's model available offline, and a dtype the device supports."""
        try:
            torch, _ = _import_torch_stack()
        except BackendNotInstalledError:
            return [Check("torch / transformers", False, "not installed", "pip install 'agentic[gpu]'")]
        found = [_model_available(Settings.env_name(field), getattr(settings, field))
                 for field in ("gpu_heavy_model", "gpu_light_model")]
        cuda = torch.cuda.is_available()
        dtype_ok = not cuda or settings.gpu_torch_dtype != "bfloat16" or torch.cuda.is_bf16_supported()
        detail = (f"CUDA, {settings.gpu_torch_dtype}" if cuda else
                  f"no CUDA: runs on the CPU in float32 (GPU_TORCH_DTYPE={settings.gpu_torch_dtype} ignored)")
        return [*found, Check("device and dtype", dtype_ok, detail, "use GPU_TORCH_DTYPE=float16 on this GPU")]

    def _resolve(self, tier: Tier) -> ModelSpec:
        field = f"gpu_{tier}_model"
        reference = getattr(self.settings, field)
        if reference is None:
            path = embedded_model_path(self.settings.model_cache_dir)
            return ModelSpec(str(path), path.name, "embedded default")
        local = Path(reference).expanduser()
        key = str(local.resolve()) if local.exists() else reference
        return ModelSpec(key, local.name if local.exists() else reference, Settings.env_name(field))

    def _load(self, spec: ModelSpec) -> Model:
        apply_gpu_environment(self.settings)
        torch, transformers = _import_torch_stack()
        options: dict[str, Any] = {"dtype": torch.float32}
        if torch.cuda.is_available():
            options["dtype"] = getattr(torch, self.settings.gpu_torch_dtype)
            options["device_map"] = "auto"
            budget = f"{self.settings.gpu_max_memory}GiB"
            options["max_memory"] = {index: budget for index in range(torch.cuda.device_count())}
        else:
            _log.warning("No CUDA device: the transformers_gpu backend runs %s on the CPU in float32 "
                         "(GPU_TORCH_DTYPE=%s and GPU_MAX_MEMORY do not apply)",
                         spec.name, self.settings.gpu_torch_dtype)
        _log.info("Loading %s (%s) with transformers", spec.key, spec.origin)
        try:
            directory = self._local_directory(spec, transformers)
            tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
            model = self._load_finite(lambda dtype: transformers.AutoModelForCausalLM.from_pretrained(
                directory, **{**options, "dtype": dtype}).eval(), tokenizer, options["dtype"], spec)
        except torch.cuda.OutOfMemoryError:
            raise OutOfMemoryError(OOM_HELP.format(what=f"loading {spec.name}")) from None
        return TransformersModel(spec.name, model, tokenizer, self.settings)

    def _load_finite(self, load: Callable[[Any], Any], tokenizer: Any, dtype: Any, spec: ModelSpec) -> Any:
        """`load(dtype)`, checked for NaN/inf outputs: in float16 (Gemma 2/3 overflow there) it loads again in
        bfloat16 where the GPU has it; otherwise it refuses with the setting to change, rather than answer with
        padding tokens (or NaN embeddings)."""
        torch, _ = _import_torch_stack()
        model = load(dtype)
        if outputs_are_finite(model, tokenizer):
            return model
        del model
        if dtype == torch.float16 and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            _log.warning("GPU_TORCH_DTYPE=float16 overflows in %s (NaN outputs): loaded in bfloat16 instead. "
                         "Set GPU_TORCH_DTYPE=bfloat16 to load it that way directly.", spec.name)
            model = load(torch.bfloat16)
            if outputs_are_finite(model, tokenizer):
                return model
        setting = self.settings.gpu_torch_dtype
        fix = ("use GPU_TORCH_DTYPE=float32 (this GPU has no bfloat16)" if setting == "float16"
               else "check the model files (a damaged download gives NaN weights)")
        raise ModelLoadError(f"{spec.origin}: {spec.name} computes NaN/inf outputs in {setting} "
                             f"(GPU_TORCH_DTYPE={setting}): {fix}.", param="GPU_TORCH_DTYPE")

    @classmethod
    def embedding_label(cls, settings: Settings) -> str:
        """GPU_EMBEDDING_MODEL, or the embedded model."""
        return settings.gpu_embedding_model or EMBEDDED_LABEL

    def _load_embedding(self) -> EmbeddingModel:
        reference = self.settings.gpu_embedding_model
        if reference is None:
            path = embedded_model_path(self.settings.model_cache_dir)
            spec = ModelSpec(str(path), path.name, "embedded default")
        else:
            local = Path(reference).expanduser()
            spec = ModelSpec(str(local.resolve()) if local.exists() else reference,
                             local.name if local.exists() else reference, "GPU_EMBEDDING_MODEL")
        torch, transformers = _import_torch_stack()
        directory = self._local_directory(spec, transformers)
        dtype = getattr(torch, self.settings.gpu_torch_dtype) if torch.cuda.is_available() else torch.float32
        device = "cuda" if torch.cuda.is_available() else "cpu"
        _log.info("Loading %s for embeddings with transformers", spec.key)
        tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
        model = self._load_finite(lambda dtype: transformers.AutoModel.from_pretrained(
            directory, dtype=dtype).to(device).eval(), tokenizer, dtype, spec)
        return TransformersEmbeddingModel(spec.name, model, tokenizer, self.settings.model_context_size)

    def _local_directory(self, spec: ModelSpec, transformers: Any) -> str:
        """A directory transformers can load: a converted .gguf cache, a local folder or a hub snapshot."""
        path = Path(spec.key)
        if path.is_file() and path.suffix == ".gguf":
            return str(self._converted(path, transformers))
        if path.is_dir():
            return str(path)
        return self._hub_snapshot(spec)

    def _converted(self, gguf: Path, transformers: Any) -> Path:
        """De-quantize a .gguf once into MODEL_CACHE_DIR and reuse the result."""
        stat = gguf.stat()
        cache_dir = self.settings.model_cache_dir
        target = cache_dir / "transformers" / f"{gguf.stem}-{stat.st_size}-{stat.st_mtime_ns}"
        try:  # an unusable cache folder fails now, not after a minute of conversion
            if (target / "config.json").is_file():
                return target
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise cache_dir_error(cache_dir, exc) from None
        _log.info("Converting %s for transformers into %s (once; later loads take seconds)", gguf, target)
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        check_converted_tokenizer(gguf, tokenizer)
        model = transformers.AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        # The tensors are already de-quantized to float32; only the GGUF marker blocks saving them.
        model.hf_quantizer = None
        model.config.__dict__.pop("quantization_config", None)
        partial = target.with_name(target.name + ".partial")
        try:
            model.save_pretrained(partial)
            tokenizer.save_pretrained(partial)
            partial.rename(target)
        except OSError as exc:  # read-only or full cache folder
            raise cache_dir_error(cache_dir, exc) from None
        return target

    def _hub_snapshot(self, spec: ModelSpec) -> str:
        """The local snapshot of a hub id, downloading it when the hub can be reached."""
        from huggingface_hub import snapshot_download

        try:
            return snapshot_download(spec.key, local_files_only=True)
        except Exception:  # noqa: BLE001 - not cached yet: try the hub next
            pass
        try:
            return snapshot_download(spec.key)
        except Exception as exc:  # noqa: BLE001 - hub errors come in many types; all mean "not available"
            raise ModelNotAvailableError(
                f"{spec.origin}={spec.key!r} is not available offline and could not be downloaded "
                f"({type(exc).__name__}). Download it first (huggingface-cli download {spec.key}) or set "
                f"{spec.origin} to a local directory or .gguf file.", param=spec.origin,
            ) from None
