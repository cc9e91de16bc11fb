"""Where pipeline tasks run: a Dask cluster (local by default, or any scheduler address).

:func:`open_runner` yields a :class:`Runner` with a :class:`concurrent.futures.Executor`
interface. With ``dask.address`` unset a :class:`distributed.LocalCluster` of worker processes
is started (and stopped afterwards); with ``dask.address=tcp://HOST:PORT`` an existing cluster
is used (its workers must see the input archive and the output path). ``dask.address=inline``
runs tasks in this process, one at a time (tests, debugging).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import dask
from tqdm.auto import tqdm

from data_pipelines.config import DaskConfig

log = logging.getLogger(__name__)

INLINE = "inline"


class Runner:
    """Submit tasks, share large read-only objects with workers, and wait with a progress bar."""

    def __init__(self, executor: cf.Executor, client: Any | None = None, progress: bool = True):
        self.executor = executor
        self.client = client
        self.progress = progress

    @property
    def n_workers(self) -> int:
        """Number of workers (1 when inline)."""
        if self.client is None:
            return 1
        return len(self.client.scheduler_info().get("workers", {})) or 1

    def share(self, obj: Any) -> Any:
        """Send ``obj`` to every worker once; pass the result to :meth:`run` instead of ``obj``."""
        if self.client is None:
            return obj
        return self.client.scatter(obj, broadcast=True, hash=False)

    def run(
        self,
        func: Callable[..., Any],
        calls: Sequence[tuple[Any, ...]],
        *,
        description: str,
        unit: str = "task",
        on_result: Callable[[Any], None] | None = None,
    ) -> None:
        """Run ``func(*args)`` for every ``args`` in ``calls``; stop at the first error.

        ``on_result`` is called in this process with each result as tasks finish. On error the
        pending tasks are cancelled and the task's own exception is raised (so a bad input file
        is reported by name, not as a Dask traceback).
        """
        if not calls:
            return
        futures = [self.executor.submit(func, *args) for args in calls]
        bar = tqdm(
            total=len(futures),
            desc=description,
            unit=unit,
            disable=not self.progress,
            dynamic_ncols=True,
            leave=True,
        )
        try:
            for future in cf.as_completed(futures):
                result = future.result()
                if on_result is not None:
                    on_result(result)
                bar.update(1)
        except BaseException:
            for future in futures:
                future.cancel()
            raise
        finally:
            bar.close()


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
    """A :class:`Runner` for the configured Dask cluster, closed on exit."""
    if cfg.address == INLINE:
        yield Runner(_InlineExecutor(), None, progress)
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
            yield Runner(client.get_executor(pure=False), client, progress)
        return
    log.info(
        "starting a local Dask cluster: %d worker processes x %d threads",
        cfg.n_workers,
        cfg.threads_per_worker,
    )
    # distributed sets MALLOC_TRIM_THRESHOLD_=65536 in its workers, which turns off glibc's
    # dynamic mmap threshold: every frame-sized array becomes an mmap with fresh page faults,
    # and reading/compressing runs ~2x slower (measured on the mch sample). Leave glibc be.
    with (
        dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}),
        LocalCluster(
            n_workers=cfg.n_workers,
            threads_per_worker=cfg.threads_per_worker,
            processes=cfg.processes,
            memory_limit=cfg.memory_limit,
            dashboard_address=None,
            silence_logs=logging.WARNING,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield Runner(client.get_executor(pure=False), client, progress)
