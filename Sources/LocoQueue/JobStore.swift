import Foundation
import Logging
import PostgresNIO

/// Every SQL statement of the queue. Callers pass a `QueryRunner`: the pool, or a connection
/// inside their own transaction.
public struct JobStore: Sendable {
    public static let channel = "loco_jobs"
    /// The statement behind a single enqueue without dependencies or unique key (`$1` queue,
    /// `$2` kind, `$3` args, `$4` priority, `$5` max attempts, `$6` run at), notifying in its own
    /// transaction as it does behind a pooler or in a transaction of the caller's own, so a
    /// benchmark can run it from another client as a baseline. On a `ReconnectingConnection`, and
    /// in a transaction Loco runs, the same insert goes without the notify and the wake-up
    /// after it (`SingleEnqueueHandler`, `WakeUpsAfterCommit`).
    public static let singleEnqueueStatement = JobStatements.EnqueueOne.sql
    static let live = "('blocked','scheduled','available','running')"
    /// Whether the key of loco_unique_periods row `u` is still held: its period has not ended or
    /// its holder is live, and the holder neither failed for good nor was cancelled. A holder
    /// that is gone (pruned) had completed, so its key is held until the period ends.
    static let periodKeyHeld = """
        (NOT EXISTS (SELECT FROM loco_jobs j WHERE j.id = u.job_id AND j.state IN ('failed', 'cancelled'))
         AND (u.held_until > now() OR EXISTS (SELECT FROM loco_jobs j WHERE j.id = u.job_id AND j.state IN \(live))))
        """

    public let logger: Logger

    public init(logger: Logger) {
        self.logger = logger
    }

    // MARK: Enqueue

    /// Enqueues `job`. An error PostgreSQL reports (a schema not migrated, a constraint) comes
    /// back as a `DatabaseServerError` on every connection and path, as it does from the
    /// prepared single enqueue.
    public func enqueue(_ job: NewJob, on db: some QueryRunner) async throws -> EnqueuedJob {
        try await DatabaseServerError.coding { try await insertOne(job, on: db) }
    }

    private func insertOne(_ job: NewJob, on db: some QueryRunner) async throws -> EnqueuedJob {
        try job.validate()
        let dependsOn = job.dependsOn.isEmpty ? [] : Array(Set(job.dependsOn)).sorted()
        for _ in 0..<3 {
            let inserted = if !dependsOn.isEmpty || job.uniqueFor != nil {
                try await insert(job, dependingOn: dependsOn, on: db)
            } else {
                try await db.insertJob(job, logger: logger)
            }
            if let (id, state) = inserted {
                return EnqueuedJob(id: id, state: JobState(rawValue: state) ?? .available, duplicate: false)
            }
            if !dependsOn.isEmpty {
                var found = Set<Int64>()
                for try await id in try await db.run("SELECT id FROM loco_jobs WHERE id = ANY(\(dependsOn))", logger: logger).decode(Int64.self) {
                    found.insert(id)
                }
                let missing = dependsOn.filter { !found.contains($0) }
                if !missing.isEmpty { throw QueueError.unknownDependencies(missing) }
            }
            if job.uniqueFor != nil, let uniqueKey = job.uniqueKey {
                if let holder = try await periodHolder(of: uniqueKey, on: db) { return holder }
                // Its holder failed or was cancelled between our insert and our look-up: try again.
                continue
            }
            if let uniqueKey = job.uniqueKey {
                let existing = try await db.run("""
                    SELECT id, state FROM loco_jobs WHERE unique_key = \(uniqueKey) AND state IN \(unescaped: Self.live)
                    """, logger: logger)
                for try await (id, state) in existing.decode((Int64, String).self) {
                    return EnqueuedJob(id: id, state: JobState(rawValue: state) ?? .available, duplicate: true)
                }
                // The holder finished between our insert and our look-up: the key is free, try again.
                continue
            }
            throw QueueError.invalidEnqueue(reason: "the database inserted no row")
        }
        throw QueueError.invalidEnqueue(reason: "the unique key '\(job.uniqueKey ?? "")' kept changing hands; try again")
    }

    /// The job holding `key` for its period, as a duplicate; nil when the key is free again
    /// (its holder failed or was cancelled meanwhile). A holder pruned within its period had completed.
    private func periodHolder(of key: String, on db: some QueryRunner) async throws -> EnqueuedJob? {
        let rows = try await db.run("""
            SELECT u.job_id, coalesce(j.state, 'completed')
            FROM loco_unique_periods u LEFT JOIN loco_jobs j ON j.id = u.job_id
            WHERE u.unique_key = \(key) AND \(unescaped: Self.periodKeyHeld)
            """, logger: logger)
        for try await (id, state) in rows.decode((Int64, String).self) {
            return EnqueuedJob(id: id, state: JobState(rawValue: state) ?? .completed, duplicate: true)
        }
        return nil
    }

    /// Inserts a job with parents (none is fine), locking them so a parent finishing concurrently
    /// either sees the new edge or is counted as finished; nil when a parent is missing or the key
    /// is held. A key held for a period is taken first, once every parent was found (a missing one
    /// leaves it alone): its row in loco_unique_periods names the job's id, and decides between
    /// concurrent enqueuers (the second waits for the first to commit, then sees the key held).
    /// Only such jobs' statement names that table, so a database without migration 9 still takes
    /// other jobs.
    private func insert(_ job: NewJob, dependingOn dependsOn: [Int64], on db: some QueryRunner) async throws -> (Int64, String)? {
        let period = job.uniqueFor != nil && job.uniqueKey != nil
        // Where wake-ups go after a commit, the statement notifies no one.
        let moment = WakeUpMoment(for: db)
        let slot = period ? """
            slot AS (
                INSERT INTO loco_unique_periods AS u (unique_key, job_id, held_until)
                SELECT p.key, nextval(pg_get_serial_sequence('loco_jobs', 'id')), now() + make_interval(secs => p.secs)
                FROM period p, summary s WHERE s.found = \(dependsOn.count)
                ON CONFLICT (unique_key) DO UPDATE SET job_id = EXCLUDED.job_id, held_until = EXCLUDED.held_until
                WHERE NOT \(Self.periodKeyHeld)
                RETURNING job_id
            ),
            """ : ""
        let rows = try await db.run("""
            WITH period AS (
                SELECT \(job.uniqueKey)::text AS key, \(job.uniqueFor?.seconds)::float8 AS secs
            ), parents AS (
                UPDATE loco_jobs SET has_dependents = true WHERE id = ANY(\(dependsOn)) RETURNING id, state
            ), summary AS (
                SELECT count(*) AS found,
                       count(*) FILTER (WHERE state <> 'completed') AS pending,
                       coalesce(bool_or(state IN ('failed', 'cancelled')), false) AS doomed
                FROM parents
            ), \(unescaped: slot) ins AS (
                INSERT INTO loco_jobs (id, queue, kind, args, state, priority, max_attempts, run_at, unique_key,
                                       pending_deps, finalized_at, errors)
                OVERRIDING SYSTEM VALUE
                SELECT \(unescaped: period ? "(SELECT job_id FROM slot)" : "nextval(pg_get_serial_sequence('loco_jobs', 'id'))"),
                       \(job.queue), \(job.kind), \(job.args)::jsonb,
                       CASE WHEN s.doomed THEN 'cancelled'
                            WHEN s.pending > 0 THEN 'blocked'
                            WHEN \(job.runAt)::timestamptz > now() THEN 'scheduled'
                            ELSE 'available' END,
                       \(job.priority), \(job.maxAttempts), COALESCE(\(job.runAt)::timestamptz, now()),
                       \(unescaped: period ? "NULL" : "(SELECT key FROM period)"),
                       s.pending, CASE WHEN s.doomed THEN now() END,
                       CASE WHEN s.doomed THEN jsonb_build_array(jsonb_build_object(
                           'attempt', 0, 'at', to_char(now() AT TIME ZONE 'UTC', \(JSONCoding.sqlTimestampFormat)),
                           'worker', NULL, 'class', 'permanent', 'code', 'dependency_failed',
                           'message', 'a job this job depends on had already failed or been cancelled',
                           'detail', NULL))
                            ELSE '[]'::jsonb END
                FROM summary s
                WHERE s.found = \(dependsOn.count) \(unescaped: period ? "AND EXISTS (SELECT FROM slot)" : "")
                ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND state IN \(unescaped: Self.live) DO NOTHING
                RETURNING id, state, queue
            ), edges AS (
                INSERT INTO loco_job_dependencies (job_id, depends_on)
                SELECT ins.id, d FROM ins, unnest(\(dependsOn)::bigint[]) AS d
            ), woke AS (
                SELECT pg_notify(\(Self.channel), queue) FROM ins WHERE state = 'available' AND \(moment.inStatement)
            )
            SELECT id, state, (SELECT count(*) FROM woke) FROM ins
            """, logger: logger)
        var inserted: (Int64, String)?
        for try await (id, state, _) in rows.decode((Int64, String, Int64).self) where inserted == nil { inserted = (id, state) }
        if inserted?.1 == "available" { await moment.wake([job.queue], on: db, logger: logger) }
        return inserted
    }

