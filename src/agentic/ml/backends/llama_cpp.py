"""llama.cpp backend (llama-cpp-python): local GGUF models, split files included.

Heavy tier = MODEL_7B_PATH, light tier = MODEL_1B_PATH. When neither is set and the guide's default
paths do not exist, the embedded Gemma 3 270M serves both tiers (loaded once, shared).
"""

from __future__ import annotations

import json
import logging
import random
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

from ... import checks
from ...checks import Check
from ...config import Settings, apply_gpu_environment, setting_sources
from ...errors import (
    BackendNotInstalledError,
    InvalidRequestError,
    ModelClosedError,
    ModelFileNotFoundError,
    ModelLoadError,
)
from ..base import BaseModelManager, Delta, GenerationParams, Message, Model, ModelSpec, TokenTextStream
from ..chat_templates import ChatTemplate, fallback_template
from ..default_model import EMBEDDED_LABEL, embedded_model_path
from ..embeddings import EmbeddingInput, EmbeddingModel
from ..engines.gbnf import object_gbnf, schema_gbnf, tool_gbnf
from ..engines.jump_forward import JsonJump
from ..engines.llama_batch import BatchEngine, held_budget
from ..engines.llama_embed import LlamaEmbedder
from ..engines.prefix_cache import CHECKPOINT_MIN, common_prefix
from ..engines.runaway import Breakers, RunawayProcessor
from ..generation import GenerationRequest
from ..gguf import check_gguf, gguf_footprint_mb
from ..tiers import Tier
from ..tools import template_input

__all__ = ["LlamaCppModel", "ModelManager", "resolve_gguf_path"]

_log = logging.getLogger(__name__)


def _import_llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError:
        raise BackendNotInstalledError(
            "llama_cpp module not found: the llama_cpp backend needs llama-cpp-python. "
            "Install it with: pip install llama-cpp-python"
        ) from None
    return llama_cpp


_PATH_SETTINGS: dict[Tier, str] = {"heavy": "model_7b_path", "light": "model_1b_path"}  # the guide's names
def resolve_gguf_path(settings: Settings, field: str) -> ModelSpec:
    """The GGUF file a tier uses: the configured path, or the embedded model when none is set."""
    path: Path = getattr(settings, field)
    variable = Settings.env_name(field)
    if path.is_file():
        return ModelSpec(str(path.resolve()), path.name, variable)
    if setting_sources(settings)[field] != "default":
        raise ModelFileNotFoundError(
            f"Model file not found: {variable}={path} does not exist"
            f" (looked in {path.expanduser().absolute()}). Check paths exist:\n  ls {path.parent}/\n"
            f"Fix {variable} in .env, or unset it to use the embedded default model.",
            param=variable,
        )
    embedded = embedded_model_path(settings.model_cache_dir)
    _log.info("%s is not set and %s does not exist: using the embedded default model %s", variable, path, embedded)
    return ModelSpec(str(embedded), embedded.name, "embedded default")


def _tier_paths(settings: Settings) -> list[Path]:
    """Each tier's GGUF file as configured; the embedded model's where the setting is unset and its default missing."""
    sources, paths = setting_sources(settings), []
    for field in _PATH_SETTINGS.values():
        path = getattr(settings, field)
        unset = sources[field] == "default" and not path.is_file()
        paths.append(embedded_model_path(settings.model_cache_dir) if unset else path)
    return paths


def _gpu_build_check(settings: Settings) -> Check:
    """MODEL_GPU_LAYERS on a machine with a GPU needs a GPU build of llama-cpp-python (else it is silently unused)."""
    gpu_build = bool(_import_llama_cpp().llama_supports_gpu_offload())
    if settings.model_gpu_layers == 0:
        return Check("GPU offload", True, "MODEL_GPU_LAYERS=0: CPU only")
    if checks.gpu_visible() and not gpu_build:
        return Check("GPU offload", False,
                     f"a GPU is visible and MODEL_GPU_LAYERS={settings.model_gpu_layers}, but this llama-cpp-python "
                     "was built without GPU support: the GPU is silently unused",
                     'CMAKE_ARGS="-DGGML_CUDA=on" pip install llama-cpp-python --force-reinstall --no-cache-dir')
    if not checks.gpu_visible():
        return Check("GPU offload", True, f"no GPU visible: MODEL_GPU_LAYERS={settings.model_gpu_layers} is ignored")
    return Check("GPU offload", True, f"GPU build, {settings.model_gpu_layers} layers offloaded")


