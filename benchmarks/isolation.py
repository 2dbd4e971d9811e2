"""Run one measurement in a fresh interpreter, so runs do not share heap, caches or peaks.

A measured run must start from the same state every time: a reused interpreter would carry the
previous run's allocator caches into this run's peak memory, and its warm imports into this run's
first-batch latency. Each call spawns a new process (which becomes the "training process" of the
run, with its own workers below it, started with the platform's default method, as in a fresh
interpreter), sends back the result, and is joined before returning.
"""

from __future__ import annotations

import multiprocessing
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from typing import Any, TypeVar

Result = TypeVar("Result")

JOIN_SECONDS = 30.0


class IsolatedRunError(RuntimeError):
    """The isolated run raised, died or timed out; the message has its traceback or exit code."""


def run_isolated(function: Callable[..., Result], *args: Any, timeout: float) -> Result:
    """``function(*args)`` in a new spawned process; its exception is re-raised as IsolatedRunError.

    ``function`` and ``args`` must be picklable (module-level functions, dataclasses).

    Raises:
        IsolatedRunError: the function raised, the process died, or no result came in
            ``timeout`` seconds (the process is then killed).
    """
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(
        target=_child_main, args=(sender, function, args), name=f"bench-{function.__name__}"
    )
    process.start()
    sender.close()  # so the receiver sees EOF if the child dies without answering
    try:
        if not wait([receiver], timeout):
            process.kill()
            raise IsolatedRunError(f"{function.__name__} gave no result within {timeout:.0f} s")
        try:
            succeeded, payload = receiver.recv()
        except EOFError:
            process.join(JOIN_SECONDS)
            raise IsolatedRunError(
                f"{function.__name__} died with exit code {process.exitcode} before answering"
            ) from None
    finally:
        receiver.close()
        process.join(JOIN_SECONDS)
        if process.is_alive():
            process.kill()
            process.join()
    if not succeeded:
        raise IsolatedRunError(f"{function.__name__} failed in its process:\n{payload}")
    result: Result = payload
    return result


def _child_main(sender: Connection, function: Callable[..., Any], args: tuple[Any, ...]) -> None:
    # A spawned child inherits "spawn" as its default start method; undo that, so the run's own
    # worker processes start as they would under a fresh ``python train.py``.
    multiprocessing.set_start_method(None, force=True)
    try:
        outcome = (True, function(*args))
    except BaseException:
        outcome = (False, traceback.format_exc())
    sender.send(outcome)
    sender.close()
