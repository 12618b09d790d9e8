"""Follow a job's log as Ray's Jobs API streams it (``JobSubmissionClient.tail_job_logs``: one
websocket, new lines as the driver and the workers write them, closed by Ray when the job ends).

The client's stream is an async generator; a notebook kernel already runs an event loop in its main
thread, so the stream runs on a loop of its own in a thread and hands its chunks over a queue. The
caller's iteration stays interruptible (Ctrl-C / the kernel's interrupt), and closing it closes the
websocket.
"""
from __future__ import annotations

import asyncio
import queue
import threading
from typing import Iterator

from byzer_magic.errors import ByzerError

_END = object()


def _client():
    from ray.job_submission import JobSubmissionClient  # noqa: PLC0415

    from byzer_magic.runtime import cluster  # noqa: PLC0415

    return JobSubmissionClient(cluster.connect().dashboard_url)


def tail_logs(submission_id: str, *, skip: int = 0, client=None) -> Iterator[str]:
    """The job's log from its start as it is written, in chunks, until the job ends; the first ``skip``
    characters (what the caller has already shown) are left out. A ``ByzerError`` if Ray cannot
    stream it (the job is unknown to this cluster, the connection broke)."""
    client = client or _client()
    chunks: queue.Queue = queue.Queue()
    done = threading.Event()
    loop = asyncio.new_event_loop()

    async def pump() -> None:
        try:
            async for chunk in client.tail_job_logs(submission_id):
                chunks.put(chunk)
            chunks.put(_END)
        except asyncio.CancelledError:
            chunks.put(_END)
        except Exception as err:  # handed to the reader, who raises it in its own thread
            chunks.put(err)
        finally:
            done.set()

    thread = threading.Thread(target=loop.run_forever, name=f"byzer-logs-{submission_id}", daemon=True)
    thread.start()
    future = asyncio.run_coroutine_threadsafe(pump(), loop)
    try:
        while True:
            try:
                item = chunks.get(timeout=0.25)  # short waits: an interrupt is seen at once
            except queue.Empty:
                continue
            if item is _END:
                return
            if isinstance(item, Exception):
                raise ByzerError(f"cannot follow the log of job {submission_id!r}: {item}") from None
            if skip >= len(item):
                skip -= len(item)
                continue
            item, skip = item[skip:], 0
            yield item
    finally:
        future.cancel()
        done.wait(5)  # the websocket and its session close before the loop stops
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        if not thread.is_alive():
            loop.close()
