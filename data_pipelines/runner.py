"""Where pipeline tasks run: this process (threads), a local Dask cluster, or any scheduler.

:func:`open_runner` yields a :class:`Runner` that submits tasks, passes the results of earlier
tasks to later ones, and waits for whichever finishes first:

- ``dask.address=tcp://HOST:PORT``: an existing Dask cluster (its workers must see the input
  archive and the output path); results stay on the workers and move only where needed;
- no address, ``dask.n_workers > 1`` and ``dask.processes=true`` (the default): a
  :class:`distributed.LocalCluster` of worker processes, started and stopped here. Workers
  are forked from this process where the platform allows (``dask.start_method=auto``), so
  they start in a fraction of a second instead of re-importing pysteps in each;
- no address and ``dask.n_workers=1`` or ``dask.processes=false``: a thread pool in this
  process (``n_workers x threads_per_worker`` threads), no cluster at all. Decoding (PIL,
  netCDF), the numpy statistics and the zarr codecs release the GIL, so threads scale on one
  machine and results are shared without copies;
- ``dask.address=inline``: every task runs at submission, in this process, one at a time
  (tests, debugging).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import logging
import sys
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
            return self.client.submit(func, *args, pure=False)
        return self.executor.submit(_call_with_results, func, args)

    def wait(self, futures: Iterable[Any]) -> set[Any]:
        """Wait until at least one of ``futures`` is done; return the done ones."""
        futures = list(futures)
        if self.client is not None:
            from distributed import wait

            done, _ = wait(futures, return_when="FIRST_COMPLETED")
            return set(done)
        done, _ = cf.wait(futures, return_when=cf.FIRST_COMPLETED)
        return set(done)

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


def start_method(cfg: DaskConfig) -> str:
    """How local worker processes start: ``fork`` where available (Linux), else ``spawn``."""
    if cfg.start_method != "auto":
        return cfg.start_method
    return "fork" if sys.platform.startswith("linux") else "spawn"


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
    method = start_method(cfg)
    log.info(
        "starting a local Dask cluster: %d worker processes (%s) x %d threads",
        cfg.n_workers,
        method,
        cfg.threads_per_worker,
    )
    # distributed sets MALLOC_TRIM_THRESHOLD_=65536 in its workers, which turns off glibc's
    # dynamic mmap threshold: every frame-sized array becomes an mmap with fresh page faults,
    # and reading/compressing runs ~2x slower (measured on the mch sample). Leave glibc be.
    settings = {
        "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
        "distributed.worker.multiprocessing-method": method,
    }
    with (
        dask.config.set(settings),
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
