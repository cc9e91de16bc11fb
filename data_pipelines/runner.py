"""Where pipeline tasks run: this process (threads), a local Dask cluster, or any scheduler.

:func:`open_runner` yields a :class:`Runner` that submits tasks, passes the results of earlier
tasks to later ones, and waits for whichever finishes first:

- ``dask.address=tcp://HOST:PORT``: an existing Dask cluster (its workers must see the input
  archive and the output path); results stay on the workers and move only where needed;
- no address and ``dask.processes=false`` (the default) or ``dask.n_workers=1``: a thread
  pool in this process (``n_workers x threads_per_worker`` threads), no cluster to start.
  Decoding (PIL), the numpy statistics and the zarr codecs release the GIL, so threads scale
  on one machine, and decoded frames are shared without copies;
- no address, ``dask.n_workers > 1`` and ``dask.processes=true``: a
  :class:`distributed.LocalCluster` of worker processes, started (about 2 s: each worker
  imports pysteps) and stopped here; for readers that hold the GIL or a lock (the HDF5 and
  netCDF importers share one);
- ``dask.address=inline``: every task runs at submission, in this process, one at a time
  (tests, debugging).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import logging
import queue
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import dask

from data_pipelines.config import DaskConfig

log = logging.getLogger(__name__)

INLINE = "inline"


class Runner:
    """Submit tasks (their arguments may be earlier tasks' futures), share read-only objects.

    Parameters
    ----------
    executor
        Runs tasks in this process (threads or inline); ``None`` with a Dask ``client``.
    client
        A :class:`distributed.Client`; tasks then run on its cluster.
    progress
        Whether stages show progress bars.
    workers
        Number of tasks that run at the same time.
    """

    def __init__(
        self,
        executor: cf.Executor | None,
        client: Any | None = None,
        progress: bool = True,
        workers: int = 1,
    ):
        self.executor = executor
        self.client = client
        self.progress = progress
        self._workers = workers
        self._finished: queue.SimpleQueue[None] = queue.SimpleQueue()

    @property
    def n_workers(self) -> int:
        """Number of tasks that run at the same time (threads, or workers of the cluster)."""
        if self.client is None:
            return self._workers
        info = self.client.scheduler_info().get("workers", {})
        return sum(int(w.get("nthreads", 1)) for w in info.values()) or 1

    def share(self, obj: Any) -> Any:
        """Send ``obj`` to every worker once; pass the result to tasks instead of ``obj``."""
        if self.client is None:
            return obj
        return self.client.scatter(obj, broadcast=True, hash=False)

    def submit(self, func: Callable[..., Any], *args: Any) -> Any:
        """Run ``func(*args)`` with the results of the futures among ``args``.

        Arguments that are futures of this runner are replaced by their results (on a
        cluster, where the task runs: large results are not gathered here). They must have
        been submitted before (they always are when the caller only has them from earlier
        calls), so a thread waiting on one never waits for a task queued behind it.
        """
        if self.client is not None:
            future = self.client.submit(func, *args, pure=False)
        else:
            future = self.executor.submit(_call_with_results, func, args)
        future.add_done_callback(self._wake)
        return future

    def _wake(self, _future: Any) -> None:
        self._finished.put(None)  # a token, not the future: results are not kept alive

    def wait(self, futures: Iterable[Any]) -> set[Any]:
        """Wait until at least one of ``futures`` (submitted here) is done; return the done ones.

        Woken by the futures' own completion callbacks (``distributed.wait`` would use the
        process's default client, not necessarily this runner's).
        """
        futures = list(futures)
        while True:
            done = {f for f in futures if f.done()}
            if done or not futures:
                with contextlib.suppress(queue.Empty):
                    while True:  # tokens of completions seen now
                        self._finished.get_nowait()
                return done
            with contextlib.suppress(queue.Empty):
                self._finished.get(timeout=1.0)

    def cancel(self, futures: Iterable[Any]) -> None:
        """Cancel tasks that have not started (after an error)."""
        for future in futures:
            future.cancel()


def _call_with_results(func: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    return func(*(a.result() if isinstance(a, cf.Future) else a for a in args))


class _InlineExecutor(cf.Executor):
    """Run each task at submission, in this process (a deterministic, debuggable executor)."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future:
        future: cf.Future = cf.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # handed to the caller through the future
            future.set_exception(exc)
        return future

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any], **_: Any) -> Iterator[Any]:
        return (fn(*args) for args in zip(*iterables, strict=True))


@contextlib.contextmanager
def open_runner(cfg: DaskConfig, progress: bool = True) -> Iterator[Runner]:
    """A :class:`Runner` for the configured execution (see the module docstring), closed on exit."""
    if cfg.address == INLINE:
        yield Runner(_InlineExecutor(), None, progress)
        return
    if not cfg.address and (cfg.n_workers == 1 or not cfg.processes):
        threads = cfg.n_workers * cfg.threads_per_worker
        log.info("running in this process on %d thread(s)", threads)
        pool = cf.ThreadPoolExecutor(threads, thread_name_prefix="geogen-prepare")
        try:
            yield Runner(pool, None, progress, workers=threads)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return
    from distributed import Client, LocalCluster

    # distributed configures its loggers at import; keep its INFO chatter out of the run's log.
    logging.getLogger("distributed").setLevel(logging.WARNING)

    if cfg.address:
        log.info("connecting to the Dask scheduler at %s", cfg.address)
        try:
            client = Client(cfg.address, timeout=cfg.connect_timeout)
        except OSError as exc:
            raise ConnectionError(
                f"cannot reach the Dask scheduler at {cfg.address}: {exc}"
            ) from exc
        with client:
            yield Runner(None, client, progress)
        return
    log.info(
        "starting a local Dask cluster: %d worker processes x %d threads",
        cfg.n_workers,
        cfg.threads_per_worker,
    )
    # distributed sets MALLOC_TRIM_THRESHOLD_=65536 in its workers, which turns off glibc's
    # dynamic mmap threshold: every frame-sized array becomes an mmap with fresh page faults,
    # and reading/compressing runs ~2x slower (measured on the mch sample). Leave glibc be.
    # (Workers are spawned, distributed's default: forked ones start faster, but inherit
    # this process's threads' state and hung a benchmark run waiting for a transfer.)
    with (
        dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}),
        LocalCluster(
            n_workers=cfg.n_workers,
            threads_per_worker=cfg.threads_per_worker,
            processes=True,
            memory_limit=cfg.memory_limit,
            dashboard_address=None,
            silence_logs=logging.WARNING,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield Runner(None, client, progress)