    /// Enqueues many jobs in one round trip. Jobs with a unique key or dependencies take the
    /// one-at-a-time path (still one call for the caller); pass a connection inside a
    /// transaction to make the whole batch atomic.
    public func enqueueMany(_ jobs: [NewJob], on db: some QueryRunner) async throws -> [EnqueuedJob] {
        for job in jobs { try job.validate() }
        guard !jobs.isEmpty else { return [] }
        if jobs.contains(where: { $0.uniqueKey != nil || !$0.dependsOn.isEmpty }) {
            var results: [EnqueuedJob] = []
            for job in jobs { results.append(try await enqueue(job, on: db)) }
            return results
        }
        return try await DatabaseServerError.coding { try await insertBatch(jobs, on: db) }
    }

    /// Jobs without unique keys or dependencies, in one statement.
    private func insertBatch(_ jobs: [NewJob], on db: some QueryRunner) async throws -> [EnqueuedJob] {
        let epochNone = -1.0
        let moment = WakeUpMoment(for: db)
        let rows = try await db.run("""
            WITH input AS (
                SELECT * FROM unnest(\(jobs.map(\.queue))::text[], \(jobs.map(\.kind))::text[], \(jobs.map(\.args))::text[],
                                     \(jobs.map(\.priority))::int8[], \(jobs.map(\.maxAttempts))::int8[],
                                     \(jobs.map { $0.runAt?.timeIntervalSince1970 ?? epochNone })::float8[])
                    WITH ORDINALITY AS t(queue, kind, args, priority, max_attempts, run_at, ord)
            ), ins AS (
                INSERT INTO loco_jobs (queue, kind, args, state, priority, max_attempts, run_at)
                SELECT queue, kind, args::jsonb,
                       CASE WHEN run_at >= 0 AND to_timestamp(run_at) > now() THEN 'scheduled' ELSE 'available' END,
                       priority, max_attempts,
                       CASE WHEN run_at >= 0 THEN to_timestamp(run_at) ELSE now() END
                FROM input ORDER BY ord
                RETURNING id, state, queue
            ), woke AS (
                SELECT pg_notify(\(Self.channel), queue) FROM (SELECT DISTINCT queue FROM ins WHERE state = 'available') q
                WHERE \(moment.inStatement)
            )
            SELECT array_agg(id ORDER BY id), array_agg(state = 'scheduled' ORDER BY id), (SELECT count(*) FROM woke) FROM ins
            """, logger: logger)
        // One row of arrays, not a row per job: a thousand rows cost more to send, and to read
        // through the row stream, than the inserts did. Identity values follow the insert's
        // ORDER BY, so ordering by id is input order.
        var inserted: (ids: [Int64], scheduled: [Bool])?
        for try await (ids, scheduled, _) in rows.decode(([Int64], [Bool], Int64).self) where ids.count == jobs.count && scheduled.count == ids.count {
            inserted = (ids, scheduled)
        }
        guard let (ids, scheduled) = inserted else {
            throw QueueError.invalidEnqueue(reason: "the database did not insert all \(jobs.count) jobs")
        }
        var seen = Set<String>()
        let due = zip(jobs, scheduled).filter { !$0.1 && seen.insert($0.0.queue).inserted }.map(\.0.queue)
        await moment.wake(due, on: db, logger: logger)
        return zip(ids, scheduled).map { EnqueuedJob(id: $0, state: $1 ? .scheduled : .available, duplicate: false) }
    }

    // MARK: Claim, finish, lease

    /// Claims up to `limit` available jobs of `queue` for `worker`, in priority, run_at, id order.
    func claim(queue: String, limit: Int, worker: String, lease: Duration, on db: some QueryRunner) async throws -> [ClaimedJob] {
        let rows = try await db.prepared(
            JobStatements.Claim(queue: queue, limit: limit, worker: worker, leaseSeconds: lease.seconds), logger: logger)
        var claimed: [ClaimedJob] = []
        claimed.reserveCapacity(rows.count)
        for (id, kind, args, attempt, maxAttempts, runAt, createdAt, attemptedAt, hasDependents) in rows {
            claimed.append(ClaimedJob(id: id, queue: queue, kind: kind, args: args, attempt: attempt, maxAttempts: maxAttempts,
                                      runAt: runAt, createdAt: createdAt, attemptedAt: attemptedAt, hasDependents: hasDependents))
        }
        // Claim order matters to handlers that log or test it; RETURNING does not promise it.
        claimed.sort { $0.id < $1.id }
        return claimed
    }

    /// Claims as `claim` does and, in the same statement and commit, records `outcomes` (jobs
    /// without dependents) as `record` does.
    func claim(queue: String, limit: Int, worker: String, lease: Duration, recording outcomes: [JobOutcome],
               on db: some QueryRunner) async throws -> (jobs: [ClaimedJob], recorded: [Int64: JobState]) {
        guard !outcomes.isEmpty else {
            return (try await claim(queue: queue, limit: limit, worker: worker, lease: lease, on: db), [:])
        }
        precondition(!outcomes.contains(where: \.hasDependents), "outcomes with dependents are written by record(_:worker:on:)")
        let rows = try await db.prepared(JobStatements.ClaimAndRecord(
            claim: .init(queue: queue, limit: limit, worker: worker, leaseSeconds: lease.seconds),
            outcomes: outcomes.sorted { $0.id < $1.id }), logger: logger)
        var claimed: [ClaimedJob] = []
        var recorded: [Int64: JobState] = [:]
        for (id, kind, args, attempt, maxAttempts, runAt, createdAt, attemptedAt, hasDependents, recordedState) in rows {
            if let recordedState {
                recorded[id] = JobState(rawValue: recordedState)
            } else if let kind, let args, let attempt, let maxAttempts, let runAt, let createdAt, let attemptedAt, let hasDependents {
                claimed.append(ClaimedJob(id: id, queue: queue, kind: kind, args: args, attempt: attempt, maxAttempts: maxAttempts,
                                          runAt: runAt, createdAt: createdAt, attemptedAt: attemptedAt, hasDependents: hasDependents))
            }
        }
        claimed.sort { $0.id < $1.id }
        return (claimed, recorded)
    }

