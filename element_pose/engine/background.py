"""Run an iterator in a background thread behind a bounded queue (decoding, augmentation)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
_DONE = object()


def in_background(items: Iterable[T], maxsize: int, name: str) -> Iterator[T]:
    """Yield ``items`` while a daemon thread produces the next ones.

    At most ``maxsize`` items wait in the queue, so memory stays bounded. An exception in the
    producer is raised in the consumer; when the consumer stops early the producer stops too.
    """
    q: queue.Queue = queue.Queue(maxsize=maxsize)
    halt = threading.Event()

    def put(item: object) -> bool:
        while not halt.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        iterator = iter(items)
        try:
            for item in iterator:
                if not put(item):
                    return
        except BaseException as exc:  # surfaced in the consumer
            put(exc)
            return
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()  # runs the producer's finally blocks (e.g. releasing a video)
        put(_DONE)

    thread = threading.Thread(target=work, name=name, daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        halt.set()
        thread.join(timeout=5)
