"""A DataLoader whose batches are made in a background thread of the training process.

With ``num_workers: 0`` every batch is made on the training thread between optimizer steps: the proxy
tasks' 128-canvas batch is ~20 ms of rendering against a ~130 ms step on 2 cores. A loader worker
*process* would take a core from the model's threads (``fastpath.cpu_threads: auto`` = cores - workers); a
thread takes none, and runs while the step's torch kernels have released the GIL.

Only for datasets whose samples draw no global random state (``thread_safe_samples = True`` on the data
module): :class:`data.sampling.SeededTransformDataset` seeds and restores the process-wide torch, numpy
and Python generators around each sample, which would race with the training step's own draws. The proxy
tasks render from a ``numpy.random.default_rng`` of their own, so their batches are the same bytes
whichever thread makes them.

The order of batches is the sampler's, unchanged: one producer, a FIFO queue of at most ``ahead`` batches.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

from torch.utils.data import DataLoader

_DONE = object()


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class BackgroundLoader(DataLoader):
    """``DataLoader`` (``num_workers=0``) that iterates its batches ``ahead`` batches ahead in a thread.

    Still a DataLoader to Lightning: ``sampler.set_epoch`` and ``len`` work as before, and the sampler's
    iterator is created on the calling thread when iteration starts (so a resume position set just before
    is honoured).
    """

    def __init__(self, *args, ahead: int = 2, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.num_workers:
            raise ValueError("BackgroundLoader makes batches in a thread: use num_workers=0")
        self.ahead = max(1, int(ahead))

    def __iter__(self) -> Iterator:
        return _ThreadedIterator(super().__iter__(), self.ahead)


def _produce(source: Iterator, batches: queue.Queue, stop: threading.Event) -> None:
    """The producer thread: holds no reference to the iterator object, so dropping that stops it."""

    def put(item) -> bool:
        while not stop.is_set():
            try:
                batches.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    try:
        for batch in source:
            if not put(batch):
                return
    except BaseException as error:  # handed to the training thread, which raises it
        put(_Failure(error))
        return
    put(_DONE)


class _ThreadedIterator:
    def __init__(self, source: Iterator, ahead: int) -> None:
        self.batches: queue.Queue = queue.Queue(maxsize=ahead)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=_produce, args=(source, self.batches, self.stop), daemon=True,
                                       name="mixerlab-batches")
        self.thread.start()

    def __iter__(self) -> _ThreadedIterator:
        return self

    def __next__(self):
        item = self.batches.get()
        if item is _DONE:
            self.close()
            raise StopIteration
        if isinstance(item, _Failure):
            self.close()
            raise item.error
        return item

    def close(self) -> None:
        """Stop the producer (an epoch cut short: max_steps, limit_train_batches, an error)."""
        self.stop.set()

    def __del__(self) -> None:
        self.stop.set()