    /// Records outcomes of jobs this worker holds; returns the state each job it really updated
    /// ended in (a retry becomes `cancelled` when a cancel was requested meanwhile). An id
    /// missing from the result had lost its lease: that outcome was dropped, never applied.
    func record(_ outcomes: [JobOutcome], worker: String, on db: some QueryRunner) async throws -> [Int64: JobState] {
        guard !outcomes.isEmpty else { return [:] }
        // In id order, the order in which an index scan of `id = ANY(...)` (an operator's bulk
        // cancel, say) locks the same rows: two writers that lock in one order cannot deadlock.
        let inIDOrder = outcomes.sorted { $0.id < $1.id }
        // Dependents a completion releases are woken after its commit where that can be done
        // (as enqueues' queues are): in a transaction Loco runs, or by a runner whose
        // statements commit on their own. A NOTIFY refused at the commit of the completion
        // itself rolled it back, and with a full NOTIFY queue no such job could complete.
        let moment = WakeUpMoment(for: db)
        let record = JobStatements.Record(outcomes: inIDOrder, worker: worker, wakesAfterCommit: !moment.inStatement)
        // One job's dependents are settled by one statement of the trigger, in one order; two
        // jobs' could be reached in crossed orders by two completers.
        let rows = if inIDOrder.count(where: \.hasDependents) >= 2 {
            try await db.prepared(JobStatements.RecordLockingInIDOrder(record: record), logger: logger)
        } else {
            try await db.prepared(record, logger: logger)
        }
        var updated: [Int64: JobState] = [:]
        for (id, state) in rows { updated[id] = JobState(rawValue: state) }
        let releasing = inIDOrder.filter { $0.hasDependents && updated[$0.id] == .completed }.map(\.id)
        if !moment.inStatement && !releasing.isEmpty {
            // The outcomes are written whatever happens here: a dependent not woken is found by
            // its workers' next poll.
            do {
                let released = try await db.run("""
                    SELECT DISTINCT j.queue FROM loco_job_dependencies d JOIN loco_jobs j ON j.id = d.job_id
                    WHERE d.depends_on = ANY(\(releasing)::int8[]) AND j.state = 'available'
                    """, logger: logger)
                var queues: [String] = []
                for try await queue in released.decode(String.self) { queues.append(queue) }
                await moment.wake(queues, on: db, logger: logger)
            } catch {
                logger.debug("the queues of released dependents were not looked up; their workers find them at their next poll",
                             metadata: ["error": "\(error)"])
            }
        }
        return updated
    }

    /// Of `outcomes` that `record` did not write, the final ones this worker had already written:
    /// an earlier try committed, but its answer was lost with its connection, so the retry found
    /// the job no longer running. Their ids and states.
    func alreadyRecorded(_ outcomes: [JobOutcome], worker: String, on db: some QueryRunner) async throws -> [Int64: JobState] {
        let final = outcomes.filter { [.completed, .failed, .cancelled].contains($0.state) }
        guard !final.isEmpty else { return [:] }
        let rows = try await db.run("""
            SELECT j.id, j.state FROM loco_jobs j
            JOIN unnest(\(final.map(\.id))::int8[], \(final.map { Int64($0.attempt) })::int8[], \(final.map(\.state.rawValue))::text[])
                AS t(id, attempt, state) ON j.id = t.id AND j.attempt = t.attempt AND j.state = t.state
            WHERE j.locked_by = \(worker) AND j.finalized_at IS NOT NULL
            """, logger: logger)
        var found: [Int64: JobState] = [:]
        for try await (id, state) in rows.decode((Int64, String).self) { found[id] = JobState(rawValue: state) }
        return found
    }

    /// Extends the leases of jobs this worker holds. Returns, for each job still held, whether its
    /// lease was renewed (and whether cancellation was requested) or the job was busy (locked by
    /// someone else at that moment); jobs missing from the result were lost.
    func heartbeat(_ held: [(id: Int64, attempt: Int)], worker: String, lease: Duration, on db: some QueryRunner) async throws -> [Int64: LeaseRenewal] {
        guard !held.isEmpty else { return [:] }
        let rows = try await db.prepared(
            JobStatements.Heartbeat(held: held, worker: worker, leaseSeconds: lease.seconds), logger: logger)
        var result: [Int64: LeaseRenewal] = [:]
        for (id, cancel) in rows { result[id] = cancel.map { .renewed(cancelRequested: $0) } ?? .busy }
        return result
    }

    /// Finds the jobs the database has `running` under this worker that the worker does not hold
    /// (`held`): claims that committed but whose answer never reached it, because the connection
    /// dropped or the watchdog gave up on the statement. Those already suspected at the last look
    /// (`suspects`, with their attempts), at least a heartbeat interval ago, have their leases cut
    /// to now, so the next rescue pass retries them (recording `lease_expired`) instead of their
    /// sitting out the whole lease. A claim's answer arrives in milliseconds, so a job suspected
    /// twice is no longer on its way. Returns the strays seen now, and which of them were cut.
    /// Only jobs claimed more than `minimumAge` ago (by the database's clock) are looked at: a
    /// claim answered but not yet in the worker's hands under heavy load is younger.
    func releaseStrayClaims(worker: String, held: [Int64], suspects: [Int64: Int], minimumAge: Duration,
                            on db: some QueryRunner) async throws -> (strays: [Int64: Int], cut: [Int64]) {
        let suspected = Array(suspects)
        let rows = try await db.run("""
            WITH stray AS MATERIALIZED (
                SELECT j.id, j.attempt FROM loco_jobs j
                WHERE j.state = 'running' AND j.locked_by = \(worker) AND j.id <> ALL(\(held)::int8[])
                  AND j.attempted_at < now() - make_interval(secs => \(minimumAge.seconds))
            ), cut AS (
                UPDATE loco_jobs j SET lease_expires_at = now()
                FROM stray s JOIN unnest(\(suspected.map(\.key))::int8[], \(suspected.map { Int64($0.value) })::int8[]) AS p(id, attempt)
                  ON p.id = s.id AND p.attempt = s.attempt
                WHERE j.id = s.id AND j.attempt = s.attempt AND j.state = 'running' AND j.locked_by = \(worker)
                RETURNING j.id
            )
            SELECT s.id, s.attempt, s.id IN (SELECT id FROM cut) FROM stray s
            """, logger: logger)
        var strays: [Int64: Int] = [:]
        var cut: [Int64] = []
        for try await (id, attempt, wasCut) in rows.decode((Int64, Int, Bool).self) {
            if wasCut { cut.append(id) } else { strays[id] = attempt }
        }
        return (strays, cut)
    }

    /// What a heartbeat found for one job it still holds.
    enum LeaseRenewal: Equatable {
        case renewed(cancelRequested: Bool)
        /// Another transaction had the job locked (its outcome being written, a cancel, the
        /// rescuer): not renewed this time, not lost either.
        case busy
    }

    // MARK: Presence

    /// The first key of the worker presence locks; the second is `hashtext(worker id)`.
    static let presenceLockClass: Int32 = 0x4C50_5253

    /// SQL: whether a session holds the presence lock of the worker whose id is in `column`.
    static func presenceHeld(by column: String) -> String {
        """
        EXISTS (SELECT 1 FROM pg_locks l
                WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
                  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                  AND l.classid = \(presenceLockClass)::int4::oid AND l.objid = hashtext(\(column))::oid)
        """
    }

    /// Takes this process's presence lock on the session that runs it and lists the worker, so
    /// that rescuers know its jobs are orphaned once that session ends. Returns false if another
    /// session holds the lock (a second process with this worker id, or one whose id hashes
    /// alike): the worker is then unlisted and its jobs wait out their leases as before.
    func announcePresence(worker: String, queues: [String] = [], on db: some QueryRunner) async throws -> Bool {
        let rows = try await db.run("""
            WITH presence AS (SELECT pg_try_advisory_lock(\(Self.presenceLockClass), hashtext(\(worker))) AS held),
            listed AS (
                INSERT INTO loco_workers (id, queues) SELECT \(worker), \(queues)::text[] FROM presence WHERE held
                ON CONFLICT (id) DO UPDATE SET seen_at = now(), queues = EXCLUDED.queues
            ),
            unlisted AS (DELETE FROM loco_workers WHERE id = \(worker) AND NOT (SELECT held FROM presence))
            SELECT held FROM presence
            """, logger: logger)
        for try await held in rows.decode(Bool.self) { return held }
        return false
    }

