"""Continuous batching for llama.cpp: many sequences share every `llama_decode` call.

One worker thread per loaded model owns a llama.cpp context with `n_seq_max` sequences. Each step it
admits waiting requests into free sequence ids, puts the next prompt chunk of new sequences and the
last sampled token of running ones into one `llama_batch`, decodes once, and samples every sequence
with its own sampler chain (step_sampler.py: temperature, top-p, seed, grammar). Tokens go back to each caller through
its `TokenChannel`; a caller that stops reading (stop sequence, disconnect) cancels its sequence, which
frees its KV cells at the next step. New requests join between steps.
"""

from __future__ import annotations

import atexit
import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from ...errors import AgenticError, EngineFailedError, ModelClosedError, ModelLoadError
from ..generation import GenerationRequest, SamplingSpec
from .channel import TokenChannel
from .grammar_sampler import Grammar
from .host_cells import HostCells
from .jump_forward import JsonJump
from .kv_cells import KvCells
from .prefix_cache import Placement, PrefixCache
from .runaway import RunawayGuard
from .sequence import Sequence, in_cells
from .step_batch import StepBatch, gap_fillers
from .step_sampler import StepSampler

__all__ = ["BatchEngine", "Grammar", "SamplingSpec", "held_budget"]

_log = logging.getLogger(__name__)
OFFLOAD_AFTER = 0.1  # seconds idle before held cells start going to host memory, one slot each time


