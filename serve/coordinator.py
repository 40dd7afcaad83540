"""The step coordinator: the one owner of session state on the step path.

Every step, from a unary ``Step``, a ``StepStream`` message or a ``StepBatch`` row, goes one way:
transport (the servicer) -> coordinator: find the session (:mod:`~rnnpolicy.serve.directory`,
or claim it from the store), admit it (:mod:`~rnnpolicy.serve.sequencing`), batch it with the
other steps of this turn of the event loop, run the batch (:meth:`ServedModel.run`, on the loop
or on the model's worker thread), commit (write the state rows through the slot API and, with a
write-through store, to the store), answer -> back to the transport once. Session operations
that change state (create, close, reset, set, migrate, expire) run here too, after the
session's step in flight, so that a session's state has one writer.

Everything runs on the server's event loop; only the graph call may run on a model's worker
thread, whose results come back to the loop (one ``call_soon_threadsafe`` per batch).

Turn batching: a step that finds no other callback ready in this turn of the loop runs at once
(with the in-memory store, with no future or second loop turn at all); the steps of a busy turn
go to their model as one batch when the turn's callbacks have run (:meth:`StepCoordinator._flush`).

Write-through stores (``store.write_through``): a batch's results are committed to the store
(one round trip) before any row is answered or written to the slots. A row the store refuses
(another replica took the session over) is dropped here and redone from the stored record; a
store that cannot be reached answers UNAVAILABLE and changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import math
import operator
from typing import Any, Awaitable, Sequence

import grpc
import numpy as np

from rnnpolicy.serve.batcher import Batch, run_batches
from rnnpolicy.serve.catalog import ModelCatalog
from rnnpolicy.serve.directory import Session, SessionDirectory
from rnnpolicy.serve.errors import ServeError, shown
from rnnpolicy.serve.metrics import ServeMetrics
from rnnpolicy.serve.model import ServedModel
from rnnpolicy.serve.records import RecordError, SessionRecord, Tombstone
from rnnpolicy.serve.sampling import sample_actions
from rnnpolicy.serve.sequencing import admit, enqueue, finish, finish_rows, next_queued, until_idle
from rnnpolicy.serve.store import Commit, SessionStore, Snapshot, StoreUnavailable

__all__ = ["Job", "Step", "StepCoordinator"]

_log = logging.getLogger("rnnpolicy.serve")
_INTERNAL = grpc.StatusCode.INTERNAL
_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


class Job:
    """The answer to one request: a packed output row per step, or an error per failed row. Loop-only.

    ``width`` 0 (single-row jobs) allocates nothing up front: ``out`` becomes the row's own array.
    """

    __slots__ = ("out", "errors", "_remaining", "future")

    def __init__(self, rows: int, width: int) -> None:
        self.out: np.ndarray | None = np.zeros((rows, width), dtype=np.float32) if width else None
        self.errors: dict[int, ServeError] | None = None
        self._remaining = rows
        self.future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not rows:
            self.future.set_result(None)

    def resolve(self, row: int, values: np.ndarray) -> None:
        """Row ``row`` answered with the packed row ``values`` ``(width,)`` (not written again by anyone)."""
        if self.out is None:
            self.out = values[None]
        else:
            self.out[row] = values
        self._done()

    def resolve_rows(self, rows: Sequence[int], values: np.ndarray) -> None:
        """Rows ``rows`` answered with ``values`` ``(len(rows), width)`` (a multi-row job's; one copy for all)."""
        self.out[rows] = values
        self._remaining -= len(rows)
        if not self._remaining and not self.future.done():
            self.future.set_result(None)

    def fail(self, row: int, error: ServeError) -> None:
        """Row ``row`` was refused; its session's state is untouched."""
        if self.errors is None:
            self.errors = {}
        self.errors[row] = error
        self._done()

    def _done(self) -> None:
        self._remaining -= 1
        if not self._remaining and not self.future.done():  # a cancelled call's future stays cancelled
            self.future.set_result(None)


class Step:
    """One session's step: admitted (waiting for its batch) or queued behind the session's step in flight."""

    __slots__ = ("session", "seq", "obs", "episode_start", "deterministic", "job", "row")

    def __init__(self, session: Session, seq: int, obs: np.ndarray, episode_start: np.ndarray, deterministic: bool,
                 job: Job, row: int = 0) -> None:
        self.session = session
        self.seq = seq
        self.obs = obs                      # (1, obs_dim) float32
        self.episode_start = episode_start  # (1,) float32
        self.deterministic = deterministic
        self.job = job
        self.row = row                      # this step's row in job


class Rows:
    """The steps of one batch as columns: per row its session, seq, answer (job and row) and whether it samples."""

    __slots__ = ("sessions", "seqs", "jobs", "rows", "deterministic", "_slots")

    def __init__(self, sessions: list[Session], seqs: list[int], jobs: list[Job], rows: list[int],
                 deterministic: list[bool]) -> None:
        self.sessions = sessions
        self.seqs = seqs
        self.jobs = jobs
        self.rows = rows
        self.deterministic = deterministic
        self._slots: np.ndarray | None = None

    @classmethod
    def of(cls, steps: Sequence[Step]) -> Rows:
        return cls([s.session for s in steps], [s.seq for s in steps], [s.job for s in steps], [s.row for s in steps],
                   [s.deterministic for s in steps])

    def step(self, i: int, batch: Batch) -> Step:
        """Row ``i`` as a Step again (to redo it alone)."""
        return Step(self.sessions[i], self.seqs[i], batch.obs[i:i + 1], batch.episode_start[i:i + 1],
                    self.deterministic[i], self.jobs[i], self.rows[i])

    def slots(self, chosen: Sequence[int] | None = None) -> np.ndarray:
        """The rows' state slots ``(k,)`` (a session's slot stays while its step is in flight), or those of ``chosen``."""
        if self._slots is None:
            self._slots = np.fromiter(map(_SLOT, self.sessions), dtype=np.intp, count=len(self.sessions))
        return self._slots if chosen is None else self._slots[chosen]


_SLOT = operator.attrgetter("slot")


StepOutcome = tuple[Session, np.ndarray]
"""A step's session and its packed output row ``(width,)``."""


class StepCoordinator:
    """Admits, batches, runs, commits and answers steps; runs the session operations that change state."""

    def __init__(self, directory: SessionDirectory, store: SessionStore, catalog: ModelCatalog,
                 metrics: ServeMetrics) -> None:
        self.directory = directory
        self.store = store
        self.catalog = catalog
        self.metrics = metrics
        self._write_through = store.write_through
        self._admitted: dict[ServedModel, list[Step]] = {}  # this turn's ready steps, by model
        self._claims: dict[str, asyncio.Future[Session]] = {}  # claims in flight, by session id
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """The event loop the coordinator runs on (worker threads hand their batches back to it)."""
        self._loop = loop

    def deliver(self, batches: list[Batch]) -> None:
        """A model's worker thread finished ``batches``: finish them on the loop (called on the worker)."""
        try:
            self._loop.call_soon_threadsafe(self._finished, batches)
        except RuntimeError:  # the loop is closed: the server is gone, no one waits for these answers
            _log.warning("a batch of %d steps finished after the server stopped", sum(b.size for b in batches))

    # ------------------------------------------------------------------ one step

    def step(self, session_id: str, seq: int, obs: Any, episode_start: np.ndarray, deterministic: bool,
             principal: str, reloaded: bool = False) -> StepOutcome | Awaitable[StepOutcome]:
        """Step one session: ``(session, packed row)`` when answered at once (run alone, or a repeat from the
        cache), else an awaitable of it. ``obs`` is the request's repeated field; ``episode_start`` ``(1,)``.
        ``ServeError`` for a refused step. Counts the step when it is answered. ``reloaded``: the session was
        just claimed from the store (do not claim it again)."""
        directory = self.directory
        session = directory.held(session_id)
        model_name = ""
        try:
            if session is None:
                if self._write_through:
                    return self._step_claimed(session_id, seq, obs, episode_start, deterministic, principal)
                session = directory.lookup(session_id, principal)  # raises: not held
            elif session.principal != principal or (directory.ttl and not session.busy and
                                                    directory.clock() - session.last_used > directory.ttl):
                session = directory.lookup(session_id, principal)  # raises, or expires it and raises
            model = session.model
            model_name = model.name
            row_obs = checked_obs(obs, model)
            admission = admit(session, seq)
            if admission == "cached":
                self.metrics.count_steps(model_name, "OK")
                return session, model.slots.cached(session.slot)
            job = Job(1, 0)
            step = Step(session, seq, row_obs, episode_start, deterministic, job)
            if admission == "queued":
                enqueue(session, step)
                return self._answer(step)
            session.last_used = directory.clock()
            if _callbacks_waiting(asyncio.get_running_loop()) or self._admitted:
                self._join_turn(model, step)
                return self._answer(step)
            if not self._write_through and model.batcher.try_hold():
                try:
                    row = self._run_lone(step)
                finally:
                    model.batcher.release()
                self.metrics.count_steps(model_name, "OK")
                return session, row
            self._run(model, [step])
            return self._answer(step)
        except ServeError as exc:
            if (exc.code == grpc.StatusCode.FAILED_PRECONDITION and self._write_through and not reloaded
                    and session is not None and exc.expected_seq and seq > exc.expected_seq):
                # This replica's copy may be behind the store's (another replica stepped the session): reload it.
                return self._step_claimed(session_id, seq, obs, episode_start, deterministic, principal)
            self.metrics.count_steps(model_name, exc.code.name)
            raise

    async def _answer(self, step: Step) -> StepOutcome:
        """Wait for a step that joined a batch or queued behind its session's step in flight."""
        job = step.job
        await job.future
        model_name = step.session.model.name
        if job.errors:
            error = job.errors[0]
            self.metrics.count_steps(model_name, error.code.name)
            raise error
        self.metrics.count_steps(model_name, "OK")
        return step.session, job.out[0]

    async def _step_claimed(self, session_id: str, seq: int, obs: Any, episode_start: np.ndarray,
                            deterministic: bool, principal: str) -> StepOutcome:
        """A step of a session this process does not hold (or holds an old copy of): claim it from the store, then step."""
        try:
            await self._claim(session_id, principal)
        except ServeError as exc:
            self.metrics.count_steps("", exc.code.name)
            raise
        outcome = self.step(session_id, seq, obs, episode_start, deterministic, principal, reloaded=True)
        return outcome if isinstance(outcome, tuple) else await outcome

    # ------------------------------------------------------------------ StepBatch

    async def step_batch(self, session_ids: list[str], seqs: list[int], obs: np.ndarray, episode_start: np.ndarray,
                         deterministic: bool, principal: str, job: Job) -> ServedModel | None:
        """Step many sessions of one model; rows of ``job`` already failed are skipped. ``obs`` ``(n, obs_dim)``
        (checked by the caller against the model of the first session it could find), ``episode_start`` ``(n,)``.
        Returns the model the rows ran on (None when no row found its session)."""
        directory = self.directory
        if self._write_through:
            await self._claim_missing(session_ids, seqs, principal, job)
        failed = job.errors or {}
        model: ServedModel | None = None
        ready: list[int] = []
        sessions: list[Session] = []
        now = directory.clock()
        ttl = directory.ttl
        for row, (session_id, seq) in enumerate(zip(session_ids, seqs)):
            if row in failed:
                continue
            session = directory.held(session_id)
            # The common row in one test, as lookup and admit would decide it: the caller's idle, unexpired
            # session at its next seq, on the batch's model.
            if (session is not None and session.principal == principal and not session.busy
                    and seq == session.last_seq + 1 and (model is None or session.model is model)
                    and not (ttl and now - session.last_used > ttl)):
                model = session.model
                session.busy = True
                session.last_used = now
                ready.append(row)
                sessions.append(session)
                continue
            try:
                session = directory.lookup(session_id, principal)
                if model is None:
                    model = session.model
                elif session.model is not model:
                    raise ServeError(grpc.StatusCode.INVALID_ARGUMENT,
                                     f"session {session.session_id!r} is on model {session.model.name!r}, not "
                                     f"{model.name!r}: a StepBatch takes sessions of one model")
                admission = admit(session, seq)
            except ServeError as exc:
                job.fail(row, exc)
                continue
            if admission == "ready":
                session.last_used = now
                ready.append(row)
                sessions.append(session)
            elif admission == "cached":
                job.resolve(row, session.model.slots.cached(session.slot))
            else:
                enqueue(session, Step(session, seq, obs[row:row + 1], episode_start[row:row + 1], deterministic, job, row))
        if len(ready) == len(session_ids):  # every row ready, the common case: nothing to gather
            self._run_rows(model, Rows(sessions, seqs, [job] * len(ready), ready, [deterministic] * len(ready)),
                           obs, episode_start)
        elif ready:
            self._run_rows(model, Rows(sessions, [seqs[r] for r in ready], [job] * len(ready), ready,
                                       [deterministic] * len(ready)), obs[ready], episode_start[ready])
        await job.future
        return model

    async def _claim_missing(self, session_ids: list[str], seqs: list[int], principal: str, job: Job) -> None:
        """Claim, all at once, the sessions of a StepBatch this process does not hold, or holds an older copy of
        (the row's seq is past the next one here: another replica stepped it); fail the rows that cannot be."""
        missing = []
        for row, (sid, seq) in enumerate(zip(session_ids, seqs)):
            held = self.directory.held(sid)
            if held is None or seq > held.last_seq + 1:
                missing.append((row, sid))
        if not missing:
            return
        results = await asyncio.gather(*(self._claim(sid, principal) for _, sid in missing), return_exceptions=True)
        for (row, _), result in zip(missing, results):
            if isinstance(result, ServeError):
                job.fail(row, result)
            elif isinstance(result, BaseException):
                raise result

    # ------------------------------------------------------------------ batching and running

    def _join_turn(self, model: ServedModel, step: Step) -> None:
        """Queue ``step`` for the batch of this turn of the event loop (see :meth:`_flush`)."""
        if not self._admitted:
            asyncio.get_running_loop().call_soon(self._flush)
        admitted = self._admitted.get(model)
        if admitted is None:
            self._admitted[model] = [step]
        else:
            admitted.append(step)

    def _flush(self) -> None:
        """Run each model's steps admitted in this turn of the loop as one batch.

        Scheduled with ``call_soon`` by the first step that had to wait, it runs after the callbacks that
        were ready in the same turn (the other streams' messages that arrived together).
        """
        admitted, self._admitted = self._admitted, {}
        for model, steps in admitted.items():
            self._run(model, steps)

    def _run(self, model: ServedModel, steps: list[Step]) -> None:
        """Run ``steps`` (each of one session, from any requests) as one batch."""
        if len(steps) == 1:
            step = steps[0]
            self._run_rows(model, Rows.of(steps), step.obs, step.episode_start)
        else:
            self._run_rows(model, Rows.of(steps), np.concatenate([s.obs for s in steps]),
                           np.concatenate([s.episode_start for s in steps]))

    def _run_rows(self, model: ServedModel, rows: Rows, obs: np.ndarray, episode_start: np.ndarray) -> None:
        """Gather the rows' state and run them: here when the model is idle, else on its worker thread."""
        if len(rows.sessions) == 1:
            state = model.slots.inputs(rows.sessions[0].slot)
        else:
            state = model.slots.gather(rows.slots())
        batch = Batch(rows, obs, episode_start, state)
        if model.batcher.try_hold():
            try:
                run_batches(model.run, [batch])
            finally:
                model.batcher.release()
            self._finished([batch])
        else:
            model.batcher.submit(batch)

    def _run_lone(self, step: Step) -> np.ndarray:
        """Run one step here and now (the model is held), commit it, return its packed row. In-memory store only."""
        session = step.session
        model = session.model
        try:
            packed, next_state = model.run(step.obs, step.episode_start, model.slots.inputs(session.slot))
        except Exception:  # noqa: BLE001 - answered INTERNAL; the session is released unchanged
            _log.exception("model %r: step failed", model.name)
            self._release([session], None)
            raise ServeError(_INTERNAL, model.failed_message) from None
        if model.sampled and not step.deterministic:
            sample_actions(model.layout, packed, (0,), (session.generator(),))
        model.slots.scatter_one(session.slot, next_state, packed)
        self._release([session], [step.seq])
        return packed[0]

    def _finished(self, batches: list[Batch]) -> None:
        """Batches ran (on the loop, or on a worker and handed back): commit and answer their steps."""
        for batch in batches:
            try:
                self._commit(batch)
            except Exception:  # noqa: BLE001 - a bug here must not leave callers waiting
                _log.exception("answering a batch of %d steps failed", batch.size)
                self._fail_all(batch.steps, ServeError(_INTERNAL, "step failed inside the server (see the server log)"))

    def _commit(self, batch: Batch) -> None:
        rows: Rows = batch.steps
        sessions = rows.sessions
        model = sessions[0].model
        if batch.error is not None:
            _log.error("model %r: batched step failed", model.name, exc_info=batch.error)
            self._fail_all(rows, ServeError(_INTERNAL, model.failed_message))
            return
        packed = batch.packed
        sampled = [i for i, det in enumerate(rows.deterministic) if not det] if model.sampled else ()
        if self._write_through:
            rng_before = [sessions[i].generator().bit_generator.state for i in sampled]
            if sampled:
                sample_actions(model.layout, packed, sampled, [sessions[i].generator() for i in sampled])
            asyncio.get_running_loop().create_task(self._write_through_commit(batch, sampled, rng_before))
            return
        if sampled:
            sample_actions(model.layout, packed, sampled, [sessions[i].generator() for i in sampled])
        if len(sessions) == 1:
            model.slots.scatter_one(sessions[0].slot, batch.next_state, packed)
        else:
            model.slots.scatter(rows.slots(), batch.next_state, packed)
        self._answer_rows(rows, packed)

    def _answer_rows(self, rows: Rows, packed: np.ndarray, chosen: Sequence[int] | None = None) -> None:
        """Advance the sessions of rows ``chosen`` (None: all) and answer them with their ``packed`` rows (the rows of
        one job that follow each other, one copy for all)."""
        sessions, seqs, jobs, answer_rows = rows.sessions, rows.seqs, rows.jobs, rows.rows
        if chosen is None:
            self._release(sessions, seqs)
            if jobs.count(jobs[0]) == len(jobs):  # one job: a StepBatch's ready rows, or a lone step
                if len(jobs) == 1:
                    jobs[0].resolve(answer_rows[0], packed[0])
                else:
                    jobs[0].resolve_rows(answer_rows, packed)
                return
            chosen = range(len(sessions))
        else:
            self._release([sessions[i] for i in chosen], [seqs[i] for i in chosen])
        chosen = list(chosen)
        start = 0
        while start < len(chosen):
            job = jobs[chosen[start]]
            end = start + 1
            while end < len(chosen) and jobs[chosen[end]] is job and chosen[end] == chosen[end - 1] + 1:
                end += 1
            lo, hi = chosen[start], chosen[end - 1] + 1
            if hi - lo == 1:
                job.resolve(answer_rows[lo], packed[lo])
            else:
                job.resolve_rows(answer_rows[lo:hi], packed[lo:hi])
            start = end

    async def _write_through_commit(self, batch: Batch, sampled: list[int], rng_before: list[dict]) -> None:
        rows: Rows = batch.steps
        sessions = rows.sessions
        model = sessions[0].model
        wall = self.directory.wall()
        records = [self._stepped_record(rows, batch, i, wall) for i in range(len(sessions))]
        try:
            applied = await self.store.commit([Commit(r, seq - 1) for r, seq in zip(records, rows.seqs)])
        except StoreUnavailable as exc:
            for i, state in zip(sampled, rng_before):  # the steps never happened: neither did their draws
                sessions[i].rng.bit_generator.state = state
            self._fail_all(rows, store_unavailable(exc))
            return
        except Exception:  # noqa: BLE001
            _log.exception("committing a batch of %d steps failed", len(sessions))
            self._fail_all(rows, ServeError(_INTERNAL, "step failed inside the server (see the server log)"))
            return
        done = [i for i, ok in enumerate(applied) if ok]
        if done:
            model.slots.scatter(rows.slots(done), tuple(n[:, done] for n in batch.next_state), batch.packed[done])
            self._answer_rows(rows, batch.packed, done)
        loop = asyncio.get_running_loop()
        for i, ok in enumerate(applied):
            if not ok:  # fenced: another process holds the session now; redo its steps from the stored record
                stale = sessions[i]
                finish(stale, None)
                if self.directory.held(stale.session_id) is stale:
                    self.directory.drop(stale)
                redo = [rows.step(i, batch)]
                while (waiting := next_queued(stale)) is not None:
                    redo.append(waiting)
                for step in redo:  # in seq order: each claims (one claim per id), then steps
                    loop.create_task(self._restep(step))

    async def _restep(self, step: Step) -> None:
        """Run ``step`` again from the start (its session was dropped here) and answer its job."""
        try:
            outcome = self.step(step.session.session_id, step.seq, step.obs[0].tolist(), step.episode_start,
                                step.deterministic, step.session.principal)
            if not isinstance(outcome, tuple):
                outcome = await outcome
            step.job.resolve(step.row, outcome[1])
        except ServeError as exc:
            step.job.fail(step.row, exc)

    def _stepped_record(self, rows: Rows, batch: Batch, i: int, wall: float) -> SessionRecord:
        session = rows.sessions[i]
        model = session.model
        return SessionRecord(
            session_id=session.session_id, model=model.name, version=model.version, principal=session.principal,
            seed=session.seed, rng=session.rng.bit_generator.state if session.rng is not None else None,
            last_seq=rows.seqs[i], last_used=wall, epoch=session.epoch,
            state=tuple(np.array(n[:, i]) for n in batch.next_state),
            state_names=tuple(s.name for s in model.spec.state_tensors), last_out=batch.packed[i].copy(),
            affinity=session.affinity)

    def _fail_all(self, rows: Rows, error: ServeError) -> None:
        self._release(rows.sessions, None)
        for job, row in zip(rows.jobs, rows.rows):
            job.fail(row, error)

    def _release(self, sessions: Sequence[Session], seqs: Sequence[int] | None) -> None:
        """The sessions' steps ended (``seqs`` applied, or None: nothing advanced); admit the steps queued behind them."""
        for session in finish_rows(sessions, seqs, self.directory.clock()):
            self._admit_queued(session)

    def _admit_queued(self, session: Session) -> None:
        while (step := next_queued(session)) is not None:
            try:
                admission = admit(session, step.seq)
            except ServeError as exc:
                step.job.fail(step.row, exc)
                continue
            if admission == "cached":
                step.job.resolve(step.row, session.model.slots.cached(session.slot))
                continue
            self._join_turn(session.model, step)  # ready: the session is busy with it now
            return

    # ------------------------------------------------------------------ the store

    async def _claim(self, session_id: str, principal: str) -> Session:
        """Take over ``session_id`` from the store (one claim in flight per id); ServeError when it cannot be."""
        pending = self._claims.get(session_id)
        if pending is not None:
            session = await asyncio.shield(pending)
        else:
            future = asyncio.get_running_loop().create_future()
            self._claims[session_id] = future
            try:
                session = await self._load(session_id, principal)
                future.set_result(session)
            except BaseException as exc:
                future.set_exception(exc)
                future.exception()  # retrieved: waiters re-raise it, no "never retrieved" warning
                raise
            finally:
                del self._claims[session_id]
        if session.principal != principal:
            raise self.directory.not_yours(session_id, principal)
        return session

    async def _load(self, session_id: str, principal: str) -> Session:
        try:
            record = await self.store.claim(session_id)
        except StoreUnavailable as exc:
            raise store_unavailable(exc) from None
        except RecordError as exc:
            raise ServeError(grpc.StatusCode.FAILED_PRECONDITION, f"session {shown(session_id)}: {exc}") from None
        held = self.directory.held(session_id)
        if held is not None:  # an older copy: its epoch is stale now; let its step in flight end, then forget it
            await until_idle(held)
            if self.directory.held(session_id) is held:
                self.directory.drop(held)
        if record is None:
            try:
                tombstone = await self.store.tombstone(session_id)
            except StoreUnavailable as exc:
                raise store_unavailable(exc) from None
            raise self.directory.unknown(session_id, principal, tombstone)
        model = self.catalog.get(record.model, record.version)
        if model is None:
            loaded = sorted(m.version for m in self.catalog.versions() if m.name == record.model)
            raise ServeError(grpc.StatusCode.FAILED_PRECONDITION,
                             f"session {shown(session_id)} is pinned to version {record.version!r} of model "
                             f"{record.model!r}, which this replica does not hold (it holds {loaded}); serve that "
                             f"version on every replica, or migrate the session first")
        try:
            return self.directory.adopt(record, model, "claimed")
        except RecordError as exc:
            raise ServeError(grpc.StatusCode.FAILED_PRECONDITION, f"session {shown(session_id)}: {exc}") from None

    async def _write_state(self, session: Session, rows: tuple[np.ndarray, ...] | None,
                           target: ServedModel | None = None) -> None:
        """Commit a state change of an idle session to a write-through store (new ``rows``, or a move to ``target``)."""
        if not self._write_through:
            return
        record = self.directory.record(session)
        if rows is not None:
            record.state = rows
        if target is not None:
            record.model, record.version = target.name, target.version
        try:
            applied = await self.store.commit([Commit(record, session.last_seq)])
        except StoreUnavailable as exc:
            raise store_unavailable(exc) from None
        if not applied[0]:
            raise ServeError(_UNAVAILABLE, f"session {shown(session.session_id)} was taken over by another replica "
                                           f"meanwhile; retry the call")

    # ------------------------------------------------------------------ session operations

    async def session(self, session_id: str, principal: str) -> Session:
        """The live session, held here (claimed from a write-through store if need be) and with no step in flight."""
        while True:
            session = self.directory.held(session_id)
            if self._write_through:  # this process's copy may be behind the store's: take the session over
                session = await self._claim(session_id, principal)
            else:
                session = self.directory.lookup(session_id, principal)
            await until_idle(session)
            if self.directory.held(session_id) is session and not session.busy:
                session.last_used = self.directory.clock()
                return session

    async def create(self, model_name: str, seed: int | None, principal: str, affinity: str = "") -> Session:
        session = self.directory.create(self.catalog.latest(model_name), seed, principal, affinity)
        if self._write_through:
            session.epoch = 1
            try:
                await self.store.insert(self.directory.record(session))
            except StoreUnavailable as exc:
                self.directory.drop(session)
                raise store_unavailable(exc) from None
        return session

    async def close(self, session_id: str, principal: str) -> None:
        session = await self.session(session_id, principal)
        if self._write_through:
            try:
                await self.store.delete(session_id, session.epoch,
                                        Tombstone(session_id, "closed", self.directory.wall(), session.principal))
            except StoreUnavailable as exc:
                raise store_unavailable(exc) from None
        if self.directory.held(session_id) is session:
            self.directory.close(session)

    async def reset(self, session_id: str, principal: str) -> None:
        session = await self.session(session_id, principal)
        zeros = tuple(np.zeros_like(row) for row in session.model.slots.read(session.slot))
        await self._write_state(session, zeros)
        session.model.slots.zero(session.slot)

    async def read_state(self, session_id: str, principal: str) -> tuple[Session, tuple[np.ndarray, ...]]:
        session = await self.session(session_id, principal)
        return session, session.model.slots.read(session.slot)

    async def write_state(self, session_id: str, principal: str, check) -> None:
        """Install state rows ``check(model)`` returns for the session's model (which checks their shapes)."""
        session = await self.session(session_id, principal)
        rows = tuple(check(session.model))
        await self._write_state(session, rows)
        session.model.slots.write(session.slot, rows)

    async def migrate(self, session_id: str, principal: str, version: str) -> Session:
        session = await self.session(session_id, principal)
        target = self.catalog.migration_target(session, version)
        if target is not session.model:
            await self._write_state(session, None, target)
            self.directory.move(session, target)
        return session

    def expire_idle(self) -> int:
        """Expire the sessions idle past the TTL (deleting them from a write-through store); return how many."""
        expired = self.directory.idle_expired()
        for session in expired:
            tombstone = self.directory.expire(session)
            if self._write_through:
                asyncio.get_running_loop().create_task(self._delete_quietly(session, tombstone))
        return len(expired)

    async def _delete_quietly(self, session: Session, tombstone: Tombstone) -> None:
        try:
            await self.store.delete(session.session_id, session.epoch, tombstone)
        except StoreUnavailable as exc:  # the store's own expiry removes it later
            _log.warning("event=expire_not_stored session_id=%s reason=%r", session.session_id, str(exc))

    def snapshot(self) -> Snapshot:
        """Every session held here and the tombstones, consistent: a step in flight is not in it yet."""
        directory = self.directory
        return Snapshot([directory.record(s) for s in directory.sessions()], directory.all_tombstones())


def store_unavailable(exc: BaseException) -> ServeError:
    return ServeError(_UNAVAILABLE, f"session store unreachable: {exc}; nothing was changed, retry the call "
                                    f"(with the same seq)")


def checked_obs(values: Any, model: ServedModel) -> np.ndarray:
    """A Step's ``obs`` field as ``(1, obs_dim)`` float32; ServeError(INVALID_ARGUMENT) for a wrong length, NaN or Inf."""
    values = values[:]  # for a few values a list is faster than numpy (2.5 us against 10 us for 16)
    n = len(values)
    if n != model.obs_dim:
        raise ServeError(grpc.StatusCode.INVALID_ARGUMENT,
                         f"obs has {n} values, expected obs_dim={model.obs_dim} "
                         f"(model {model.name!r}, observation shape [{model.obs_dim}])")
    # float32 values sum without overflow in float64; the sum is NaN or Inf iff some value is.
    if not math.isfinite(sum(values)):
        bad = next(i for i, v in enumerate(values) if not math.isfinite(v))
        raise ServeError(grpc.StatusCode.INVALID_ARGUMENT,
                         f"obs contains NaN or Inf at index {bad}; expected finite float32 values")
    return np.array(values, dtype=np.float32).reshape(1, n)


def _callbacks_waiting(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether other callbacks (such as handlers with a message to process) are ready to run in this turn.

    Reads the ready queue of asyncio's own event loop (``_ready``, there since Python 3.4): the only way to
    tell a lone step, which should run at once, from one of many arriving together, which should batch. On
    a loop without one, answers True, so every step waits for the turn's batch.
    """
    ready = getattr(loop, "_ready", None)
    return ready is None or len(ready) > 0