    /// Cuts to `grace` the leases of running jobs whose listed worker holds no presence lock: its
    /// process died (or lost its database session and has not come back within `grace`, which a
    /// living worker does, renewing its leases as it returns). Returns the jobs whose leases
    /// were cut. `pg_locks` is read only for workers that run jobs, once for each.
    func cutOrphanedLeases(grace: Duration, on db: some QueryRunner) async throws -> [(id: Int64, worker: String)] {
        let rows = try await db.run("""
            WITH holders AS MATERIALIZED (
                SELECT DISTINCT j.locked_by AS id FROM loco_jobs j JOIN loco_workers w ON w.id = j.locked_by
                WHERE j.state = 'running' AND j.lease_expires_at > now() + make_interval(secs => \(grace.seconds))
            ),
            gone AS MATERIALIZED (SELECT h.id FROM holders h WHERE NOT \(unescaped: Self.presenceHeld(by: "h.id"))),
            orphaned AS MATERIALIZED (
                SELECT j.id FROM loco_jobs j JOIN gone ON gone.id = j.locked_by
                WHERE j.state = 'running' AND j.lease_expires_at > now() + make_interval(secs => \(grace.seconds))
                FOR UPDATE OF j SKIP LOCKED
            )
            UPDATE loco_jobs j SET lease_expires_at = now() + make_interval(secs => \(grace.seconds))
            FROM orphaned WHERE j.id = orphaned.id
            RETURNING j.id, j.locked_by
            """, logger: logger)
        var cut: [(id: Int64, worker: String)] = []
        for try await (id, worker) in rows.decode((Int64, String).self) { cut.append((id, worker)) }
        return cut
    }

    /// Unlists workers gone for `age` that hold no running jobs; returns how many.
    func forgetGoneWorkers(olderThan age: Duration, on db: some QueryRunner) async throws -> Int {
        let rows = try await db.run("""
            DELETE FROM loco_workers w
            WHERE w.seen_at < now() - make_interval(secs => \(age.seconds))
              AND NOT EXISTS (SELECT 1 FROM loco_jobs j WHERE j.state = 'running' AND j.locked_by = w.id)
              AND NOT \(unescaped: Self.presenceHeld(by: "w.id"))
            RETURNING w.id
            """, logger: logger)
        var count = 0
        for try await _ in rows.decode(String.self) { count += 1 }
        return count
    }

    // MARK: Maintenance

    /// Returns jobs whose lease expired to `scheduled` (with backoff) or finishes them when out
    /// of attempts; records `lease_expired` in their errors. A job waits by its kind's policy in
    /// `kindRetries` (the rescuing process's own registrations), else by `retry`.
    func rescueExpired(limit: Int, retry: RetryPolicy, kindRetries: [String: RetryPolicy] = [:],
                       on db: some QueryRunner) async throws -> [(id: Int64, queue: String, state: JobState)] {
        let kinds = kindRetries.sorted { $0.key < $1.key }
        let rows = try await db.run("""
            WITH expired AS MATERIALIZED (
                SELECT id FROM loco_jobs
                WHERE state = 'running' AND lease_expires_at < now()
                ORDER BY lease_expires_at LIMIT \(limit)
                FOR UPDATE SKIP LOCKED
            ), kind_retry AS (
                SELECT * FROM unnest(\(kinds.map(\.key))::text[], \(kinds.map(\.value.base.seconds))::float8[],
                                     \(kinds.map(\.value.cap.seconds))::float8[]) AS t(kind, base, cap)
            )
            UPDATE loco_jobs j
            SET state = CASE WHEN j.cancel_requested THEN 'cancelled'
                             WHEN j.attempt >= j.max_attempts THEN 'failed' ELSE 'scheduled' END,
                run_at = now() + make_interval(secs => random() * least(
                    coalesce((SELECT k.cap FROM kind_retry k WHERE k.kind = j.kind), \(retry.cap.seconds)),
                    coalesce((SELECT k.base FROM kind_retry k WHERE k.kind = j.kind), \(retry.base.seconds))
                        * power(2, least(greatest(j.attempt - 1, 0), 60)))),
                finalized_at = CASE WHEN j.cancel_requested OR j.attempt >= j.max_attempts THEN now() END,
                errors = j.errors || jsonb_build_array(jsonb_build_object(
                    'attempt', j.attempt, 'at', to_char(now() AT TIME ZONE 'UTC', \(JSONCoding.sqlTimestampFormat)),
                    'worker', j.locked_by, 'class', 'retryable', 'code', 'lease_expired',
                    'message', 'the worker holding this job stopped renewing its lease (it crashed, was killed, lost the database, or never got its claim''s answer)',
                    'detail', 'lease expired at ' || to_char(j.lease_expires_at AT TIME ZONE 'UTC', \(JSONCoding.sqlTimestampFormat)))),
                locked_by = NULL, lease_expires_at = NULL
            FROM expired WHERE j.id = expired.id
            RETURNING j.id, j.queue, j.state
            """, logger: logger)
        var rescued: [(id: Int64, queue: String, state: JobState)] = []
        for try await (id, queue, state) in rows.decode((Int64, String, String).self) {
            rescued.append((id, queue, JobState(rawValue: state) ?? .scheduled))
        }
        return rescued
    }

    /// Makes due `scheduled` jobs `available` and wakes their queues; returns how many.
    func promoteDue(limit: Int, on db: some QueryRunner) async throws -> Int {
        let moment = WakeUpMoment(for: db)
        let rows = try await db.run("""
            WITH due AS MATERIALIZED (
                SELECT id FROM loco_jobs
                WHERE state = 'scheduled' AND run_at <= now()
                ORDER BY run_at LIMIT \(limit)
                FOR UPDATE SKIP LOCKED
            ), promoted AS (
                UPDATE loco_jobs j SET state = 'available' FROM due WHERE j.id = due.id RETURNING j.queue
            ), queues AS (
                SELECT DISTINCT queue FROM promoted
            ), woke AS (
                SELECT pg_notify(\(Self.channel), queue) FROM queues WHERE \(moment.inStatement)
            )
            SELECT count(*), (SELECT count(*) FROM woke), (SELECT coalesce(array_agg(queue), '{}') FROM queues) FROM promoted
            """, logger: logger)
        var promoted = 0, queues: [String] = []
        for try await (count, _, woken) in rows.decode((Int64, Int64, [String]).self) { (promoted, queues) = (Int(count), woken) }
        await moment.wake(queues, on: db, logger: logger)
        return promoted
    }

    /// Deletes up to `limit` jobs that ended in `state` longer than `retention` ago; returns how many.
    func pruneFinished(_ state: JobState, olderThan retention: Duration, limit: Int, on db: some QueryRunner) async throws -> Int {
        precondition(state.isFinal, "only finished jobs are pruned")
        // The state is written into the statement (one of three fixed words), so PostgreSQL can
        // match it to the partial index on finalized_at whatever plan it keeps.
        let rows = try await db.run("""
            WITH doomed AS MATERIALIZED (
                SELECT id FROM loco_jobs
                WHERE state = '\(unescaped: state.rawValue)'
                  AND finalized_at < now() - make_interval(secs => \(retention.seconds))
                ORDER BY finalized_at LIMIT \(limit)
                FOR UPDATE SKIP LOCKED
            ), deleted AS (
                DELETE FROM loco_jobs j USING doomed WHERE j.id = doomed.id RETURNING j.id
            )
            SELECT count(*) FROM deleted
            """, logger: logger)
        for try await count in rows.decode(Int64.self) { return Int(count) }
        return 0
    }

