"""The Optuna storage a sweep uses: an RDB storage that waits out a database restart.

A sweep lives for days; the PostgreSQL server holding its study may restart under it (an
upgrade, a failover). Optuna's ``RDBStorage`` fails the first call after the server went away
(a pooled connection is dead) and every call while it is down, and a failed ``tell`` in the
driver ends the sweep. :class:`PatientStorage` checks pooled connections before use and retries
a call whose connection was lost, with backoff, for up to ``patience_s`` (3 minutes by default);
any other error (a constraint, bad data) is raised at once. :func:`patiently` does the same for
Ray Tune's storage (an S3 endpoint) around the calls a sweep makes to it.
"""

from __future__ import annotations

import functools
import logging
import time

import optuna
import sqlalchemy.exc

log = logging.getLogger(__name__)

LOST_CONNECTION = (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)


def lost_connection(error: BaseException) -> bool:
    """Whether ``error`` (or what caused it) is the database connection going away."""
    while error is not None:
        if isinstance(error, LOST_CONNECTION) or (
                isinstance(error, sqlalchemy.exc.DBAPIError) and error.connection_invalidated):
            return True
        error = error.__cause__ or error.__context__
    return False


class PatientStorage(optuna.storages.RDBStorage):
    def __init__(self, url: str, *, patience_s: float = 180.0) -> None:
        self.patience_s = patience_s
        engine_kwargs = {} if url.startswith("sqlite") else {"pool_pre_ping": True}
        self._patiently(super().__init__, url, engine_kwargs=engine_kwargs)

    def _patiently(self, call, *args, **kwargs):
        deadline, delay = time.monotonic() + self.patience_s, 0.5
        while True:
            try:
                return call(*args, **kwargs)
            except Exception as error:
                if not lost_connection(error) or time.monotonic() + delay > deadline:
                    raise
                log.warning("Optuna storage unreachable (%s); retrying in %.1f s",
                            type(error).__name__, delay)
                time.sleep(delay)
                delay = min(2 * delay, 5.0)


def _retried(name: str):
    @functools.wraps(getattr(optuna.storages.RDBStorage, name))
    def call(self, *args, **kwargs):
        return self._patiently(getattr(optuna.storages.RDBStorage, name), self, *args,
                               **kwargs)

    return call


for _name in sorted(optuna.storages.BaseStorage.__abstractmethods__ | {"record_heartbeat"}):
    setattr(PatientStorage, _name, _retried(_name))


def optuna_storage(url: str) -> PatientStorage:
    """The storage at ``url`` (``sqlite:///…``, ``postgresql://…``)."""
    return PatientStorage(url)



# -- Ray Tune's storage ----------------------------------------------------------------------
def patiently(call, *args, patience_s: float = 180.0, what: str = "storage", **kwargs):
    """``call(*args, **kwargs)``, retried with backoff while it fails with ``OSError`` (Ray
    Tune's storage unreachable: an S3 endpoint that stops answering fails each call within
    seconds), for up to ``patience_s``; then the last error is raised."""
    deadline, delay = time.monotonic() + patience_s, 1.0
    while True:
        try:
            return call(*args, **kwargs)
        except OSError as error:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("%s unreachable (%s); retrying in %.0f s", what,
                        str(error).splitlines()[0][:200], delay)
            time.sleep(delay)
            delay = min(2 * delay, 10.0)
