"""The evaluation pool: a Ray job that attacks every checkpoint awaiting evaluation.

    ray job submit -- .venv/bin/python -m attacks.pool --evaluators 4 --gpus-per-evaluator 0.25

Each round it finds published checkpoints awaiting evaluation in MLflow (or a sweep's top-k by
validation robust accuracy), claims each with a lease (renewed while it works; a pool that dies
lets its lease expire, and a restart with the same ``--pool-id`` takes its work back at once),
cuts each evaluation into (shard, attack) units (:mod:`attacks.shards`; in the default
``--mode cascade``, one unit per shard runs its attacks as a cascade, :mod:`attacks.cascade`),
runs the units on a pool of evaluator actors, and saves every finished unit to ``--state-dir``
as it arrives. A restarted pool redoes only the missing units. Finished evaluations become one
leaderboard run each (:mod:`attacks.rows`), written once: a second pool run adds nothing. A
checkpoint that cannot be read is marked failed with its reason and the pool goes on.
``--watch`` keeps polling.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import torch

from attacks.evaluate import needs_eot
from attacks.indicators import IndicatorSettings, train_surrogate
from attacks.pool_config import PoolConfig
from attacks.rows import row_metrics, row_params, row_tags
from attacks.shards import INDICATORS, Plan, Progress, Unit, run_unit
from attacks.targets import checkpoint_context, load_points, points_checksum
from attacks.verify import POINTS_FILE, save_points
from dashboards import artifacts, queue
from dashboards.cost import HELD, Cost, held, total, unit_cost
from dashboards.runs import DEVICE_KIND, training_cost
from sweeps.cluster import connect

# the indicators' share of their cost once their surrogate is trained (the attacks alone)
SHARED_SURROGATE_SHARE = 0.3
STARTUP_WAIT_S = 120.0  # how long the pool waits for its evaluators to start before going on


def log(message: str) -> None:
    """One line on stderr: an event that matters (a checkpoint claimed, evaluated, failed)."""
    print(f"[pool] {message}", file=sys.stderr, flush=True)


class Details:
    """Every finished unit, one line each, in ``state_dir/pool.log``; a live progress bar on
    a terminal (none when stderr is a file)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.bar = None

    def write(self, message: str) -> None:
        with self.path.open("a") as handle:
            handle.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")

    def start(self, total: int) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="unit", desc="[pool] units", leave=False,
                        disable=None, file=sys.stderr)

    def grow(self, units: int) -> None:
        if self.bar is not None:
            self.bar.total += units
            self.bar.refresh()

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def warm_imports() -> None:
    """Import what evaluating a unit needs (the model registry, the defenses, MLflow's client),
    so that an evaluator pays for it when it starts, not in its first unit."""
    import mlflow  # noqa: F401

    import trainables.checkpoints  # noqa: F401


def shared_surrogate(cache_dir: Path, config, seed: int, device: str) -> torch.nn.Module:
    """The transfer indicator's surrogate for the checkpoint's architecture, trained once per
    node: the first evaluator to need it trains it (:func:`train_surrogate`, deterministic in
    its arguments) and keeps its weights under ``cache_dir`` behind a file lock; the others
    load them."""
    from filelock import FileLock
    from safetensors.torch import load_file, save_file

    from trainables.data import dataset_info
    from trainables.models import create_model

    key = json.dumps([config.dataset, config.model, config.model_params, seed], sort_keys=True)
    path = cache_dir / "surrogates" / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.st"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{path}.lock"):
        if not path.exists():
            network = train_surrogate(config.dataset, config.model, config.model_params,
                                      seed=seed, device=device)
            staging = path.with_suffix(".tmp")
            save_file({k: v.detach().cpu().contiguous()
                       for k, v in network.state_dict().items()}, str(staging))
            os.replace(staging, path)
            return network
        weights = load_file(str(path))
    info = dataset_info(config.dataset)
    network = create_model(config.model, num_classes=info.num_classes,
                           in_channels=info.channels, image_size=info.image_size,
                           mean=info.mean, std=info.std, **config.model_params)
    network.load_state_dict(weights)
    return network.to(device).eval()