    /// Deletes up to `limit` unique keys whose period ended and whose holder is no longer live
    /// (those are free anyway); returns how many.
    func pruneUniquePeriods(limit: Int, on db: some QueryRunner) async throws -> Int {
        let rows = try await db.run("""
            WITH ended AS MATERIALIZED (
                SELECT u.unique_key FROM loco_unique_periods u
                WHERE u.held_until < now() AND NOT \(unescaped: Self.periodKeyHeld)
                ORDER BY u.held_until LIMIT \(limit)
                FOR UPDATE SKIP LOCKED
            ), deleted AS (
                DELETE FROM loco_unique_periods u USING ended WHERE u.unique_key = ended.unique_key
                RETURNING u.unique_key
            )
            SELECT count(*) FROM deleted
            """, logger: logger)
        for try await count in rows.decode(Int64.self) { return Int(count) }
        return 0
    }

    /// Moves a periodic job's newest enqueued slot forward to `slot`; true when this caller did
    /// it (and so must enqueue the slot), false when another scheduler already had.
    func advanceCronSlot(name: String, to slot: Date, on db: some QueryRunner) async throws -> Bool {
        let rows = try await db.run("""
            INSERT INTO loco_cron_slots (name, last_slot) VALUES (\(name), \(slot))
            ON CONFLICT (name) DO UPDATE SET last_slot = EXCLUDED.last_slot, updated_at = now()
                WHERE loco_cron_slots.last_slot < EXCLUDED.last_slot
            RETURNING name
            """, logger: logger)
        for try await _ in rows.decode(String.self) { return true }
        return false
    }

    func cronSlot(name: String, on db: some QueryRunner) async throws -> Date? {
        let rows = try await db.run("SELECT last_slot FROM loco_cron_slots WHERE name = \(name)", logger: logger)
        for try await slot in rows.decode(Date.self) { return slot }
        return nil
    }

    // MARK: Periodic jobs' settings

    /// What operators changed of the periodic jobs, by name.
    public func cronSettings(on db: some QueryRunner) async throws -> [String: CronSetting] {
        try await DatabaseServerError.coding {
            let settings = try await cronSettingRows("SELECT \(unescaped: Self.cronSettingColumns) FROM loco_cron_settings", on: db)
            // The name is the table's primary key.
            return Dictionary(uniqueKeysWithValues: settings.map { ($0.name, $0) })
        }
    }

    /// What `cronSettingRows` decodes, in its order.
    private static let cronSettingColumns = "name, schedule, paused_at, changed_by, updated_at"

    /// Runs a statement that returns `cronSettingColumns` rows.
    private func cronSettingRows(_ statement: PostgresQuery, on db: some QueryRunner) async throws -> [CronSetting] {
        let rows = try await db.run(statement, logger: logger)
        var settings: [CronSetting] = []
        for try await (name, schedule, pausedAt, changedBy, updatedAt) in rows.decode((String, String?, Date?, String?, Date).self) {
            settings.append(CronSetting(name: name, schedule: schedule, pausedAt: pausedAt, changedBy: changedBy, updatedAt: updatedAt))
        }
        return settings
    }

    /// Runs `periodic` on `schedule` from now on (nil: the schedule declared in code again), from
    /// the current slot: slots the new schedule had before it are not caught up.
    public func setCronSchedule(_ periodic: PeriodicJob, to schedule: CronSchedule?, by who: String?, on db: some TransactionRunner) async throws -> CronSetting {
        try await DatabaseServerError.coding {
            try await db.transaction { connection in
                let setting = try await writeCronSetting(periodic.name, """
                    INSERT INTO loco_cron_settings (name, schedule, changed_by) VALUES (\(periodic.name), \(schedule?.expression), \(who))
                    ON CONFLICT (name) DO UPDATE SET schedule = EXCLUDED.schedule, changed_by = EXCLUDED.changed_by, updated_at = now()
                    RETURNING \(unescaped: Self.cronSettingColumns)
                    """, on: connection)
                try await skipPastSlots(of: periodic.with(schedule: schedule ?? periodic.schedule), on: connection)
                return setting
            }
        }
    }

    /// Pauses or resumes `periodic` on every scheduler and for `locod cron NAME`. Pausing a paused
    /// job (or resuming a running one) changes nothing; resuming starts from the current slot,
    /// without catching up on the slots that passed while paused.
    /// Returns the setting as it now is (nil: nothing was ever changed) and whether this call changed it.
    public func setCronPaused(_ periodic: PeriodicJob, _ paused: Bool, by who: String?, on db: some TransactionRunner) async throws -> (setting: CronSetting?, changed: Bool) {
        try await DatabaseServerError.coding {
            try await db.transaction { connection in
                let before = try await cronSettingRows("""
                    SELECT \(unescaped: Self.cronSettingColumns) FROM loco_cron_settings WHERE name = \(periodic.name) FOR UPDATE
                    """, on: connection).first
                if (before?.pausedAt != nil) == paused { return (before, false) }
                let setting = try await writeCronSetting(periodic.name, """
                    INSERT INTO loco_cron_settings (name, paused_at, changed_by) VALUES (\(periodic.name), CASE WHEN \(paused) THEN now() END, \(who))
                    ON CONFLICT (name) DO UPDATE SET paused_at = EXCLUDED.paused_at, changed_by = EXCLUDED.changed_by, updated_at = now()
                    RETURNING \(unescaped: Self.cronSettingColumns)
                    """, on: connection)
                if !paused { try await skipPastSlots(of: (try? periodic.applying(setting)) ?? periodic, on: connection) }
                return (setting, true)
            }
        }
    }

    private func writeCronSetting(_ name: String, _ statement: PostgresQuery, on connection: some QueryRunner) async throws -> CronSetting {
        guard let setting = try await cronSettingRows(statement, on: connection).first else { throw QueueError.periodicJobNotChanged(name: name) }
        return setting
    }

    /// Marks every slot before the current one taken, so no scheduler catches up on them; the
    /// current slot itself stays free (system cron may be running it this very minute).
    private func skipPastSlots(of periodic: PeriodicJob, on connection: some QueryRunner) async throws {
        let current = periodic.schedule.slot(containing: Date())
        _ = try await advanceCronSlot(name: periodic.name, to: current.addingTimeInterval(-periodic.schedule.resolution), on: connection)
    }

    /// The newest slot some scheduler enqueued for each periodic job.
    public func cronSlots(on db: some QueryRunner) async throws -> [String: Date] {
        try await DatabaseServerError.coding {
            let rows = try await db.run("SELECT name, last_slot FROM loco_cron_slots", logger: logger)
            var slots: [String: Date] = [:]
            for try await (name, slot) in rows.decode((String, Date).self) { slots[name] = slot }
            return slots
        }
    }

    /// How full PostgreSQL's NOTIFY queue is, 0 to 1 (`pg_notification_queue_usage()`). A
    /// session that LISTENs and then sits in a long transaction holds the queue's tail: it
    /// fills, and from then on every NOTIFY is refused: the wake-ups of single enqueues and of
    /// Loco's transactions (whose workers then find the jobs only when they poll), and the
    /// enqueues that notify in their own transaction (which fail).
    public func notificationQueueUsage(on db: some QueryRunner) async throws -> Double {
        try await DatabaseServerError.coding {
            let rows = try await db.run("SELECT pg_notification_queue_usage()", logger: logger)
            for try await usage in rows.decode(Double.self) { return usage }
            return 0
        }
    }

    // MARK: Operators

    /// Cancels a job: a queued one at once (its dependents too); a running one is asked to stop
    /// and its worker cancels the handler at the next heartbeat or notification.
    public func cancel(id: Int64, on db: some QueryRunner) async throws -> JobState {
        try await DatabaseServerError.coding {
            // The state the cancel itself left, not a later read: a running handler may already
            // have stopped and finished the job as cancelled by the time a second query looks.
            if let state = try await cancelReturningStates(ids: [id], on: db)[id] { return state }
            let job = try await require(id: id, on: db)
            throw QueueError.jobNotInState(id: id, state: job.state, wanted: "queued or running to be cancelled")
        }
    }

