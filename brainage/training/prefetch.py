"""A background thread that assembles the next batches while the current one trains.

:class:`BatchPrefetcher` calls ``fetch(batch)`` for each batch of a list, in
order, on one daemon thread, and keeps at most ``depth`` results ready. The
consumer iterates over it and gets exactly what ``[fetch(b) for b in batches]``
would give, in the same order: prefetching changes when a batch is read, never
what is read, so a seeded run stays reproducible.

With ``pin_memory`` (the default when CUDA is available) the thread copies the
tensors of each batch into page-locked memory, so that the consumer's
``tensor.to("cuda", non_blocking=True)`` is a true asynchronous copy.

Errors: an exception raised by ``fetch`` is raised again by the consumer's
``next()`` at that batch's position (the batches before it are delivered
first) and the thread ends; an exception in the consumer's loop ends the
thread when the prefetcher is closed, which the ``with`` statement does. A
closed prefetcher never leaves a thread behind: :meth:`BatchPrefetcher.close`
unblocks and joins it.

Examples
--------
>>> import numpy as np
>>> data = np.arange(10.0)
>>> with BatchPrefetcher(lambda b: data[b], [np.array([0, 1]), np.array([5])],
...                      pin_memory=False) as batches:
...     [b.tolist() for b in batches]
[[0.0, 1.0], [5.0]]
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterable

from brainage.exceptions import UsageError

__all__ = ["BatchPrefetcher", "pin_batch"]

logger = logging.getLogger(__name__)

#: Seconds between checks of the stop flag while the queue is full or empty.
_POLL = 0.05
#: How long :meth:`BatchPrefetcher.close` waits for the thread (a ``fetch`` call in flight).
_JOIN_TIMEOUT = 30.0

_DONE = object()


def pin_batch(batch):
    """Return ``batch`` with every CPU tensor in page-locked memory (dicts, lists and tuples kept).

    NumPy arrays are turned into tensors first. Anything else is returned unchanged.

    Parameters
    ----------
    batch : tensor, numpy.ndarray, dict, list or tuple
        One batch as ``fetch`` returned it.

    Returns
    -------
    Same structure, tensors pinned.
    """
    import numpy as np
    import torch

    if isinstance(batch, torch.Tensor):
        return batch if batch.is_cuda or batch.is_pinned() else batch.pin_memory()
    if isinstance(batch, np.ndarray):
        return torch.from_numpy(batch).pin_memory()
    if isinstance(batch, dict):
        return {k: pin_batch(v) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(pin_batch(v) for v in batch)
    return batch


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    return bool(torch.cuda.is_available())


class BatchPrefetcher:
    """Iterate over ``fetch(b) for b in batches``, fetching up to ``depth`` batches ahead on a thread.

    Parameters
    ----------
    fetch : callable
        ``fetch(batch) -> data``; for the trainer, ``MultiModalData.batch`` (indices to a
        dict of tensors), or ``CachedVolumeDataset.batch``.
    batches : iterable
        What to pass to ``fetch``, in order (e.g. :func:`~brainage.training.datasets.batch_indices`).
    depth : int
        How many fetched batches may wait for the consumer (memory: ``depth + 2`` batches at
        most, counting the one being fetched and the one being consumed).
    pin_memory : bool or None
        Copy each batch's tensors to page-locked memory on the thread (:func:`pin_batch`).
        None: when CUDA is available.
    name : str
        Name of the thread (shown by debuggers and ``threading.enumerate()``).

    Raises
    ------
    UsageError
        ``depth`` below 1.

    Examples
    --------
    >>> with BatchPrefetcher(str, range(3), pin_memory=False) as it:
    ...     list(it)
    ['0', '1', '2']
    """

    def __init__(self, fetch: Callable, batches: Iterable, *, depth: int = 2,
                 pin_memory: bool | None = None, name: str = "brainage-prefetch"):
        if int(depth) < 1:
            raise UsageError(f"BatchPrefetcher depth must be at least 1, got {depth}.")
        self.fetch = fetch
        self.depth = int(depth)
        self.pin_memory = _cuda_available() if pin_memory is None else bool(pin_memory)
        self._batches = iter(batches)
        self._queue: queue.Queue = queue.Queue(maxsize=self.depth)
        self._stop = threading.Event()
        self._finished = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ producer
    def _put(self, item) -> bool:
        """Put ``item`` on the queue unless stopped; return whether it was put."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for b in self._batches:
                if self._stop.is_set():
                    return
                data = self.fetch(b)
                if self.pin_memory:
                    data = pin_batch(data)
                if not self._put((data, None)):
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            self._put((None, exc))
            return
        self._put((_DONE, None))

    # ------------------------------------------------------------ consumer
    def __iter__(self) -> BatchPrefetcher:
        return self

    def __next__(self):
        if self._finished:
            raise StopIteration
        while True:
            try:
                data, exc = self._queue.get(timeout=_POLL)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    # ended without a last word (closed meanwhile): nothing more comes
                    self._finished = True
                    raise StopIteration from None
        if exc is not None:
            self.close()
            raise exc
        if data is _DONE:
            self.close()
            raise StopIteration
        return data

    def close(self) -> None:
        """Stop the thread and wait for it; batches not yet consumed are dropped. Idempotent."""
        self._finished = True
        self._stop.set()
        while True:  # unblock a producer waiting on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        if self._thread is not threading.current_thread():
            self._thread.join(_JOIN_TIMEOUT)
            if self._thread.is_alive():  # a fetch call longer than the timeout; it ends on its own
                logger.warning("prefetch thread %s still running after %.0f s (a slow fetch); it "
                               "stops after its current batch", self._thread.name, _JOIN_TIMEOUT)

    @property
    def alive(self) -> bool:
        """Whether the background thread is still running."""
        return self._thread.is_alive()

    def __enter__(self) -> BatchPrefetcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):  # a prefetcher dropped half-way still stops its thread
        try:
            self._stop.set()
        except AttributeError:  # __init__ failed before the event existed
            pass
