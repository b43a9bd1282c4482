"""Server-side batching: texts that arrive together are run together.

A request hands the `Batcher` its prepared inputs (token ids, say) with a key, the options a batch must share (beam
size, length penalty, ...). One worker thread takes the oldest waiting request, waits a short window (`window_s`)
for more to arrive unless the batch is already full, adds the waiting requests with the same key in arrival order
up to `max_batch_size` inputs, sorts the inputs by length (fewer pad positions), runs them in chunks of at most
`max_batch_size`, and hands each request its outputs in its own order. The model runs on that one thread: requests
never compete for the cores inside torch or CTranslate2.

Bounds: `submit` refuses with `Overloaded` (the server answers 503 with Retry-After) when more than `max_queue`
inputs would be waiting, so a flood of requests costs memory for at most `max_queue` inputs. A request that gave up
(its per-request timeout) cancels its future, and the worker skips it if it has not started.
"""

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field


class Overloaded(RuntimeError):
    """More inputs are waiting than the queue holds; `retry_after` is a guess, in whole seconds, of when it drains."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class _Request:
    inputs: Sequence
    key: Hashable
    future: Future = field(default_factory=Future)


class Batcher:
    """`run(key, inputs) -> outputs` (one output per input, in order) is called on the worker thread only."""

    def __init__(self, run: Callable[[Hashable, list], list], *, max_batch_size: int = 32, window_s: float = 0.005,
                 max_queue: int = 256, length: Callable[[object], int] = len):
        if max_batch_size < 1 or max_queue < 1 or window_s < 0:
            raise ValueError("max_batch_size and max_queue must be >= 1, window_s >= 0")
        self.run, self.max_batch_size, self.window_s, self.max_queue = run, max_batch_size, window_s, max_queue
        self.length = length
        self._waiting: deque[_Request] = deque()
        self._waiting_inputs = 0
        self._lock = threading.Condition()
        self._stopped = False
        self._seconds_per_input = 0.0  # of the last batch: for Retry-After
        self.batches = 0  # counters, shown by /health
        self.inputs = 0
        self._thread = threading.Thread(target=self._work, name="batcher", daemon=True)
        self._thread.start()

    @property
    def waiting(self) -> int:
        return self._waiting_inputs

    def submit(self, inputs: Sequence, key: Hashable) -> Future:
        """Queue `inputs`; the future's result is their outputs. Raises `Overloaded` when the queue is full."""
        with self._lock:
            if self._stopped:
                raise Overloaded("the server is shutting down", retry_after=5)
            if self._waiting_inputs + len(inputs) > self.max_queue:
                seconds = self._seconds_per_input * self._waiting_inputs
                raise Overloaded(f"{self._waiting_inputs} texts are waiting (the queue holds {self.max_queue})",
                                 retry_after=max(1, math.ceil(seconds)))
            request = _Request(list(inputs), key)
            self._waiting.append(request)
            self._waiting_inputs += len(inputs)
            self._lock.notify()
            return request.future

    def stop(self, timeout: float = 10.0) -> None:
        """Stop taking requests; those waiting are answered with `Overloaded`; the batch running finishes."""
        with self._lock:
            self._stopped = True
            self._lock.notify()
        self._thread.join(timeout)

    def _take_batch(self) -> list[_Request] | None:
        """The next batch: the oldest request and the waiting ones with its key, up to max_batch_size inputs."""
        with self._lock:
            while not self._waiting and not self._stopped:
                self._lock.wait()
            if self._stopped:
                for request in self._waiting:
                    request.future.set_exception(Overloaded("the server is shutting down", retry_after=5))
                self._waiting.clear()
                return None
            # the window: wait for more requests unless the oldest request's key already fills a batch
            deadline = time.monotonic() + self.window_s
            while not self._stopped and self._same_key_inputs() < self.max_batch_size:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._lock.wait(left)
            key, taken, size = self._waiting[0].key, [], 0
            for request in list(self._waiting):
                if request.key != key:
                    continue
                if taken and size + len(request.inputs) > self.max_batch_size:
                    break
                self._waiting.remove(request)
                self._waiting_inputs -= len(request.inputs)
                if request.future.set_running_or_notify_cancel():  # False: its client gave up (timeout)
                    taken.append(request)
                    size += len(request.inputs)
            return taken

    def _same_key_inputs(self) -> int:
        key = self._waiting[0].key
        return sum(len(request.inputs) for request in self._waiting if request.key == key)

    def _work(self) -> None:
        while (requests := self._take_batch()) is not None:
            if not requests:
                continue
            started = time.perf_counter()
            try:
                outputs = self._run_sorted(requests[0].key, [x for request in requests for x in request.inputs])
            except BaseException as error:  # noqa: BLE001: every waiting client is told; the worker goes on
                for request in requests:
                    request.future.set_exception(error)
                continue
            count = len(outputs)
            self._seconds_per_input = (time.perf_counter() - started) / max(count, 1)
            self.batches += 1
            self.inputs += count
            start = 0
            for request in requests:
                request.future.set_result(outputs[start:start + len(request.inputs)])
                start += len(request.inputs)

    def _run_sorted(self, key: Hashable, inputs: list) -> list:
        """`run` on the inputs sorted by length, longest first, in chunks of max_batch_size; outputs in input order."""
        order = sorted(range(len(inputs)), key=lambda i: self.length(inputs[i]), reverse=True)
        outputs = [None] * len(inputs)
        for start in range(0, len(order), self.max_batch_size):
            chunk = order[start:start + self.max_batch_size]
            results = self.run(key, [inputs[i] for i in chunk])
            if len(results) != len(chunk):
                raise RuntimeError(f"the model gave {len(results)} outputs for {len(chunk)} inputs")
            for i, result in zip(chunk, results):
                outputs[i] = result
        return outputs


__all__ = ["Batcher", "Overloaded"]