    /// Cancels many jobs in one statement, like `cancel(id:)`; jobs already finished are left alone.
    /// Returns how many were still live.
    @discardableResult
    public func cancel(ids: [Int64], on db: some QueryRunner) async throws -> Int {
        try await DatabaseServerError.coding {
            try await cancelReturningStates(ids: ids, on: db).count
        }
    }

    /// Queued jobs become `cancelled`; running ones stay `running` with the request flagged, and
    /// their worker is told at once. Returns each live job's state right after the request.
    private func cancelReturningStates(ids: [Int64], on db: some QueryRunner) async throws -> [Int64: JobState] {
        guard !ids.isEmpty else { return [:] }
        let moment = WakeUpMoment(for: db)
        let rows = try await db.run("""
            WITH target AS (
                UPDATE loco_jobs
                SET cancel_requested = true,
                    state = CASE WHEN state = 'running' THEN 'running' ELSE 'cancelled' END,
                    finalized_at = CASE WHEN state = 'running' THEN NULL ELSE now() END
                WHERE id = ANY(\(ids)::int8[]) AND state IN \(unescaped: Self.live)
                RETURNING id, state
            ), woke AS (
                SELECT pg_notify(\(Self.channel), 'cancel:' || id) FROM target WHERE state = 'running' AND \(moment.inStatement)
            )
            SELECT id, state, (SELECT count(*) FROM woke) FROM target
            """, logger: logger)
        // The count is unused: naming `woke` is what makes PostgreSQL send the notifications.
        var states: [Int64: JobState] = [:]
        for try await (id, state, _) in rows.decode((Int64, String, Int64).self) {
            states[id] = JobState(rawValue: state) ?? .cancelled
        }
        await moment.wake(states.filter { $0.value == .running }.keys.sorted().map { "cancel:\($0)" }, on: db, logger: logger)
        return states
    }

    /// Runs a finished (or waiting) job again now, keeping its error history.
    public func retry(id: Int64, on db: some QueryRunner) async throws {
        try await DatabaseServerError.coding {
            if try await !retried(ids: [id], on: db).isEmpty { return }
            let job = try await require(id: id, on: db)
            throw QueueError.jobNotInState(id: id, state: job.state, wanted: "scheduled, completed, failed or cancelled to be retried")
        }
    }

    /// Makes those of `ids` that are scheduled or finished available now; returns which.
    func retried(ids: [Int64], on db: some QueryRunner) async throws -> [Int64] {
        guard !ids.isEmpty else { return [] }
        let moment = WakeUpMoment(for: db)
        let rows = try await db.run("""
            WITH target AS (
                UPDATE loco_jobs
                SET state = 'available', run_at = now(), finalized_at = NULL, cancel_requested = false,
                    locked_by = NULL, lease_expires_at = NULL, pending_deps = 0,
                    max_attempts = greatest(max_attempts, attempt + 1)
                WHERE id = ANY(\(ids)::int8[]) AND state IN ('scheduled', 'completed', 'failed', 'cancelled')
                RETURNING id, queue
            ), woke AS (
                SELECT pg_notify(\(Self.channel), queue) FROM (SELECT DISTINCT queue FROM target) q WHERE \(moment.inStatement)
            )
            SELECT id, queue, (SELECT count(*) FROM woke) FROM target
            """, logger: logger)
        var retried: [Int64] = [], queues: [String] = []
        for try await (id, queue, _) in rows.decode((Int64, String, Int64).self) {
            retried.append(id)
            if !queues.contains(queue) { queues.append(queue) }
        }
        await moment.wake(queues, on: db, logger: logger)
        return retried
    }

    /// Fails a queued job for good without running it (its dependents are cancelled).
    public func discard(id: Int64, on db: some QueryRunner) async throws {
        try await DatabaseServerError.coding {
            if try await !discarded(ids: [id], on: db).isEmpty { return }
            let job = try await require(id: id, on: db)
            throw QueueError.jobNotInState(id: id, state: job.state, wanted: "queued (blocked, scheduled or available) to be discarded; cancel a running job instead")
        }
    }

    /// Fails those of `ids` that are queued, recording `discarded`; returns which.
    func discarded(ids: [Int64], on db: some QueryRunner) async throws -> [Int64] {
        guard !ids.isEmpty else { return [] }
        let rows = try await db.run("""
            UPDATE loco_jobs
            SET state = 'failed', finalized_at = now(),
                errors = errors || jsonb_build_array(jsonb_build_object(
                    'attempt', attempt, 'at', to_char(now() AT TIME ZONE 'UTC', \(JSONCoding.sqlTimestampFormat)),
                    'worker', NULL, 'class', 'permanent', 'code', 'discarded',
                    'message', 'discarded by an operator', 'detail', NULL))
            WHERE id = ANY(\(ids)::int8[]) AND state IN ('blocked', 'scheduled', 'available')
            RETURNING id
            """, logger: logger)
        var discarded: [Int64] = []
        for try await id in rows.decode(Int64.self) { discarded.append(id) }
        return discarded
    }

    func require(id: Int64, on db: some QueryRunner) async throws -> JobRecord {
        guard let job = try await job(id: id, on: db) else { throw QueueError.jobNotFound(id) }
        return job
    }

    /// One job; with `withPeriodKey`, also the key it holds for a period (two more round trips,
    /// so only for showing a job, not for polling one).
    public func job(id: Int64, withPeriodKey: Bool = false, on db: some QueryRunner) async throws -> JobRecord? {
        try await DatabaseServerError.coding {
            let found = try await jobs(where: "WHERE id = \(id)", limit: 1, on: db)
            return try await (withPeriodKey ? addingPeriodKeys(to: found, on: db) : found).first
        }
    }

    /// `records` with the keys they hold for a period, if any (two more round trips). Asks first
    /// whether the table exists, so that a database without migration 9 can still be read (and a
    /// caller's transaction not aborted).
    private func addingPeriodKeys(to records: [JobRecord], on db: some QueryRunner) async throws -> [JobRecord] {
        let ids = records.filter { $0.uniqueKey == nil }.map(\.id)
        guard !ids.isEmpty else { return records }
        let table = try await db.run("SELECT to_regclass('loco_unique_periods') IS NOT NULL", logger: logger)
        for try await exists in table.decode(Bool.self) where !exists { return records }
        var held: [Int64: (key: String, until: Date)] = [:]
        let rows = try await db.run("SELECT job_id, unique_key, held_until FROM loco_unique_periods WHERE job_id = ANY(\(ids))", logger: logger)
        for try await (id, key, until) in rows.decode((Int64, String, Date).self) { held[id] = (key, until) }
        return records.map { record in
            guard let period = held[record.id] else { return record }
            var shown = record
            shown.uniqueKey = period.key
            shown.uniqueHeldUntil = period.until
            return shown
        }
    }

    /// Jobs, newest first, optionally filtered; `before` pages on: only jobs with a smaller id
    /// (the last one of the page before). With `withPeriodKeys`, also the keys they hold for a
    /// period (as `job(id:withPeriodKey:on:)`).
    public func list(queue: String? = nil, state: JobState? = nil, kind: String? = nil, args: String? = nil, before: Int64? = nil, limit: Int = 50,
                     withPeriodKeys: Bool = false, on db: some QueryRunner) async throws -> [JobRecord] {
        try await DatabaseServerError.coding {
            // The bulk actions' filter, so both read a queue, kind and args filter alike (and
            // refuse a name no queue or kind can have, rather than match nothing).
            let selection = JobSelection(queue: queue, kind: kind, args: args, states: state.map { [$0] } ?? JobState.allCases)
            let condition = try selection.condition(allowed: JobState.allCases)
            var binds = condition.binds
            var sql = "WHERE " + condition.sql
            if let before {
                binds.append(before)
                sql += " AND id < $\(binds.count)"
            }
            let found = try await jobs(where: PostgresQuery(unsafeSQL: sql, binds: binds), limit: limit, on: db)
            return withPeriodKeys ? try await addingPeriodKeys(to: found, on: db) : found
        }
    }