def held_budget(slots: int, context_per_slot: int) -> int:
    """Tokens the prefix cache keeps of finished sequences in one KV buffer: a quarter of it, at least a slot's."""
    return max(context_per_slot, slots * context_per_slot // 4)


def _as_request_error(exc: BaseException) -> AgenticError:
    """What the caller of a failed sequence gets: our own errors as they are, anything else as a 503."""
    if isinstance(exc, AgenticError):
        return exc
    return EngineFailedError(f"llama.cpp failed on this request ({type(exc).__name__}: {str(exc)[:200]}); "
                             "other requests were not affected. Retry, or report the request if it keeps failing.")


class BatchEngine:
    """Runs up to `slots` generations at once on one llama.cpp model."""

    def __init__(self, llama: Any, slots: int, context_per_slot: int, threads: int, *,
                 piece: Callable[[int], bytes], batch_size: int = 512, prefix_cache: bool = True,
                 flash_attention: bool = True, unified: bool = True) -> None:
        """`piece`: a token's bytes (the backend's cached detokenizer), for jump-forward to follow the text.
        `unified`: one KV buffer for all sequences, else one per sequence (step_batch.py says what that asks)."""
        import llama_cpp

        self._lib = llama_cpp
        self._llama = llama
        self._vocab = llama._model.vocab
        self.slots = slots
        self.context_per_slot = context_per_slot
        self.batch_size = max(batch_size, slots)
        params = llama_cpp.llama_context_params.from_buffer_copy(llama.context_params)  # same kernels as Llama
        params.n_ctx = slots * context_per_slot
        params.n_batch = params.n_ubatch = self.batch_size
        params.n_seq_max = slots
        params.n_threads = params.n_threads_batch = threads
        # Unified (the default): a prefix shared by several sequences is stored once, and a step that mixes a
        # prompt chunk, decode tokens and jump-forward's forced tokens is one ubatch; but every decode token's
        # attention reads every sequence's cells (masked), about 11% of the throughput of 16 x 256-token answers
        # (README, "KV layout"). One stream per sequence avoids that and pays in splits (step_batch.py).
        self.unified = unified
        params.kv_unified = unified
        params.swa_full = False  # sliding-window layers keep the window behind each sequence only (kv_cells.py)
        params.flash_attn_type = (llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO if flash_attention
                                  else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        self._ctx = llama_cpp.llama_init_from_model(llama._model.model, params)
        if not self._ctx:
            raise ModelLoadError(
                f"llama.cpp could not create a context for {slots} parallel sequences of {context_per_slot} "
                "tokens. Lower MODEL_PARALLEL or MODEL_CONTEXT_SIZE.")
        self.cells = KvCells(llama_cpp, self._ctx, llama._model.model, unified)
        self._waiting: deque[Sequence] = deque()
        self._running: dict[int, Sequence] = {}
        # Per sequence, a slot's held cells are in its own stream and cost no other sequence's decode. Unified, up
        # to a quarter of the cells (`held_budget`) stay held in place after their sequences end; held cells widen
        # every decode's attention (up to the last used cell: +4% on one stream's decode after 16 x 256 answers),
        # so once the engine idles they are saved to host memory and freed (`self.host`, as much again), as
        # llama-server's --cache-idle-slots does. Without flash attention llama.cpp stores V transposed, which
        # makes saving slow: then held cells stay in place.
        budget = held_budget(slots, context_per_slot)
        self.cache = PrefixCache(prefix_cache, budget=budget if unified else None, compact=not unified)
        self.host = HostCells(self.cells, self.cache, budget) if unified and prefix_cache and flash_attention else None
        end_of_turn = llama_cpp.llama_vocab_eot(self._vocab)
        self._end = end_of_turn if end_of_turn >= 0 else llama_cpp.llama_vocab_eos(self._vocab)
        # Samples every due sequence after each decode, half of them on a helper thread (step_sampler.py)
        self.sampler = StepSampler(llama, self._ctx, piece=piece, end=self._end, room=self.batch_size // slots,
                                   threads=threads)
        self._batch = StepBatch(llama_cpp, self.batch_size, filler=self._end)
        self.dripped = 0  # forced tokens fed in a later step than they were forced (per-sequence KV only)
        self.unshared = 0  # sequences given cells of their own to make room (see _decode)
        self._wake = threading.Condition()
        self._closed = self._released = False
        self.restarts = 0  # times the worker failed outside any one sequence and started over
        self._start_worker()
        atexit.register(self.close)  # stop the worker before llama.cpp is torn down at exit

    def compile_grammar(self, text: str, root: str, budget: float) -> Grammar:
        """A grammar for one sequence, compiled in the calling (request) thread."""
        return Grammar(self._lib, self._vocab, text, root, budget)

    def generate(self, request: GenerationRequest, grammar: Grammar | None = None,
                 jump: JsonJump | None = None, avoid: tuple[int, ...] = ()) -> TokenChannel:
        """Token ids of one sequence as they are sampled; closing the channel cancels it.

        The engine owns `grammar` from here on and frees it with the sequence; with `jump` (which needs
        `grammar`), the text the JSON schema forces is written without sampling it (engines/jump_forward.py).
        No token of `avoid` is sampled first, unless the grammar allows nothing else.
        """
        channel = TokenChannel(lambda: self._worker.is_alive(), self._nudge)
        channel.cached_tokens = 0  # until the prefix cache places it
        sequence = Sequence(list(request.prompt), request.limit, request.sampling, channel, grammar=grammar,
                            jump=jump if grammar is not None else None, avoid=avoid,
                            guard=RunawayGuard() if grammar is not None else None, checkpoint=request.parting)
        with self._wake:
            if self._closed:
                if grammar is not None:
                    grammar.close()
                raise ModelClosedError()
            if not self._worker.is_alive():  # it cannot die from Python errors (see _run); should it die all the
                self._fail_all("stopped")  # same, no caller is left waiting on a dead thread
                self._start_worker()
            self._waiting.append(sequence)
            self._wake.notify()
        return channel

    def _nudge(self) -> None:
        """Wake the worker: a reader cancelled its sequence."""
        with self._wake:
            self._wake.notify()

    @property
    def alive(self) -> bool:
        """Whether the worker thread runs (it restarts itself after a failure; False only if that failed)."""
        return self._worker.is_alive()

    @property
    def threads(self) -> int:
        """Threads the engine's context really uses."""
        return int(self._lib.llama_n_threads(self._ctx))

    @property
    def context_tokens(self) -> int:
        """KV cache size of the engine's context, all sequences together."""
        return int(self._lib.llama_n_ctx(self._ctx))

    @property
    def forced_tokens(self) -> int:
        """Tokens jump-forward wrote without sampling them (the end of turn not counted)."""
        return self.sampler.forced_tokens

    @property
    def sampled_aside(self) -> int:
        """Tokens sampled on the helper thread."""
        return self.sampler.sampled_aside

    @property
    def active(self) -> int:
        """Sequences running or waiting."""
        return len(self._running) + len(self._waiting)

    def close(self) -> None:
        """Stop the worker, end every sequence and free the context (once; later calls do nothing)."""
        atexit.unregister(self.close)
        with self._wake:
            if self._released:
                return
            self._released = self._closed = True
            self._wake.notify()
        self._worker.join()
        self.sampler.close()
        self._batch.free()
        self._lib.llama_free(self._ctx)

    # --- the worker thread -------------------------------------------------------------------------

    def _start_worker(self) -> None:
        self._worker = threading.Thread(target=self._run, name="llama-batch", daemon=True)
        self._worker.start()

    def _run(self) -> None:
        """The worker: the batching loop, started over after any failure that escapes a single sequence.

        Such a failure ends every waiting and running request at once with a 503 (their state cannot be
        trusted), clears the KV cache, counts a restart and goes on serving.
        """
        with self._wake:
            self._warm_up()
        while True:
            try:
                self._loop()
                return
            except BaseException as exc:  # noqa: BLE001 - the worker must outlive any error
                _log.exception("llama.cpp worker failed; ending its requests and starting over")
                with self._wake:
                    self._fail_all(f"failed ({type(exc).__name__})")

    def _fail_all(self, what: str) -> None:
        """End every waiting and running sequence with a 503, clear the KV cache, count a restart."""
        self.restarts += 1
        error = EngineFailedError(f"The model's worker {what} while this request was waiting or running; it was "
                                  "restarted. Retry the request.")
        for sequence in [*self._running.values(), *self._waiting]:
            self._finish(sequence, error)
        self._running.clear()
        self._waiting.clear()
        self.cells.clear()
        self.cache.forget()
        if self.host is not None:
            self.host.store.clear()

    def _loop(self) -> None:
        while True:
            with self._wake:
                self._drop_cancelled()
                self._admit()
                while not self._running and not self._closed:
                    if not self._wake.wait(self._idle_wait()) and self.host:  # idle: a held slot to host memory
                        self.host.offload_oldest()
                    self._drop_cancelled()
                    self._admit()
                if self._closed:
                    for sequence in [*self._running.values(), *self._waiting]:
                        self._finish(sequence)
                    return
                running = (list(self._running.values()) if self.unified  # per stream: consecutive ids
                           else [self._running[slot] for slot in sorted(self._running)])
            try:
                self._step(running)
            except Exception as exc:  # noqa: BLE001 - the decode all of them shared failed
                _log.exception("llama.cpp batch step failed")
                with self._wake:
                    for sequence in running:
                        self._finish(sequence, _as_request_error(exc))

    def _admit(self) -> None:
        free = sorted(set(range(self.slots)) - set(self._running))
        while free and self._waiting:
            sequence = self._waiting.popleft()
            if sequence.channel.cancelled:
                self._finish(sequence)
                continue
            try:
                sequence.sampler = self.sampler.make(sequence.sampling)
            except Exception as exc:  # noqa: BLE001 - this request fails, the batch goes on
                self._finish(sequence, _as_request_error(exc))
                continue
            placement = self.cache.place(sequence.prompt, free,
                                         {slot: in_cells(other) for slot, other in self._running.items()},
                                         self.cells.serves)
            if self.host is not None:
                placement, sequence.checkpoint = self.host.place(sequence.prompt, placement, sequence.checkpoint)
            else:
                sequence.checkpoint = 0
            self._seat(sequence, placement)
            free.remove(placement.slot)
            self._running[placement.slot] = sequence

    def _seat(self, sequence: Sequence, placement: Placement) -> None:
        """Give `sequence` its slot's cells: the reused prefix kept (or shared from the donor), the rest dropped."""
        keep = self.cells.seat(placement.slot, placement.keep, placement.donor)
        if placement.donor is not None and self.unified:  # cells held by two sequences (see _decode)
            sequence.shares = True
            if placement.donor in self._running:
                self._running[placement.donor].shares = True
        sequence.seq_id, sequence.fed, sequence.cached = placement.slot, keep, keep
        sequence.channel.cached_tokens = keep

    def _warm_up(self) -> None:
        """One decode before the first request, as llama-server does at start: llama.cpp's first decode sets up
        what later ones reuse (the first request's time to first token was 36-50 ms against 24 ms after). On the
        worker thread, as every decode: in llama.cpp's OpenMP build a decode on another thread left a second team
        of compute threads spinning beside the worker's (every request 40-55 ms)."""
        lib = self._lib
        tokens = (lib.llama_token * 2)(*(max(token, 0) for token in (lib.llama_vocab_bos(self._vocab), self._end)))
        lib.llama_decode(self._ctx, lib.llama_batch_get_one(tokens, 2))
        self.cells.clear()

    def _idle_wait(self) -> float | None:
        """How long the idle worker waits for work: until it comes, or `OFFLOAD_AFTER` when held cells can go to
        host memory."""
        return OFFLOAD_AFTER if self.host is not None and self.cache.holders() else None

    def _drop_cancelled(self) -> None:
        for sequence in [s for s in self._running.values() if s.channel.cancelled]:
            self._finish(sequence)
        kept = deque(s for s in self._waiting if not s.channel.cancelled)
        for sequence in self._waiting:
            if sequence.channel.cancelled:
                self._finish(sequence)
        self._waiting = kept

    def _finish(self, sequence: Sequence, error: BaseException | None = None) -> None:
        """Free the sequence's KV cells and sampler; tell its reader it is over (with `error`, if it failed)."""
        if self._running.get(sequence.seq_id) is sequence:
            del self._running[sequence.seq_id]
            if error is None and self.cache.enabled:  # its cells stay, for a later prompt with that prefix
                for slot in self.cache.hold(sequence.seq_id, in_cells(sequence)):
                    self.cells.clear(slot)
            else:
                self.cells.clear(sequence.seq_id)
                self.cache.forget(sequence.seq_id)
        if sequence.sampler is not None:
            self._lib.llama_sampler_free(sequence.sampler)
            sequence.sampler = None
        if sequence.grammar is not None:
            sequence.grammar.close()
            sequence.grammar = None
        sequence.channel.end(error)

    def _step(self, running: list[Sequence]) -> None:
        """One llama_decode over every running sequence, then one sampled token for each that is due."""
        outputs = self._fill(running)
        batch, lib = self._batch, self._lib
        if batch.n_tokens == 0:
            return
        status = self._decode(running)
        batch.drop_fillers(self.cells.memory)
        if status != 0:
            raise EngineFailedError(f"llama_decode failed with status {status} (KV cache full?). Lower "
                                    "MODEL_PARALLEL or the prompt sizes.")
        with self._wake:
            for sequence, _ in outputs:  # what they had pending is in their cells now, cancelled or not
                sequence.pending = []
            for sequence in running:
                if sequence.checkpoint and sequence.fed == sequence.checkpoint and self.host:
                    self.host.save_checkpoint(sequence.seq_id, sequence.prompt[:sequence.checkpoint])
                    sequence.checkpoint = 0
            outputs = [(sequence, index) for sequence, index in outputs if not sequence.channel.cancelled]
            presampled = self.sampler.presample(outputs)
            for sequence, index in outputs:
                try:
                    tokens = presampled.get(sequence.seq_id) or self.sampler.next_tokens(sequence, index)
                except Exception as exc:  # noqa: BLE001 - this sequence fails, the others go on
                    self._finish(sequence, _as_request_error(exc))
                    continue
                sequence.generated += len(tokens)
                sequence.output += tokens
                sequence.pending = tokens
                for token in tokens:
                    sequence.channel.put(token)
                if lib.llama_vocab_is_eog(self._vocab, tokens[-1]) or sequence.generated >= sequence.limit:
                    self._finish(sequence)

    def _decode(self, running: list[Sequence]) -> int:
        """llama_decode of the step's batch. With one KV buffer and no room (1), the cells kept for reuse go first;
        then, youngest first, each sequence sharing cells gets a copy of its own (saved and written back): cells
        that every sequence sharing them has left a window behind are held by none of them alone, so llama.cpp
        cannot give them to new tokens, and the copies free them."""
        lib, batch = self._lib, self._batch.batch
        status = lib.llama_decode(self._ctx, batch)
        if status != 1 or not self.unified:
            return status
        if self.cache.holders():
            for slot in self.cache.holders():
                self.cells.clear(slot)
            self.cache.forget()
            status = lib.llama_decode(self._ctx, batch)
        for sequence in [s for s in reversed(running) if s.shares]:
            if status != 1:
                break
            self._unshare(sequence)
            status = lib.llama_decode(self._ctx, batch)
        return status

    def _unshare(self, sequence: Sequence) -> None:
        """Give `sequence` cells of its own: its state saved, then written back into free cells."""
        if not self.cells.unshare(sequence.seq_id):
            raise EngineFailedError("The KV cache has no room for this step's tokens. Lower MODEL_PARALLEL or the "
                                    "prompt sizes.")
        sequence.shares = False
        self.unshared += 1

    def _fill(self, running: list[Sequence]) -> list[tuple[Sequence, int]]:
        """Put the step's tokens in the batch: the next prompt chunk of new sequences, the tokens sampled (and
        forced) last step of running ones. Returns the sequences to sample, with the batch index of their logits."""
        batch = self._batch
        batch.reset([] if self.unified else self._gap_fillers(running))
        drip = not self.unified and len(running) > 1
        outputs: list[tuple[Sequence, int]] = []
        budget = self.batch_size - sum(len(s.pending) for s in running if s.fed == len(s.prompt))
        for sequence in running:
            if sequence.fed < len(sequence.prompt):  # (part of) the prompt, a chunk ending at its checkpoint
                end = sequence.checkpoint if sequence.fed < sequence.checkpoint else len(sequence.prompt)
                take = min(end - sequence.fed, max(budget, 0))
                budget -= take
                for offset in range(take):
                    last = sequence.fed + offset == len(sequence.prompt) - 1
                    index = batch.add(sequence.prompt[sequence.fed + offset], sequence.fed + offset,
                                      sequence.seq_id, last)
                sequence.fed += take
                if take and sequence.fed == len(sequence.prompt):
                    outputs.append((sequence, index))
                continue
            # the token sampled last step and any the schema forced after it (only the last one's logits matter)
            start = len(sequence.prompt) + sequence.generated - len(sequence.pending)
            feed = sequence.pending[:1] if drip else sequence.pending
            for offset, token in enumerate(feed):
                index = batch.add(token, start + offset, sequence.seq_id, offset == len(sequence.pending) - 1)
            if len(feed) == len(sequence.pending):
                outputs.append((sequence, index))
            else:  # the rest next step (its cells are not written yet, so it stays pending)
                sequence.pending = sequence.pending[1:]
                self.dripped += 1
        return outputs

    def _gap_fillers(self, running: list[Sequence]) -> list[tuple[int, int]]:
        """Per sequence: the fillers of the free slots between running ones (step_batch.gap_fillers), each after
        llama.cpp's own last position in that slot."""
        slots = [sequence.seq_id for sequence in running]
        ends = {slot: self.cells.last(slot) + 1
                for slot in range(min(slots) + 1, max(slots)) if slot not in self._running}
        return gap_fillers(slots, ends, max(sequence.extent for sequence in running))
