"""Embeddings from a GGUF model with llama.cpp: mean-pooled, normalized, many inputs per `llama_decode`.

One worker thread owns an embedding context (`n_batch` = `n_ubatch` = the context, so an input of up to
the context size is pooled whole). Callers queue their token lists; each pass the worker takes every
queued caller's inputs and packs them, in order, into as few decode calls as the context allows: the
inputs of one request, and of concurrent requests, are embedded together (in passes of up to PASS_TOKENS
tokens), not one by one.
"""

from __future__ import annotations

import atexit
import logging
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import EngineFailedError, ModelClosedError
from ..embeddings import normalized

__all__ = ["LlamaEmbedder"]

_log = logging.getLogger(__name__)
# Tokens packed into one decode call. The inputs share one KV buffer, so every token's attention spans the whole
# pass (masked): measured on 8 concurrent requests of 32 short texts, 512-token passes embed 23 inputs/s where
# 4,096-token passes managed 11-14. A longer input is decoded alone.
PASS_TOKENS = 512
_LIVENESS_CHECK = 1.0  # seconds a caller waits before checking that the worker still runs


@dataclass
class _Job:
    inputs: list[list[int]]
    vectors: list[list[float]] = field(default_factory=list)
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)


class LlamaEmbedder:
    """Pooled embeddings of token lists; thread-safe, batching across callers."""

    def __init__(self, path: Path, context_size: int, threads: int, gpu_layers: int) -> None:
        import llama_cpp

        self._lib = llama_cpp
        self.llama = llama_cpp.Llama(
            model_path=str(path), embedding=True, pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
            n_ctx=context_size, n_batch=context_size, n_ubatch=context_size, n_threads=threads,
            n_threads_batch=threads, n_gpu_layers=gpu_layers, verbose=False,
        )
        self.context_size = context_size
        self.dimensions = int(self.llama.n_embd())
        self._max_sequences = int(self.llama.context_params.n_seq_max)
        self._jobs: deque[_Job] = deque()
        self._wake = threading.Condition()
        self._closed = False
        self.passes = 0  # decode calls made, for tests and benchmarks
        self.pass_tokens = min(PASS_TOKENS, context_size)  # tokens packed into one decode call (a longer input: alone)
        self._worker = threading.Thread(target=self._loop, name="llama-embed", daemon=True)
        self._worker.start()
        atexit.register(self.close)

    def tokenize(self, text: str) -> list[int]:
        """Token ids of `text` as it is embedded (BOS added; control-token text stays text)."""
        return list(self.llama.tokenize(text.encode("utf-8"), add_bos=True, special=False))

    def embed(self, inputs: list[list[int]]) -> list[list[float]]:
        """Normalized vectors of `inputs` (each at most the context size), in order."""
        job = _Job(inputs)
        with self._wake:
            if self._closed:
                raise ModelClosedError()
            self._jobs.append(job)
            self._wake.notify()
        while not job.done.wait(_LIVENESS_CHECK):
            if not self._worker.is_alive():
                raise EngineFailedError("The embedding worker stopped while this request waited; retry the request.")
        if job.error is not None:
            raise job.error
        return job.vectors

    def close(self) -> None:
        """Stop the worker and free the context (once)."""
        atexit.unregister(self.close)
        with self._wake:
            if self._closed:
                return
            self._closed = True
            self._wake.notify()
        self._worker.join()
        self.llama.close()

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._jobs and not self._closed:
                    self._wake.wait()
                if self._closed:
                    for job in self._jobs:
                        job.error = ModelClosedError()
                        job.done.set()
                    return
                jobs = list(self._jobs)
                self._jobs.clear()
            try:
                self._run(jobs)
            except Exception as exc:  # noqa: BLE001 - these callers get the error; the worker goes on
                _log.exception("llama.cpp embedding pass failed")
                for job in jobs:
                    job.error = EngineFailedError(f"llama.cpp failed to embed ({type(exc).__name__}: "
                                                  f"{str(exc)[:200]}); retry the request.")
            finally:
                for job in jobs:
                    job.done.set()

    def _run(self, jobs: list[_Job]) -> None:
        """Every input of `jobs`, packed into decode calls of at most the context's tokens and sequences."""
        pending = deque((job, tokens) for job in jobs for tokens in job.inputs)
        while pending:
            batch: list[tuple[_Job, list[int]]] = []
            used, budget = 0, max(self.pass_tokens, len(pending[0][1]))
            while pending and len(batch) < self._max_sequences and used + len(pending[0][1]) <= budget:
                job, tokens = pending.popleft()
                batch.append((job, tokens))
                used += len(tokens)
            for job, vector in zip((job for job, _ in batch), self._decode([t for _, t in batch]), strict=True):
                job.vectors.append(vector)

    def _decode(self, inputs: list[list[int]]) -> list[list[float]]:
        llama, lib = self.llama, self._lib
        llama._ctx.kv_cache_clear()
        llama._batch.reset()
        for seq_id, tokens in enumerate(inputs):
            llama._batch.add_sequence(tokens, seq_id, True)  # embeddings need every input token as an output
        llama._ctx.decode(llama._batch)
        self.passes += 1
        return [normalized(lib.llama_get_embeddings_seq(llama._ctx.ctx, seq_id)[:self.dimensions])
                for seq_id in range(len(inputs))]
