"""The Optuna storage a sweep uses: an RDB storage that waits out a database restart.

A sweep lives for days; the PostgreSQL server holding its study may restart under it (an
upgrade, a failover). Optuna's ``RDBStorage`` fails the first call after the server went away
(a pooled connection is dead) and every call while it is down, and a failed ``tell`` in the
driver ends the sweep. :class:`PatientStorage` checks pooled connections before use and retries
a call whose connection was lost, with backoff, for up to ``patience_s`` (3 minutes by default);
any other error (a constraint, bad data) is raised at once.
"""

from __future__ import annotations

import functools

import optuna
import sqlalchemy.exc

from sweeps.retry import retrying

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
        return retrying(call, *args, retry_if=lost_connection, patience_s=self.patience_s,
                        what="Optuna storage", first_delay=0.5, max_delay=5.0, **kwargs)


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