class LlamaCppModel(Model):
    """One GGUF model loaded by llama.cpp."""

    backend = "llama_cpp"

    def __init__(self, path: Path, settings: Settings) -> None:
        llama_cpp = _import_llama_cpp()
        self._llama_cpp = llama_cpp
        gpu_layers = settings.model_gpu_layers
        if gpu_layers != 0 and not llama_cpp.llama_supports_gpu_offload():
            _log.info("MODEL_GPU_LAYERS=%s ignored: this llama-cpp-python build has no GPU support "
                      "(reinstall with CMAKE_ARGS=\"-DGGML_CUDA=on\" to use the GPU)", gpu_layers)
            gpu_layers = 0
        batched = settings.model_parallel > 1
        self._pieces: dict[int, bytes] = {}  # token -> its bytes, filled as tokens are first generated
        self._cuts: OrderedDict[str, list[int]] = OrderedDict()  # a chat's tokens up to its last message (_parting)
        self._breaks = Breakers(self._piece)  # for the loop guard of structured answers (engines/runaway.py)
        try:
            # With the batching engine, Llama's own context only tokenizes: keep it small.
            self.llama = llama_cpp.Llama(
                model_path=str(path), n_ctx=256 if batched else settings.model_context_size,
                n_threads=settings.threads, n_threads_batch=settings.threads, n_gpu_layers=gpu_layers, verbose=False,
            )
            self.engine = BatchEngine(self.llama, settings.model_parallel, settings.model_context_size,
                                      settings.threads, piece=self._piece, prefix_cache=settings.model_prefix_cache,
                                      flash_attention=settings.model_flash_attention,
                                      unified=settings.model_kv_unified) if batched else None

        except (ValueError, RuntimeError) as exc:
            raise ModelLoadError(
                f"llama.cpp could not load {path}: {exc}. If memory ran out, reduce MODEL_GPU_LAYERS "
                "(e.g. MODEL_GPU_LAYERS=20 instead of 30) or MODEL_CONTEXT_SIZE (e.g. 2048); if the file "
                "is damaged or not GGUF, download it again."
            ) from None
        super().__init__(path.name, self.engine.context_per_slot if self.engine else self.llama.n_ctx())
        if self.engine is not None:  # the engine batches concurrent calls itself
            self.concurrent, self.parallel = True, self.engine.slots
        self.gpu_layers = gpu_layers
        self.grammar_budget = settings.model_grammar_time_budget
        self.jump_forward = settings.model_jump_forward
        self.template = self._chat_template()
        self._control_starts = _control_starts(self._llama_cpp, self.llama._model.vocab)  # at load, not on a request

    @property
    def alive(self) -> bool:
        """Whether the batching worker runs (always, without one)."""
        return self.engine.alive if self.engine else True

    @property
    def restarts(self) -> int:
        """Times the batching worker failed and started over."""
        return self.engine.restarts if self.engine else 0

    @property
    def forced_tokens(self) -> int:
        """Tokens jump-forward wrote without sampling them (0 without the batching engine)."""
        return self.engine.forced_tokens if self.engine else 0

    @property
    def threads(self) -> int:
        """Threads the loaded context really uses."""
        return self.engine.threads if self.engine else int(self.llama.context_params.n_threads)

    def _chat_template(self) -> ChatTemplate:
        model = self.llama._model
        bos = model.token_get_text(model.token_bos()) if model.token_bos() >= 0 else ""
        eos = model.token_get_text(model.token_eos()) if model.token_eos() >= 0 else ""
        source = self.llama.metadata.get("tokenizer.chat_template")
        if source:
            return ChatTemplate(source, bos, eos, (), self.name)
        architecture = self.llama.metadata.get("general.architecture", "")
        template = fallback_template(architecture, bos, eos)
        _log.info("%s has no chat template: using the %s format", self.name, template.name)
        return template

    def _complete(self, prompt: str, params: GenerationParams) -> Iterator[Delta]:
        tokens = self.llama.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
        return self._generate(tokens, params, "prompt")

    @property
    def continues_messages(self) -> bool:
        """The batching engine continues a final assistant message (its grammar and jump-forward start after it)."""
        return self.engine is not None

    def _chat(self, messages: list[Message], params: GenerationParams) -> Iterator[Delta]:
        model = self.llama._model
        bos = [model.token_bos()] if model.token_bos() >= 0 and model.add_bos_token() else []
        answered = str(messages[-1]["content"]) if params.continue_final else ""
        messages, tools = template_input(messages[:-1] if answered else messages, params.tools,
                                         self.template.hermes_tools)
        # The answer so far follows the prompt that asks for the assistant's turn, as plain text.
        kept = self._tokenize(answered, False) if answered else []
        tokens = self.template.tokenize(messages, self._tokenize, bos, tools, self._plain) + kept
        return self._generate(tokens, replace(params, stop=params.stop + self.template.stop), "messages",
                              answered=answered, kept=kept, parting=self._parting(messages, tools, bos, tokens))

    def _parting(self, messages: list[Message], tools: list[dict[str, Any]] | None, bos: list[int],
                 tokens: list[int]) -> int:
        """Where the prompt's last message begins (what comes before it, a system prompt and the history, other
        prompts likely share), for the engine to save the cells there when it would lose them; 0 when not."""
        host = self.engine.host if self.engine is not None else None
        if (host is None or not host.checkpoints_help or len(tokens) <= CHECKPOINT_MIN or not messages
                or not isinstance(messages[-1].get("content"), str)):
            return 0
        before = [*messages[:-1], {**messages[-1], "content": ""}]
        key = json.dumps([before, tools], sort_keys=True, default=str)  # the same for every question after it
        cut = self._cuts.pop(key, None)
        if cut is None:  # ~3 ms per 1,200 tokens with Gemma's vocabulary: once per system prompt
            cut = self.template.tokenize(before, self._tokenize, bos, tools, self._plain)
        self._cuts[key] = cut
        if len(self._cuts) > 16:
            self._cuts.popitem(last=False)
        return common_prefix(cut, tokens, len(tokens) - 1)

    def _generate(self, tokens: list[int], params: GenerationParams, what: str, *, answered: str = "",
                  kept: Sequence[int] = (), parting: int = 0) -> Iterator[Delta]:
        request = GenerationRequest.resolve(tokens, params, self.context_size, what, parting)
        if self.engine is not None:
            return self._text(self._batched(request, params, answered, kept), request, params)
        sampling = request.sampling
        if sampling.seed is not None:
            # Reusing a cached prompt prefix changes the logits in the last bits; a seed promises the same text.
            self.llama.reset()
        self.llama.set_seed(sampling.seed if sampling.seed is not None else random.getrandbits(31))
        grammar = self._grammar(params)
        guard = [RunawayProcessor(len(request.prompt), self._breaks)] if grammar is not None else None
        generated = self.llama.generate(
            request.prompt, top_k=sampling.top_k, top_p=sampling.top_p, min_p=sampling.min_p,
            temp=sampling.temperature, repeat_penalty=1.0, grammar=grammar,
            logits_processor=self._llama_cpp.LogitsProcessorList(guard) if guard else None,
        )
        return self._text(generated, request, params)

    def _batched(self, request: GenerationRequest, params: GenerationParams, answered: str,
                 kept: Sequence[int]) -> Iterator[int]:
        """The engine's tokens; the grammar and jump-forward first follow `answered` (the answer so far, whose
        tokens `kept` end the prompt)."""
        assert self.engine is not None
        gbnf = self._gbnf(params)
        grammar = self.engine.compile_grammar(gbnf, "root", self.grammar_budget) if gbnf is not None else None
        tools = params.tools is not None and params.tools.calls_allowed
        jump = JsonJump.for_schema(params.json_schema) if self.jump_forward and not tools else None
        if kept and grammar is not None:
            if grammar.force(kept) < len(kept):
                grammar.close()
                raise InvalidRequestError(
                    "continue_final_message: the final assistant message is not the start of an answer that "
                    "response_format allows. Send an answer so far that fits the schema, or no response_format.",
                    param="continue_final_message")
            if jump is not None:
                jump.feed(answered)
        avoid = tuple(dict.fromkeys(self._tokenize(text, False)[0] for text in params.avoid_first))
        return self.engine.generate(request, grammar, jump, avoid)

    def _text(self, generated: Iterator[int], request: GenerationRequest, params: GenerationParams) -> Iterator[Delta]:
        vocab = self.llama._model.vocab
        is_end = self._llama_cpp.llama_vocab_is_eog
        stream = TokenTextStream(self._piece, lambda token: bool(is_end(vocab, token)), request, params.stop,
                                 params.stop_when)
        return stream.run(generated)

    def _piece(self, token: int) -> bytes:
        """One generated token's bytes: the same wherever it occurs, so looked up once (saves a llama.cpp call
        and a buffer per streamed token)."""
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._pieces[token] = self.llama.detokenize([token])
        return piece

    def _grammar(self, params: GenerationParams) -> Any:
        """llama-cpp-python's grammar object for response_format (the unbatched path), or None."""
        gbnf = self._gbnf(params)
        return None if gbnf is None else self._llama_cpp.llama_grammar.LlamaGrammar.from_string(gbnf, verbose=False)

    def _gbnf(self, params: GenerationParams) -> str | None:
        """The grammar of this generation: tool calls, response_format's JSON, or None for free text.

        Schemas were checked against MODEL_SCHEMA_* already; the grammar text is checked against
        MODEL_GRAMMAR_MAX_BYTES before llama.cpp's native parser sees it.
        """
        grammar_module = self._llama_cpp.llama_grammar
        if params.tools is not None and params.tools.calls_allowed:
            gbnf = tool_gbnf(grammar_module, params.tools)
        elif params.json_schema is None:
            return None
        elif not params.json_schema:
            gbnf = object_gbnf(grammar_module)
        else:
            gbnf = schema_gbnf(grammar_module, params.json_schema, "response_format")
        self.schema_limits.check_grammar(gbnf)
        return gbnf

    def _plain(self, text: str) -> bool:
        """Whether `text` holds none of the characters those tokens start with: then it tokenizes the same whether
        or not control-token text is parsed (llama.cpp finds user-defined tokens either way)."""
        return self._control_starts.isdisjoint(text)

    def _tokenize(self, text: str, special: bool) -> list[int]:
        """Token ids of `text` (no BOS); `special`: whether control-token text becomes control tokens."""
        return self.llama.tokenize(text.encode("utf-8"), add_bos=False, special=special)

    def count_tokens(self, text: str) -> int:
        """Tokens `text` takes as a prompt (BOS included)."""
        if self.closed:
            raise ModelClosedError()
        return len(self.llama.tokenize(text.encode("utf-8"), add_bos=True, special=True))

    def close(self) -> None:
        """Stop the engine; free the weights and the contexts."""
        if self.engine is not None:
            self.engine.close()
        self.llama.close()


