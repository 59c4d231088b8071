"""The sweep's Optuna storage waits out a lost database connection and nothing else."""

import optuna
import pytest
import sqlalchemy.exc

from sweeps.storage import PatientStorage, lost_connection


def test_a_lost_connection_is_retried_and_other_errors_are_not(tmp_path, monkeypatch):
    storage = PatientStorage(f"sqlite:///{tmp_path / 'o.db'}", patience_s=30)
    study_id = optuna.create_study(storage=storage, study_name="s")._study_id
    calls = {"n": 0}
    original = optuna.storages.RDBStorage.get_all_trials

    def flaky(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] <= 2:
            raise optuna.exceptions.StorageInternalError("commit failed") from \
                sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("server closed"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr("time.sleep", lambda s: None)
    monkeypatch.setattr(optuna.storages.RDBStorage, "get_all_trials", flaky)
    assert storage.get_all_trials(study_id) == [] and calls["n"] == 3

    def broken(self, *args, **kwargs):
        raise optuna.exceptions.StorageInternalError("value too long")

    monkeypatch.setattr(optuna.storages.RDBStorage, "get_all_trials", broken)
    with pytest.raises(optuna.exceptions.StorageInternalError):
        storage.get_all_trials(study_id)


def test_lost_connection_reads_the_cause_chain():
    lost = sqlalchemy.exc.OperationalError("x", {}, Exception("connection refused"))
    wrapped = RuntimeError("outer")
    wrapped.__cause__ = lost
    assert lost_connection(wrapped) and not lost_connection(ValueError("bad"))


def test_patiently_retries_storage_errors_until_its_patience_runs_out(monkeypatch):
    from sweeps.retry import patiently

    clock = {"t": 0.0}
    monkeypatch.setattr("time.monotonic", lambda: clock["t"])
    monkeypatch.setattr("time.sleep", lambda s: clock.__setitem__("t", clock["t"] + s))
    calls = []

    def flaky():
        calls.append(clock["t"])
        if len(calls) < 4:
            raise OSError("AWS Error NETWORK_CONNECTION during HeadBucket operation")
        return "stored"

    assert patiently(flaky, patience_s=60) == "stored" and len(calls) == 4

    def down():
        raise OSError("Timeout was reached")

    clock["t"] = 0.0
    with pytest.raises(OSError):
        patiently(down, patience_s=30)
    assert 20 <= clock["t"] <= 30
    with pytest.raises(ValueError):
        patiently(lambda: (_ for _ in ()).throw(ValueError("not a storage error")))