    private func jobs(where filter: PostgresQuery, limit: Int, on db: some QueryRunner) async throws -> [JobRecord] {
        var binds = filter.binds
        binds.append(limit)
        let query = PostgresQuery(unsafeSQL: """
            SELECT id, queue, kind, args::text, state, priority, attempt, max_attempts, run_at, created_at,
                   attempted_at, finalized_at, locked_by, lease_expires_at, cancel_requested, unique_key,
                   pending_deps, errors::text,
                   ARRAY(SELECT depends_on FROM loco_job_dependencies d WHERE d.job_id = loco_jobs.id ORDER BY depends_on)
            FROM loco_jobs \(filter.sql) ORDER BY id DESC LIMIT $\(binds.count)
            """, binds: binds)
        var records: [JobRecord] = []
        let rows = try await db.run(query, logger: logger)
        for try await row in rows {
            let c = row.makeRandomAccess()
            let errorsText = try c[17].decode(String.self)
            let errors = (try? JSONCoding.decoder.decode([AttemptError].self, from: Data(errorsText.utf8))) ?? []
            records.append(JobRecord(
                id: try c[0].decode(Int64.self), queue: try c[1].decode(String.self), kind: try c[2].decode(String.self),
                args: try c[3].decode(String.self), state: JobState(rawValue: try c[4].decode(String.self)) ?? .available,
                priority: Int(try c[5].decode(Int16.self)), attempt: try c[6].decode(Int.self), maxAttempts: try c[7].decode(Int.self),
                runAt: try c[8].decode(Date.self), createdAt: try c[9].decode(Date.self),
                attemptedAt: try c[10].decode(Date?.self), finalizedAt: try c[11].decode(Date?.self),
                lockedBy: try c[12].decode(String?.self), leaseExpiresAt: try c[13].decode(Date?.self),
                cancelRequested: try c[14].decode(Bool.self), uniqueKey: try c[15].decode(String?.self),
                pendingDependencies: try c[16].decode(Int.self), dependsOn: try c[18].decode([Int64].self), errors: errors))
        }
        return records
    }

    /// Depth by queue and state, age of the oldest available job, and recent failures.
    ///
    /// The live states are counted through their partial indexes, so they cost what the live jobs
    /// are, not the table. The finished states (`includingFinished`) are a scan of the whole table,
    /// which keeps them for their retention period (a day for completed jobs, a week for failed
    /// ones: millions of rows on a busy queue); `/metrics` and `locod queue stats --live` leave
    /// them out.
    public func stats(on db: some QueryRunner, includingFinished: Bool = true) async throws -> QueueStats {
        try await DatabaseServerError.coding {
            var queues: [String: QueueStats.Queue] = [:]
            let live = try await db.run(PostgresQuery(unsafeSQL: Self.liveDepthSQL), logger: logger)
            for try await (queue, state, count, oldest) in live.decode((String, String, Int64, Double?).self) {
                queues[queue, default: .init(name: queue)].depth[state] = Int(count)
                if let oldest { queues[queue, default: .init(name: queue)].oldestAvailableSeconds = max(0, oldest) }
            }
            if includingFinished {
                let finished = try await db.run("""
                    SELECT queue, state, count(*) FROM loco_jobs WHERE state IN ('completed', 'failed', 'cancelled') GROUP BY queue, state
                    """, logger: logger)
                for try await (queue, state, count) in finished.decode((String, String, Int64).self) {
                    queues[queue, default: .init(name: queue)].depth[state] = Int(count)
                }
            }
            let failures = try await db.run(PostgresQuery(unsafeSQL: Self.failedLastHourSQL), logger: logger)
            for try await (queue, count) in failures.decode((String, Int64).self) {
                queues[queue, default: .init(name: queue)].failedLastHour = Int(count)
            }
            for pause in try await pausedQueues(on: db) {
                queues[pause.queue, default: .init(name: pause.queue)].pausedAt = pause.pausedAt
            }
            // A database before queue migration 8 has no limits; its stats are whole without them.
            for limit in (try? await queueLimits(on: db)) ?? [] {
                queues[limit.queue, default: .init(name: limit.queue)].globalLimit = limit.limit
            }
            return QueueStats(queues: queues.values.sorted { $0.name < $1.name })
        }
    }

    /// Each live state on its own branch, so each reads its own partial index: `loco_jobs_claim`
    /// (queue and run_at are in it), `loco_jobs_due`, `loco_jobs_leases`, `loco_jobs_blocked`.
    static let liveDepthSQL = """
        SELECT queue, 'available', count(*), extract(epoch FROM now() - min(run_at))::float8
            FROM loco_jobs WHERE state = 'available' GROUP BY queue
        UNION ALL SELECT queue, 'scheduled', count(*), NULL FROM loco_jobs WHERE state = 'scheduled' GROUP BY queue
        UNION ALL SELECT queue, 'running', count(*), NULL FROM loco_jobs WHERE state = 'running' GROUP BY queue
        UNION ALL SELECT queue, 'blocked', count(*), NULL FROM loco_jobs WHERE state = 'blocked' GROUP BY queue
        """

    /// Reads `loco_jobs_failed` only: the hour's failures, not the hour's finished jobs.
    static let failedLastHourSQL = """
        SELECT queue, count(*) FROM loco_jobs
        WHERE state = 'failed' AND finalized_at > now() - interval '1 hour' GROUP BY queue
        """

    /// The workers that listed themselves, newest first: whether their session still holds the
    /// presence lock, or (poll-only workers) their presence row was seen within their grace and
    /// they did not stop, and how many jobs each is running.
    public func workers(on db: some QueryRunner) async throws -> [WorkerPresence] {
        try await DatabaseServerError.coding {
            let rows = try await db.run("""
                SELECT w.id, w.started_at, w.seen_at, \(unescaped: Self.presenceHeld(by: "w.id")),
                       (SELECT count(*) FROM loco_jobs j WHERE j.state = 'running' AND j.locked_by = w.id), w.queues,
                       false, NULL::timestamptz
                FROM loco_workers w
                UNION ALL
                SELECT b.id, b.started_at, b.started_at, b.stopped_at IS NULL AND b.seen_at + b.gone_after >= now(),
                       (SELECT count(*) FROM loco_jobs j WHERE j.state = 'running' AND j.locked_by = b.id), b.queues,
                       true, b.seen_at
                FROM loco_worker_beats b
                ORDER BY 2 DESC, 1
                """, logger: logger)
            var workers: [WorkerPresence] = []
            for try await (id, started, connected, present, running, queues, pooled, seen)
                in rows.decode((String, Date, Date, Bool, Int64, [String], Bool, Date?).self) {
                workers.append(WorkerPresence(id: id, startedAt: started, connectedAt: connected, present: present, runningJobs: Int(running),
                                              queues: queues, pollOnly: pooled, lastSeenAt: seen))
            }
            return workers
        }
    }

    /// Whether anything uses `queue`: a listed worker works it, or a job waits in it (read
    /// through the claim and blocked indexes, never the whole table).
    public func isKnown(queue: String, on db: some QueryRunner) async throws -> Bool {
        try await DatabaseServerError.coding {
            let rows = try await db.run("""
                SELECT EXISTS (SELECT 1 FROM loco_workers WHERE \(queue) = ANY(queues))
                    OR EXISTS (SELECT 1 FROM loco_worker_beats WHERE \(queue) = ANY(queues))
                    OR EXISTS (SELECT 1 FROM loco_jobs WHERE queue = \(queue) AND state = 'available')
                    OR EXISTS (SELECT 1 FROM loco_jobs WHERE queue = \(queue) AND state = 'blocked')
                """, logger: logger)
            for try await known in rows.decode(Bool.self) { return known }
            return false
        }
    }