class LlamaCppEmbeddingModel(EmbeddingModel):
    """A GGUF model's mean-pooled embeddings (its own llama.cpp context; concurrent requests batched)."""

    backend = "llama_cpp"

    def __init__(self, path: Path, settings: Settings) -> None:
        llama_cpp = _import_llama_cpp()
        gpu_layers = settings.model_gpu_layers if llama_cpp.llama_supports_gpu_offload() else 0
        self.engine = LlamaEmbedder(path, settings.model_context_size, settings.threads, gpu_layers)
        self._vocab = int(self.engine.llama.n_vocab())
        super().__init__(path.name, settings.model_context_size, self.engine.dimensions)

    def tokenized(self, item: EmbeddingInput) -> list[int]:
        if isinstance(item, str):
            return self.engine.tokenize(item)
        if max(item) >= self._vocab:
            raise InvalidRequestError(f"input holds token id {max(item)}, but {self.name} has {self._vocab} tokens "
                                      f"(ids 0-{self._vocab - 1}).", param="input")
        return item

    def _embed(self, inputs: list[EmbeddingInput], dimensions: int | None) -> tuple[list[list[float]], int]:
        tokens = cast(list[list[int]], inputs)  # `tokenized` made every input token ids
        return self.engine.embed(tokens), sum(len(each) for each in tokens)

    def close(self) -> None:
        self.engine.close()