@ray.remote
class Evaluator:
    """Loads checkpoints (downloaded from MLflow once per node) and runs units on them."""

    def __init__(self, tracking_uri: str, cache_dir: str, threads: int, device: str,
                 surrogate: str = "train", cpus: float = 1.0, gpus: float = 0.0) -> None:
        torch.set_num_threads(threads)
        warm_imports()
        self.tracking_uri, self.cache_dir, self.device = tracking_uri, cache_dir, device
        self.surrogate = surrogate
        self.cpus, self.gpus = cpus, gpus  # what Ray reserved for this actor
        self.loaded: dict[tuple[str, int], tuple] = {}
        self.surrogates: dict[tuple, torch.nn.Module | None] = {}

    def _load(self, run_id: str, n_examples: int):
        from trainables.checkpoints import load_checkpoint

        key = (run_id, n_examples)
        if key not in self.loaded:
            self.loaded.clear()  # one model at a time keeps device memory bounded
            path = artifacts.download_checkpoint(self.tracking_uri, run_id, self.cache_dir)
            checkpoint = load_checkpoint(path, device=self.device)
            x, y = load_points(checkpoint.config.dataset, n_examples, self.device)
            self.loaded[key] = (checkpoint.model, x, y, checkpoint.config)
        return self.loaded[key]

    def _surrogate(self, config, seed: int) -> torch.nn.Module | None:
        """The transfer indicator's surrogate: a standard model of the checkpoint's
        architecture trained here (``train``, kept per architecture), a published checkpoint
        (an MLflow run id), or none."""
        from trainables.checkpoints import load_checkpoint

        key = (self.surrogate, config.dataset, config.model,
               json.dumps(config.model_params, sort_keys=True), seed)
        if key not in self.surrogates:
            self.surrogates.clear()
            if self.surrogate == "none":
                self.surrogates[key] = None
            elif self.surrogate == "train":
                self.surrogates[key] = shared_surrogate(Path(self.cache_dir), config, seed,
                                                        self.device)
            else:
                path = artifacts.download_checkpoint(self.tracking_uri, self.surrogate,
                                                     self.cache_dir)
                self.surrogates[key] = load_checkpoint(path, device=self.device).model.eval()
        return self.surrogates[key]

    def ready(self) -> bool:
        """Answers once the actor has started (torch imported, threads set)."""
        return True

    def run(self, run_id: str, plan: dict[str, Any], unit: dict[str, Any]) -> dict[str, Any]:
        """The unit's record, with what it held (``held``: its wall seconds here, loading the
        checkpoint included, and this evaluator's reserved ``cpus`` and ``gpus``)."""
        started = time.perf_counter()
        chosen = Plan.from_dict(plan)
        model, x, y, config = self._load(run_id, chosen.n_examples)
        record = run_unit(model, x, y, Unit(**unit), chosen,
                          surrogate=lambda: self._surrogate(config, chosen.seed),
                          **checkpoint_context(config))
        record[HELD] = {"seconds": time.perf_counter() - started, "cpus": self.cpus,
                        "gpus": self.gpus}
        return record


@dataclass
class Job:
    """One claimed checkpoint being evaluated; ``labels``: its evaluated points' true classes
    (for the per-class accuracies of its record)."""

    candidate: queue.Candidate
    config: dict[str, Any]
    plan: Plan
    progress: Progress
    checkpoint: str
    data_checksum: str
    failed: str | None = None
    reused: int = 0
    labels: tuple[int, ...] = ()
    finalized: bool = False

    @property
    def name(self) -> str:
        return self.candidate.run_name or self.candidate.run_id[:8]