    // MARK: Pause

    /// Stops workers everywhere from claiming jobs of `queue` (running ones finish; enqueues
    /// still land). Pausing a paused queue keeps its first pause.
    public func pause(queue: String, by who: String?, on db: some QueryRunner) async throws -> QueuePause {
        try await DatabaseServerError.coding {
            try Names.checkQueue(queue)
            // The no-op update returns the existing pause unchanged; xmax = 0 only on a fresh insert.
            let rows = try await db.run("""
                INSERT INTO loco_queue_pauses (queue, paused_by) VALUES (\(queue), \(who))
                ON CONFLICT (queue) DO UPDATE SET queue = EXCLUDED.queue
                RETURNING queue, paused_at, paused_by, xmax = 0
                """, logger: logger)
            for try await (name, at, by, inserted) in rows.decode((String, Date, String?, Bool).self) {
                return QueuePause(queue: name, pausedAt: at, pausedBy: by, wasPaused: !inserted)
            }
            throw QueueError.pauseNotRecorded(queue: queue)
        }
    }

    /// Lets workers claim from `queue` again and wakes the idle ones; false if it was not paused.
    public func resume(queue: String, on db: some QueryRunner) async throws -> Bool {
        try await DatabaseServerError.coding {
            try Names.checkQueue(queue)
            let moment = WakeUpMoment(for: db)
            let rows = try await db.run("""
                WITH removed AS (DELETE FROM loco_queue_pauses WHERE queue = \(queue) RETURNING queue)
                SELECT CASE WHEN \(moment.inStatement) THEN pg_notify(\(Self.channel), queue) END IS NULL FROM removed
                """, logger: logger)
            var resumed = false
            for try await _ in rows.decode(Bool.self) { resumed = true }
            if resumed { await moment.wake([queue], on: db, logger: logger) }
            return resumed
        }
    }

    public func pausedQueues(on db: some QueryRunner) async throws -> [QueuePause] {
        try await DatabaseServerError.coding {
            let rows = try await db.run("SELECT queue, paused_at, paused_by FROM loco_queue_pauses ORDER BY queue", logger: logger)
            var pauses: [QueuePause] = []
            for try await (queue, at, by) in rows.decode((String, Date, String?).self) {
                pauses.append(QueuePause(queue: queue, pausedAt: at, pausedBy: by, wasPaused: true))
            }
            return pauses
        }
    }
}

/// A paused queue: since when, by whom (free text, e.g. the operator's name).
public struct QueuePause: Sendable, Codable, Equatable {
    public var queue: String
    public var pausedAt: Date
    public var pausedBy: String?
    /// Whether it was already paused before this call (pause is idempotent).
    public var wasPaused: Bool
}

/// A job this worker has claimed.
public struct ClaimedJob: Sendable {
    public let id: Int64
    public let queue: String
    public let kind: String
    public let args: String
    public let attempt: Int
    public let maxAttempts: Int
    public let runAt: Date
    public let createdAt: Date
    public let attemptedAt: Date
    /// Whether other jobs depend on this one (as of the claim).
    let hasDependents: Bool
}

/// How an attempt ended, as written back to the job row.
struct JobOutcome: Sendable {
    var id: Int64
    var attempt: Int
    /// The ledger's run it ends (see `JobLedger`); not written.
    var run: UInt64 = 0
    /// For metrics only; not written.
    var queue = ""
    /// completed, failed, cancelled, scheduled (retry/snooze) or available (released on shutdown).
    var state: JobState
    var delaySeconds: Double = 0
    /// 1 gives back the attempt the claim used (snooze, shutdown release).
    var refund: Int = 0
    /// One `AttemptError` as JSON, or "" for none.
    var errorJSON: String = ""
    /// Whether other jobs depend on this one: finishing it settles them (see `record`).
    var hasDependents = false

    /// The longest wait an outcome asks for: ten years. A handler's snooze or `retryAfter`, or a
    /// kind's retry cap, may be any `Duration`; past about 292,000 years PostgreSQL refuses the
    /// interval, and a refused outcome kept every later one of its worker from being written.
    static let longestDelay = 10 * 365 * 86_400.0

    /// `wait` in seconds, within `0 ... longestDelay`.
    static func delay(_ wait: Duration) -> Double {
        min(max(wait.seconds, 0), longestDelay)
    }

    /// This outcome with a plain error in place of its own, which PostgreSQL refused (`reason`):
    /// its state, and so the job's fate, are kept.
    func refused(because reason: String, worker: String) -> JobOutcome {
        var plain = self
        let errorClass: ErrorClass = switch state {
        case .failed, .cancelled: .permanent
        case .scheduled where refund == 1: .snooze
        default: .retryable
        }
        let record = AttemptError(attempt: attempt, at: Date(), worker: worker, errorClass: errorClass, code: "outcome_refused",
                                  message: "PostgreSQL refused this attempt's error as the handler gave it, so it is not kept",
                                  detail: Storable.text(String(reason.prefix(2000))))
        plain.errorJSON = errorJSON.isEmpty ? "" : record.storableJSON
        return plain
    }
}

/// `locod queue stats`.
public struct QueueStats: Sendable, Codable, Equatable {
    public struct Queue: Sendable, Codable, Equatable {
        public var name: String
        public var depth: [String: Int] = [:]
        public var oldestAvailableSeconds: Double?
        public var failedLastHour: Int = 0
        /// Set while the queue is paused (`locod queue pause`).
        public var pausedAt: Date?
        /// How many of its jobs may run at once across all workers (`locod queue limit`).
        public var globalLimit: Int?
    }
    public var queues: [Queue]
}

/// `locod queue workers`: a worker process as the presence tables know it.
public struct WorkerPresence: Sendable, Codable, Equatable {
    public var id: String
    public var startedAt: Date
    /// When its current database session took the presence lock (a poll-only worker: when it
    /// started).
    public var connectedAt: Date
    /// Whether a session holds its presence lock (a poll-only worker: it touched its presence
    /// row within its grace and did not stop): false once the process is gone.
    public var present: Bool
    public var runningJobs: Int
    /// The queues its pools work (empty for workers from before the column).
    public var queues: [String]
    /// A poll-only worker (behind a pooler): present by touching its row, not by a lock.
    public var pollOnly: Bool
    /// When a poll-only worker last touched its presence row.
    public var lastSeenAt: Date?

    public init(id: String, startedAt: Date, connectedAt: Date, present: Bool, runningJobs: Int, queues: [String],
                pollOnly: Bool = false, lastSeenAt: Date? = nil) {
        self.id = id
        self.startedAt = startedAt
        self.connectedAt = connectedAt
        self.present = present
        self.runningJobs = runningJobs
        self.queues = queues
        self.pollOnly = pollOnly
        self.lastSeenAt = lastSeenAt
    }

    enum CodingKeys: String, CodingKey {
        case id, startedAt = "started_at", connectedAt = "connected_at", present, runningJobs = "running_jobs", queues
        case pollOnly = "poll_only", lastSeenAt = "last_seen_at"
    }
}

extension Duration {
    /// Seconds as a Double, for SQL intervals and metrics.
    public var seconds: Double {
        let (s, attoseconds) = components
        return Double(s) + Double(attoseconds) / 1e18
    }

    /// "90 s", "1.5 s", "300 ms": for messages people read.
    public var spoken: String {
        let value = seconds
        if value < 1 { return "\(Int((value * 1000).rounded())) ms" }
        let rounded = (value * 10).rounded() / 10
        return rounded == rounded.rounded() ? "\(Int(rounded)) s" : "\(rounded) s"
    }
}