class ModelManager(BaseModelManager):
    """llama.cpp models: heavy = MODEL_7B_PATH, light = MODEL_1B_PATH; thread-safe through the lock."""

    backend = "llama_cpp"
    tier_settings = ("MODEL_7B_PATH", "MODEL_1B_PATH")

    @classmethod
    def tier_labels(cls, settings: Settings) -> tuple[str, str]:
        """The configured GGUF paths, or the embedded model where none is set."""
        sources = setting_sources(settings)
        labels = []
        for field in _PATH_SETTINGS.values():
            path = getattr(settings, field)
            labels.append(EMBEDDED_LABEL if sources[field] == "default" and not path.is_file() else str(path))
        return labels[0], labels[1]

    @classmethod
    def preflight(cls, settings: Settings) -> list[Check]:
        """Each tier's GGUF file whole, memory for both models, and a GPU build when a GPU is there."""
        paths = _tier_paths(settings)
        variables = [Settings.env_name(field) for field in _PATH_SETTINGS.values()]
        found = [check_gguf(variable, path) for variable, path in zip(variables, paths, strict=True)]
        unique = {path.resolve() for path, check in zip(paths, found, strict=True) if check.ok}
        available = checks.available_memory_bytes()
        if available is not None and unique:
            kv_tokens = settings.model_parallel * settings.model_context_size
            needed = sum(gguf_footprint_mb(_import_llama_cpp(), path, kv_tokens) for path in unique) * 2**20
            found.append(Check("memory", needed < available,
                               f"models need about {needed / 2**30:.1f} GiB, {available / 2**30:.1f} GiB available",
                               "use smaller quantizations, point both tiers at one file, or lower MODEL_PARALLEL / "
                               "MODEL_CONTEXT_SIZE"))
        return [*found, _gpu_build_check(settings)]

    def _resolve(self, tier: Tier) -> ModelSpec:
        return resolve_gguf_path(self.settings, _PATH_SETTINGS[tier])

    def footprint_mb(self, spec: ModelSpec) -> float:
        """Weights + the KV cache of MODEL_PARALLEL x MODEL_CONTEXT_SIZE tokens (+ a tenth), from the GGUF header;
        with one KV buffer and the prefix cache, the cells of finished sequences kept in host memory too."""
        settings = self.settings
        kv_tokens = settings.model_parallel * settings.model_context_size
        if (settings.model_parallel > 1 and settings.model_kv_unified and settings.model_prefix_cache
                and settings.model_flash_attention):
            kv_tokens += held_budget(settings.model_parallel, settings.model_context_size)
        return gguf_footprint_mb(_import_llama_cpp(), Path(spec.key), kv_tokens)

    def _load(self, spec: ModelSpec) -> Model:
        apply_gpu_environment(self.settings)
        _log.info("Loading %s (%s) with llama.cpp", spec.key, spec.origin)
        return LlamaCppModel(Path(spec.key), self.settings)

    @classmethod
    def embedding_label(cls, settings: Settings) -> str:
        """MODEL_EMBEDDING_PATH, or the embedded model."""
        path = settings.model_embedding_path
        return str(path) if path is not None else EMBEDDED_LABEL

    def _load_embedding(self) -> EmbeddingModel:
        path = self.settings.model_embedding_path
        if path is None:
            path = embedded_model_path(self.settings.model_cache_dir)
        elif not path.is_file():
            raise ModelFileNotFoundError(
                f"Model file not found: MODEL_EMBEDDING_PATH={path} does not exist. Fix it in .env, or unset it to "
                "embed with the embedded default model.", param="MODEL_EMBEDDING_PATH")
        apply_gpu_environment(self.settings)
        _log.info("Loading %s for embeddings with llama.cpp", path)
        return LlamaCppEmbeddingModel(path, self.settings)


def _control_starts(lib: Any, vocab: Any) -> frozenset[str]:
    """The first characters of the tokens llama.cpp finds in text only when told to parse control-token text
    (control and unknown ones: only `<` for Gemma 3; 0.15 s to read its 262k tokens)."""
    parsed = lib.LLAMA_TOKEN_ATTR_CONTROL | lib.LLAMA_TOKEN_ATTR_UNKNOWN
    starts: set[str] = set()
    for token in range(lib.llama_vocab_n_tokens(vocab)):
        if lib.llama_vocab_get_attr(vocab, token) & parsed:
            starts.update(lib.llama_vocab_get_text(vocab, token).decode("utf-8", "replace")[:1])
    return frozenset(starts)