class Pool:
    def __init__(self, config: PoolConfig) -> None:
        self.config = config
        started = time.perf_counter()
        self.evaluators = [self._new_evaluator() for _ in range(config.evaluators)]
        # start them all at once; a cluster short of resources starts them later, as it can
        ray.wait([actor.ready.remote() for actor in self.evaluators],
                 num_returns=len(self.evaluators), timeout=STARTUP_WAIT_S)
        self.idle, self.running = deque(self.evaluators), {}
        self.surrogates_trained: set[str] = set()
        self.details = Details(config.state_dir / "pool.log")
        self.stats = {"evaluated": 0, "failed": 0, "skipped": 0, "units_run": 0,
                      "units_reused": 0, "examples": 0, "seconds": 0.0, "evaluators_lost": 0,
                      "startup_seconds": time.perf_counter() - started,
                      "unit_overhead_seconds": 0.0, "prepare_seconds": 0.0,
                      "finalize_seconds": 0.0}

    def _new_evaluator(self):
        cfg = self.config
        device = "cuda" if cfg.gpus_per_evaluator > 0 and torch.cuda.is_available() else "cpu"
        options = {"num_cpus": cfg.cpus_per_evaluator, "num_gpus": cfg.gpus_per_evaluator}
        return Evaluator.options(**options).remote(
            cfg.tracking_uri, str(cfg.state_dir / "checkpoints"),
            max(1, int(cfg.cpus_per_evaluator)), device, cfg.surrogate,
            cfg.cpus_per_evaluator, cfg.gpus_per_evaluator)

    def close(self) -> None:
        """Stop the evaluators now (their resources go back to the cluster at once)."""
        for actor in self.evaluators:
            ray.kill(actor)
        self.evaluators, self.idle, self.running = [], deque(), {}

    # -- one round ---------------------------------------------------------------------------
    def round(self) -> int:
        """Evaluate what is waiting now, ``evaluators`` checkpoints at a time; how many."""
        cfg, handled = self.config, 0
        while cfg.max_checkpoints is None or handled < cfg.max_checkpoints:
            candidates = queue.find_candidates(
                cfg.tracking_uri, experiments=cfg.experiments, sweep=cfg.sweep, top_k=cfg.top_k,
                owner=cfg.pool_id)
            claimed = [c for c in candidates[:max(1, cfg.evaluators)]
                       if queue.claim(cfg.tracking_uri, c.run_id, owner=cfg.pool_id,
                                             lease_seconds=cfg.lease_seconds,
                                             settle_seconds=cfg.settle_seconds)]
            if not claimed:  # nothing waiting, or all of it held by other pools
                return handled
            handled += len(claimed)
            self.execute(claimed)
        return handled

    def prepare(self, candidate: queue.Candidate) -> Job | None:
        """Download and check the checkpoint; a bad one is marked failed and skipped."""
        from trainables.checkpoints import load_checkpoint

        cfg = self.config
        try:
            path = artifacts.download_checkpoint(cfg.tracking_uri, candidate.run_id,
                                                    cfg.state_dir / "checkpoints")
            checkpoint = load_checkpoint(path)
            config = checkpoint.config
            plan = Plan(attacks=tuple(cfg.attacks), n_examples=cfg.n_examples,
                        epsilon=cfg.epsilon if cfg.epsilon is not None
                        else config.resolved_epsilon, norm=config.norm, seed=cfg.seed,
                        shard_size=cfg.shard_size, batch_size=cfg.batch_size,
                        epsilon_curve=cfg.epsilon_curve, curve_attack=cfg.curve_attack,
                        margins=cfg.margins,
                        indicators=IndicatorSettings() if cfg.indicators else None,
                        mode=cfg.mode)
            x, y = load_points(config.dataset, cfg.n_examples, "cpu")
            if needs_eot(checkpoint.model, x, cfg.eot):
                plan = dataclasses.replace(plan, eot_samples=cfg.eot_samples)
        except Exception as error:  # unreadable, corrupt, unknown dataset: record and go on
            self.fail(candidate, f"{type(error).__name__}: {error}")
            return None
        checksum = points_checksum(x, y)
        progress = Progress(cfg.state_dir / "evaluations", candidate.run_id, plan)
        job = Job(candidate, config.to_dict(), plan, progress, str(path), checksum,
                  labels=tuple(int(v) for v in y.tolist()))
        job.reused = len(plan.units()) - len(progress.pending())
        self.stats["units_reused"] += job.reused
        eot = f"; random forward pass: EOT over {plan.eot_samples} samples" \
            if plan.eot_samples else ""
        log(f"{job.name}: {len(plan.units())} units ({len(plan.shards())} shards × "
            f"{len(plan.attack_kinds()) + len(plan.extra_kinds())} kinds + checks, "
            f"{plan.mode} mode), {job.reused} already done{eot}")
        return job

    def execute(self, candidates: list[queue.Candidate]) -> None:
        """Prepare the claimed checkpoints one by one, queueing each one's pending units as soon
        as it is ready (the evaluators start on the first while the driver prepares the next),
        dearest units first (:meth:`Plan.unit_cost`), and run them; each job is finalized as
        soon as its last unit is in, while the others' units still run."""
        jobs, pending, costs = [], deque(), {}
        self.details.start(0)
        try:
            for candidate in candidates:
                began = time.perf_counter()
                job = self.prepare(candidate)
                self.stats["prepare_seconds"] += time.perf_counter() - began
                if job is None:
                    continue
                jobs.append(job)
                units = [(job, unit) for unit in job.progress.pending()]
                costs.update({(id(job), unit): self.unit_cost(job, unit) for _, unit in units})
                pending = deque(sorted([*pending, *units], reverse=True,
                                       key=lambda item: costs[id(item[0]), item[1]]))
                self.details.grow(len(units))
                self._dispatch(pending)
            self._drain(jobs, pending)
        finally:
            self.details.stop()
        for job in jobs:
            if not job.failed and not job.finalized:
                self.finalize(job)

    def unit_cost(self, job: Job, unit: Unit) -> float:
        """:meth:`Plan.unit_cost`, but the indicators of an architecture whose surrogate an
        earlier checkpoint of this pool trains cost a fraction of it (the surrogate is shared,
        :func:`shared_surrogate`): they go after the others, once it is trained."""
        cost = job.plan.unit_cost(unit)
        if unit.attack != INDICATORS or self.config.surrogate != "train":
            return cost
        architecture = json.dumps([job.config["dataset"], job.config["model"],
                                   job.config["model_params"], job.plan.seed], sort_keys=True)
        if architecture in self.surrogates_trained:
            return cost * SHARED_SURROGATE_SHARE
        self.surrogates_trained.add(architecture)
        return cost

    def _dispatch(self, pending: deque) -> None:
        """Hand queued units to the idle evaluators."""
        while pending and self.idle:
            job, unit = pending.popleft()
            if job.failed:
                continue
            actor = self.idle.popleft()
            ref = actor.run.remote(job.candidate.run_id, job.plan.to_dict(), unit.__dict__)
            self.running[ref] = (actor, job, unit, time.perf_counter())

    def _drain(self, jobs: list[Job], pending: deque) -> None:
        """Run the queued units on the evaluators until none is left."""
        running = self.running
        renewed = heard = time.monotonic()
        while True:
            self._dispatch(pending)
            if not running:
                break
            ready, _ = ray.wait(list(running), num_returns=1, timeout=5.0)
            if not ready and time.monotonic() - heard > 120:
                heard = time.monotonic()
                log(f"waiting on {len(running)} units ({len(pending)} queued); evaluators may "
                    "be waiting for free resources")
            for ref in ready:
                heard = time.monotonic()
                actor, job, unit, dispatched = running.pop(ref)
                if self.collect(job, unit, ref, dispatched):
                    self.idle.append(actor)
                    if not job.failed and not job.finalized and not job.progress.pending():
                        self.finalize(job)
                else:  # the evaluator died (node lost, out of memory): replace it, redo unit
                    self.evaluators.remove(actor)
                    self.idle.append(self._new_evaluator())
                    self.evaluators.append(self.idle[-1])
                    pending.appendleft((job, unit))
            if time.monotonic() - renewed > self.config.lease_seconds / 3:
                renewed = time.monotonic()
                for job in jobs:
                    self.renew(job)

    def collect(self, job: Job, unit: Unit, ref, dispatched: float) -> bool:
        """Save a finished unit; False if its evaluator died (the unit is to be redone). The
        unit's overhead — the seconds from its dispatch to its record's arrival that its own
        evaluation code did not spend (the call, loading the checkpoint, the transfers) — is
        added to the pool's ``unit_overhead_seconds``."""
        try:
            record = ray.get(ref)
        except ray.exceptions.RayActorError as error:
            self.stats["evaluators_lost"] += 1
            log(f"{job.name}: evaluator lost during {unit.attack} on shard {unit.shard} "
                f"({_last_line(error)}); retrying on a new one")
            if self.stats["evaluators_lost"] > 3 * max(1, self.config.evaluators):
                raise RuntimeError("evaluators keep dying; stopping the pool") from error
            return False
        except Exception as error:  # the attack itself failed: the checkpoint is marked failed
            if not job.failed:
                job.failed = f"{unit.attack} on shard {unit.shard}: {_last_line(error)}"
                self.fail(job.candidate, job.failed)
            return True
        self.stats["unit_overhead_seconds"] += max(
            0.0, time.perf_counter() - dispatched - record.get("seconds", 0.0))
        job.progress.save(unit, record)
        self.stats["units_run"] += 1
        total = len(job.plan.units())
        done = total - len(job.progress.pending())
        accuracy = ""
        if "result" in record:
            accuracy = f"{record['result']['accuracy']:.1%} "
        self.details.write(f"{job.name}: shard {unit.shard + 1}/{len(job.plan.shards())} "
                           f"{unit.attack}: {accuracy}({record['seconds']:.1f} s) "
                           f"[{done}/{total}]")
        self.details.advance()
        return True

    def renew(self, job: Job) -> None:
        if job.failed:
            return
        if not queue.renew(self.config.tracking_uri, job.candidate.run_id,
                                  owner=self.config.pool_id,
                                  lease_seconds=self.config.lease_seconds):
            job.failed = "lease lost to another pool"
            log(f"{job.name}: lease lost to another pool; leaving it to them")

    def finalize(self, job: Job) -> None:
        began = time.perf_counter()
        try:
            self._finalize(job)
        finally:
            self.stats["finalize_seconds"] += time.perf_counter() - began

    def _finalize(self, job: Job) -> None:
        """The evaluation's leaderboard row from its units, and the checkpoint marked done."""
        job.finalized = True
        cfg, candidate = self.config, job.candidate
        report = job.progress.merge()
        if job.labels:  # the unit files hold flags only; the points' classes come from here
            report.labels = torch.tensor(job.labels, dtype=torch.long)
        seconds = job.progress.spent_seconds()
        train_seconds, train_cost = training_cost(cfg.tracking_uri, candidate.run_id)
        run_id, written = record_row(
            cfg.tracking_uri, cfg.leaderboard, report=report, plan=job.plan, config=job.config,
            candidate=candidate, checkpoint=job.checkpoint, data_checksum=job.data_checksum,
            seconds=seconds, train_seconds=train_seconds, train_cost=train_cost,
            evaluation_cost=evaluation_cost(job.progress, cpus=cfg.cpus_per_evaluator,
                                            gpus=cfg.gpus_per_evaluator),
            artifact_location=cfg.artifact_location)
        queue.finish(cfg.tracking_uri, candidate.run_id, owner=cfg.pool_id,
                            status=queue.DONE, result_run=run_id)
        self.stats["evaluated" if written else "skipped"] += 1
        self.stats["examples"] += job.plan.n_examples
        self.stats["seconds"] += seconds
        worst = report.worst_case.float().mean().item()
        flags = f"{len(report.flags)} flags: {'; '.join(report.flags)[:300]}" if report.flags \
            else "no flags"
        log(f"{job.name} evaluated in {seconds:.0f} s: clean {report.clean.float().mean():.1%}, "
            f"worst case {worst:.1%}{' (EOT)' if report.eot_samples else ''}, {flags}; "
            f"leaderboard run {run_id[:8]}")

    def fail(self, candidate: queue.Candidate, reason: str) -> None:
        log(f"{candidate.run_name or candidate.run_id}: failed — {reason}")
        self.stats["failed"] += 1
        queue.finish(self.config.tracking_uri, candidate.run_id, owner=self.config.pool_id,
                            status=queue.FAILED, reason=reason)


def evaluation_cost(progress: Progress, *, cpus: float, gpus: float) -> Cost:
    """What an evaluation's finished units held (:func:`dashboards.cost.unit_cost`; units
    saved without a ``held`` entry at ``cpus``/``gpus``), reused units included."""
    return total(unit_cost(progress.load(unit), cpus=cpus, gpus=gpus)
                 for unit in progress.plan.units() if progress.done(unit))


def record_row(tracking_uri: str, leaderboard: str, *, report, plan: Plan,
               config: dict[str, Any], candidate: queue.Candidate, checkpoint: str,
               data_checksum: str, seconds: float, train_seconds: float,
               train_cost: Cost | None = None, evaluation_cost: Cost | None = None,
               artifact_location: str | None = None) -> tuple[str, bool]:
    """Write one evaluation as its leaderboard run (once); ``(run_id, written)``.

    ``report`` (an :class:`attacks.evaluate.Report`) becomes the row's schema record
    (:mod:`attacks.schema`), with its plan, its source (the training run, the checkpoint, the
    checksum of the evaluated points) and the training record (``config`` and the training
    data checksum the source run logged); the record is ``evaluation/report.json`` (with the
    points' labels and so the per-class accuracies when ``report.labels`` holds them), the
    worst-case adversarial points ``evaluation/adversarial.safetensors``.

    The row's cost: ``train_cost`` (the source trial's, over all its attempts) and
    ``evaluation_cost`` (its units'), each logged apart (``train_``/``evaluation_`` +
    :meth:`dashboards.cost.Cost.metrics`) and summed unit by unit (the unprefixed metrics and
    the ``device_kind`` tag); either left out counts its seconds (``train_seconds``,
    ``seconds``) on one CPU core."""
    from attacks.schema import Source, TrainingRecord

    train_cost = train_cost or held(train_seconds, cpus=1.0, gpus=0.0)
    evaluation_cost = evaluation_cost or held(seconds, cpus=1.0, gpus=0.0)
    cost = train_cost + evaluation_cost

    training = TrainingRecord.from_config(config, candidate.tags.get("data_checksum"))
    record = report.to_record(
        plan=plan.to_dict(), training=training, dataset=config.get("dataset"),
        source=Source(candidate.run_id, checkpoint, data_checksum))
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "report.json").write_text(json.dumps(record.to_dict()))
        if report.adversarial is not None:  # the evidence `robust-sweeps verify` re-checks
            save_points(Path(folder) / POINTS_FILE, report.adversarial, n=record.n,
                        epsilon=record.epsilon, norm=record.norm, data_checksum=data_checksum)
        name = candidate.run_name or candidate.run_id[:8]
        return queue.record_evaluation(
            tracking_uri, leaderboard,
            identity={"source_run": candidate.run_id, "evaluation_plan": plan.key},
            run_name=f"{candidate.tags.get('defense', 'model')}-{name}",
            params=row_params(config, plan, training),
            metrics={**row_metrics(record), "train_seconds": train_seconds,
                     **train_cost.metrics("train_"), **evaluation_cost.metrics("evaluation_"),
                     **cost.metrics()},
            tags={**row_tags(record, plan=plan, source_experiment=candidate.experiment_id,
                             source_tags=candidate.tags, seconds=seconds),
                  DEVICE_KIND: cost.kind, "device_cost": cost.text()},
            artifacts_dir=folder, artifact_location=artifact_location)


def _last_line(error: Exception) -> str:
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def run(config: PoolConfig) -> dict[str, Any]:
    """Evaluate what awaits evaluation (again and again with ``watch``); the summary."""
    connect(config.address, log_to_driver=False, configure_logging=False)
    started = time.perf_counter()
    pool = Pool(config)
    log(f"{config.evaluators} evaluators; tracking {config.tracking_uri}; "
        f"leaderboard experiment {config.leaderboard!r}; every unit in "
        f"{config.state_dir / 'pool.log'}")
    try:
        while True:
            pool.round()
            if not config.watch:
                break
            time.sleep(config.poll_seconds)
    finally:
        pool.close()
    wall = time.perf_counter() - started
    stats = pool.stats
    working = wall - stats["startup_seconds"]  # from the evaluators' start to the last row
    summary = {**stats, "wall_seconds": wall, "evaluation_seconds": working,
               "examples_per_second": stats["examples"] / wall if wall else 0.0,
               "examples_per_evaluation_second": stats["examples"] / working if working else 0.0,
               "overhead_per_unit_seconds": (stats["unit_overhead_seconds"] / stats["units_run"]
                                             if stats["units_run"] else 0.0)}
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":  # `python -m attacks.pool`: the command line, this module once
    import importlib

    sys.modules["attacks.pool"] = sys.modules[__name__]
    importlib.import_module("attacks.pool_cli").main()
