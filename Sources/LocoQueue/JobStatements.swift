import Foundation
import Logging
import PostgresNIO

/// The hot-path statements, prepared once per connection: parsing and planning them on every
/// call cost about as much as running them (pgbench: 2,400 vs 4,300 enqueues/s on one client).
///
/// Prepared parameters take the type the SQL gives them, so each is cast to exactly what
/// PostgresNIO sends (text, int8, float8, timestamptz, arrays of those).
enum JobStatements {
    /// A job with no unique key. No ON CONFLICT: such a job cannot conflict, and an INSERT with
    /// ON CONFLICT takes PostgreSQL's speculative-insertion path for every row, unique key or
    /// not (one more WAL record per job, to confirm the insert; pgbench on one durable client
    /// ran the statement without it at a median 1.04× in alternating pairs).
    struct EnqueueOne: SingleEnqueueStatement {
        static let name = "loco_enqueue_one_v3"
        // No CTEs: calling pg_notify from RETURNING is about 12% faster than a notify CTE.
        static let sql = insert + "\n" + returning
        static let insert = """
            INSERT INTO loco_jobs (queue, kind, args, state, priority, max_attempts, run_at)
            VALUES \(values))
            """
        /// `$1` queue, `$2` kind, `$3` args, `$4` priority, `$5` max attempts, `$6` run at.
        static let values = """
            ($1::text, $2::text, $3::text::jsonb,
                    CASE WHEN $6::timestamptz > now() THEN 'scheduled' ELSE 'available' END,
                    $4::int8, $5::int8, COALESCE($6::timestamptz, now())
            """
        static let returning = "RETURNING id, state, CASE WHEN state = 'available' THEN pg_notify('loco_jobs', queue) IS NULL END"
        /// For `SingleEnqueueHandler`, which wakes workers in a transaction of its own (`wakeUp`).
        static let returningWithoutNotify = "RETURNING id, state"
        typealias Row = (Int64, String, Bool?)

        let job: NewJob

        func makeBindings() throws -> PostgresBindings {
            var bindings = PostgresBindings(capacity: 6)
            bindings.append(job.queue)
            bindings.append(job.kind)
            bindings.append(job.args)
            bindings.append(job.priority)
            bindings.append(job.maxAttempts)
            bindings.append(job.runAt)
            return bindings
        }

        func decodeRow(_ row: PostgresRow) throws -> Row { try row.decode(Row.self) }
    }

    /// A job with a unique key (`$7`): no row when a live job holds the key.
    struct EnqueueUnique: SingleEnqueueStatement {
        static let name = "loco_enqueue_unique_v1"
        static let sql = insert + "\n" + EnqueueOne.returning
        static let insert = """
            INSERT INTO loco_jobs (queue, kind, args, state, priority, max_attempts, run_at, unique_key)
            VALUES \(EnqueueOne.values), $7::text)
            ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND state IN ('blocked','scheduled','available','running') DO NOTHING
            """
        typealias Row = EnqueueOne.Row

        let job: NewJob

        func makeBindings() throws -> PostgresBindings {
            var bindings = try EnqueueOne(job: job).makeBindings()
            bindings.append(job.uniqueKey)
            return bindings
        }

        func decodeRow(_ row: PostgresRow) throws -> Row { try row.decode(Row.self) }
    }

    /// Wakes the workers of queue `$1` for a job due at `$2` (NULL: now), as a transaction of its
    /// own sent right after the job's: `SingleEnqueueHandler`'s enqueues do not notify in their
    /// own transaction. PostgreSQL holds one lock for the whole server from a notifying
    /// transaction's commit until its WAL flush is done, so enqueues that notify commit one
    /// after another however many connections send them: pgbench with 8 clients on one durable
    /// cluster ran the enqueue at 4,100–4,800 TPS with its notify and 11,600–12,200 without. A
    /// transaction that writes nothing but its commit record does not wait for a flush (nor for
    /// a synchronous standby), so this one holds that lock only for moments; a wake-up need not
    /// outlive a crash, the job it announces already has.
    static let wakeUp = """
        SELECT pg_notify('loco_jobs', $1::text)
        WHERE $2::timestamptz IS NULL OR $2::timestamptz <= now()
        """

    /// A single enqueue through `prepared`, by the statement that fits the job: its id and state,
    /// or nil when a live job holds its unique key.
    static func enqueue(_ job: NewJob, on db: some QueryRunner, logger: Logger) async throws -> (id: Int64, state: String)? {
        let moment = WakeUpMoment(for: db)
        func run<Statement: SingleEnqueueStatement>(_: Statement.Type) async throws -> (id: Int64, state: String)? {
            guard !moment.inStatement else {
                return try await db.prepared(Statement(job: job), logger: logger).first.map { ($0.0, $0.1) }
            }
            let row = try await db.prepared(QuietEnqueue<Statement>(job: job), logger: logger).first
            if row?.1 == "available" { await moment.wake([job.queue], on: db, logger: logger) }
            return row.map { ($0.0, $0.1) }
        }
        return job.uniqueKey == nil ? try await run(EnqueueOne.self) : try await run(EnqueueUnique.self)
    }

    /// The two single-enqueue statements without their notify, for a transaction whose
    /// wake-ups go after its commit (`WakeUpsAfterCommit`).
    protocol SingleEnqueueStatement: PostgresPreparedStatement where Row == EnqueueOne.Row {
        static var insert: String { get }
        init(job: NewJob)
    }

    struct QuietEnqueue<Loud: SingleEnqueueStatement>: PostgresPreparedStatement {
        static var name: String { Loud.name + "_quiet" }
        static var sql: String { Loud.insert + "\n" + EnqueueOne.returningWithoutNotify }
        typealias Row = (Int64, String)

        let job: NewJob

        func makeBindings() throws -> PostgresBindings { try Loud(job: job).makeBindings() }
        func decodeRow(_ row: PostgresRow) throws -> Row { try row.decode(Row.self) }
    }

    struct Claim: PostgresPreparedStatement {
        static let name = "loco_claim_v4"
        // The pause check names no column of loco_jobs, so PostgreSQL runs it once per claim
        // (a one-time filter), not per row.
        static let sql = "WITH " + picked + "\n" + take
        /// The claim's rows, as a CTE named `picked`: $1 the queue, $2 how many.
        static let picked = """
            picked AS MATERIALIZED (
                SELECT id FROM loco_jobs
                WHERE state = 'available' AND queue = $1::text
                  AND NOT EXISTS (SELECT FROM loco_queue_pauses WHERE queue = $1::text)
                ORDER BY priority, run_at, id
                LIMIT $2::int8
                FOR UPDATE SKIP LOCKED
            )
            """
        /// Takes the `picked` rows: $3 the worker, $4 the lease in seconds.
        static let take = """
            UPDATE loco_jobs j
            SET state = 'running', attempt = j.attempt + 1, attempted_at = now(), locked_by = $3::text,
                lease_expires_at = now() + make_interval(secs => $4::float8)
            WHERE j.id = ANY(ARRAY(SELECT id FROM picked))
            RETURNING j.id, j.kind, j.args::text, j.attempt, j.max_attempts, j.run_at, j.created_at, j.attempted_at, j.has_dependents
            """
        typealias Row = (Int64, String, String, Int, Int, Date, Date, Date, Bool)

        /// The session settings of a producer's connection, which runs only this statement: one
        /// plan, made once and kept. PostgreSQL otherwise plans each claim again for its
        /// parameters: 0.13-0.22 ms, against 0.01 ms for the kept plan, of a claim that runs in
        /// about 0.15-0.4 ms. A plan made once must suit an empty table and one with a million
        /// rows alike, so every shape but index scans is ruled out. Made on an empty table after
        /// VACUUM, the kept plan otherwise sorted sequential scans, and a join (rather than
        /// `id = ANY(ARRAY(...))`) walked the whole primary key for each claim; with a backlog, a
        /// sequential scan cost 30 ms a claim. JIT is off: the kept plan's estimate, made for an
        /// unknown LIMIT, passed `jit_above_cost` with a backlog, and compiling cost 20-60 ms a claim.
        static let sessionSettings: [(name: String, value: String)] = [
            ("plan_cache_mode", "force_generic_plan"), ("jit", "off"),
            ("enable_seqscan", "off"), ("enable_bitmapscan", "off"), ("enable_sort", "off"),
        ]

        let queue: String
        let limit: Int
        let worker: String
        let leaseSeconds: Double

        func makeBindings() throws -> PostgresBindings {
            var bindings = PostgresBindings(capacity: 4)
            bindings.append(queue)
            bindings.append(limit)
            bindings.append(worker)
            bindings.append(leaseSeconds)
            return bindings
        }

        func decodeRow(_ row: PostgresRow) throws -> Row { try row.decode(Row.self) }
    }

    struct Record: PostgresPreparedStatement {
        static let name = "loco_record_v3"
        // A cancel requested while the handler was already returning (before this worker heard
        // of it) still wins over a retry: the job is cancelled instead of running again. It reads
        // `j.cancel_requested`, the row being updated, so a cancel that commits first is seen.
        static let sql = "WITH " + quiet + "\n" + update + "\n" + quietUsed + "\nRETURNING j.id, j.state"
        static let update = update(arrays: 1, worker: 7)
        /// `$8` 'on' when the caller wakes the queues of the dependents this completion releases
        /// once it has committed (`JobStore.record`): the release, by the trigger that settles
        /// dependents (queue migration 12), then notifies no one. A CTE the UPDATE names runs
        /// before the statement's end, where row triggers fire; `set_config`'s setting lasts as
        /// long as the transaction.
        static let quiet = "quiet AS MATERIALIZED (SELECT set_config('loco.wake_after_commit', $8::text, true) AS setting)"
        static let quietUsed = "  AND (SELECT setting FROM quiet) IS NOT NULL"
        /// The UPDATE, its six outcome arrays starting at parameter `p`, the worker at `w`.
        static func update(arrays p: Int, worker w: Int) -> String { """
            UPDATE loco_jobs j
            SET state = CASE WHEN j.cancel_requested AND t.state IN ('scheduled', 'available') THEN 'cancelled'
                             ELSE t.state END,
                run_at = CASE WHEN j.cancel_requested THEN j.run_at
                              WHEN t.state = 'scheduled' THEN now() + make_interval(secs => t.delay)
                              WHEN t.state = 'available' THEN now() ELSE j.run_at END,
                attempt = j.attempt - t.refund,
                errors = CASE WHEN t.error = '' THEN j.errors ELSE j.errors || jsonb_build_array(t.error::jsonb) END,
                finalized_at = CASE WHEN t.state IN ('completed', 'failed', 'cancelled') OR j.cancel_requested THEN now() END,
                locked_by = CASE WHEN t.state IN ('scheduled', 'available') AND NOT j.cancel_requested THEN NULL
                                 ELSE j.locked_by END,
                lease_expires_at = NULL
            FROM unnest($\(p)::int8[], $\(p + 1)::int8[], $\(p + 2)::text[], $\(p + 3)::float8[], $\(p + 4)::int8[], $\(p + 5)::text[])
                AS t(id, attempt, state, delay, refund, error)
            WHERE j.id = t.id AND j.attempt = t.attempt AND j.locked_by = $\(w)::text AND j.state = 'running'
            """ }
        typealias Row = (Int64, String)

        let outcomes: [JobOutcome]
        let worker: String
        /// Whether the caller wakes released dependents' queues after the commit (see `quiet`).
        var wakesAfterCommit = false

        func makeBindings() throws -> PostgresBindings {
            var bindings = PostgresBindings(capacity: 8)
            Self.append(outcomes, to: &bindings)
            bindings.append(worker)
            bindings.append(wakesAfterCommit ? "on" : "off")
            return bindings
        }

        /// The six arrays `update(arrays:worker:)` reads, in its order.
        static func append(_ outcomes: [JobOutcome], to bindings: inout PostgresBindings) {
            bindings.append(outcomes.map(\.id))
            bindings.append(outcomes.map(\.attempt))
            bindings.append(outcomes.map(\.state.rawValue))
            bindings.append(outcomes.map(\.delaySeconds))
            bindings.append(outcomes.map(\.refund))
            bindings.append(outcomes.map(\.errorJSON))
        }

        func decodeRow(_ row: PostgresRow) throws -> Row { try row.decode(Row.self) }
    }

    /// A claim that also writes outcomes of jobs the same producer claimed before, in one
    /// statement and so one commit. Draining no-op jobs, every claim and every completion
    /// otherwise waited for its own WAL flush (`pg_stat_wal`: as many syncs as commits). Only
    /// outcomes of jobs without dependents ride along; those with dependents keep
    /// `RecordLockingInIDOrder`'s order. Rows with a `recorded_state` are the written outcomes.
    /// Their branch comes first, so the outcomes are written before the claim locks anything:
    /// the statement waits for row locks only while it holds none of the claimed rows, as the
    /// two statements did. With the claim first, it held the rows it had just claimed while it
    /// waited for an outcome's row, and a transaction holding that row and wanting one of those
    /// deadlocked with it (seen in `claimAndRecordLockOrder`).
    struct ClaimAndRecord: PostgresPreparedStatement {
        static let name = "loco_claim_and_record_v1"
        static let sql = """
            WITH recorded AS (
            \(Record.update(arrays: 5, worker: 3))
            RETURNING j.id, j.state
            ), \(Claim.picked), claimed AS (
            \(Claim.take)
            )
            SELECT id, NULL::text, NULL::text, NULL::integer, NULL::integer, NULL::timestamptz, NULL::timestamptz,
                   NULL::timestamptz, NULL::boolean, state::text AS recorded_state
            FROM recorded
            UNION ALL
            SELECT id, kind, args, attempt, max_attempts, run_at, created_at, attempted_at, has_dependents, NULL FROM claimed
            """
        typealias Row = (Int64, String?, String?, Int?, Int?, Date?, Date?, Date?, Bool?, String?)

        let claim: Claim
        let outcomes: [JobOutcome]

        func makeBindings() throws -> PostgresBindings {
            var bindings = try claim.makeBindings()
            Record.append(outcomes, to: &bindings)
            return bindings
        }

        func decodeRow(_ row: PostgresRow) throws -> Row { try row.decode(Row.self) }
    }

    /// `Record` for a batch in which two or more jobs have dependents: it first locks the batch's
    /// jobs and their dependents together, in id order. Otherwise the trigger settles dependents
    /// in the order the jobs were updated, and two completers whose batches shared two fan-in
    /// children, reaching them in crossed orders, deadlocked (one was rolled back after
    /// `deadlock_timeout` and wrote its batch again). Done for every batch, behind a check in SQL
    /// for dependents, it cost about 7% of a claim-and-record round without any (pgbench, 5
    /// alternating pairs), so the worker takes this statement only for such batches.
    struct RecordLockingInIDOrder: PostgresPreparedStatement {
        static let name = "loco_record_in_id_order_v2"
        static let sql = """
            WITH locked_in_id_order AS MATERIALIZED (
                SELECT j.id FROM loco_jobs j
                WHERE j.id IN (SELECT unnest($1::int8[])
                               UNION SELECT d.job_id FROM loco_job_dependencies d WHERE d.depends_on = ANY($1::int8[]))
                ORDER BY j.id
                FOR NO KEY UPDATE OF j
            ), \(Record.quiet)
            """ + "\n" + Record.update + "\n" + Record.quietUsed + "\n" + """
              AND (SELECT count(*) FROM locked_in_id_order) >= 0
            RETURNING j.id, j.state
            """
        typealias Row = Record.Row

        let record: Record

        func makeBindings() throws -> PostgresBindings { try record.makeBindings() }
        func decodeRow(_ row: PostgresRow) throws -> Row { try record.decodeRow(row) }
    }

    struct Heartbeat: PostgresPreparedStatement {
        static let name = "loco_heartbeat_v2"
        // The heartbeat never waits for a row lock: it renews the leases it can lock at once and
        // reports the rest of its jobs as busy (cancel_requested NULL). A plain UPDATE waited,
        // and deadlocked with the completer's UPDATE of the same jobs locked in another order
        // (seen in `scripts/bench queue`: both stalled for deadlock_timeout, one was retried);
        // it also held every lease's renewal behind one row someone else kept locked. A busy
        // job is one being finished, cancelled or rescued at that moment: the next beat says
        // which. The last SELECT reads the statement's snapshot, where such a row is still ours.
        static let sql = """
            WITH held AS (
                SELECT * FROM unnest($1::int8[], $2::int8[]) AS t(id, attempt)
            ), renewable AS MATERIALIZED (
                SELECT j.id FROM loco_jobs j JOIN held t ON j.id = t.id AND j.attempt = t.attempt
                WHERE j.locked_by = $3::text AND j.state = 'running'
                FOR NO KEY UPDATE OF j SKIP LOCKED
            ), renewed AS (
                UPDATE loco_jobs j SET lease_expires_at = now() + make_interval(secs => $4::float8)
                FROM renewable r WHERE j.id = r.id
                RETURNING j.id, j.cancel_requested
            )
            SELECT id, cancel_requested FROM renewed
            UNION ALL
            SELECT j.id, NULL FROM loco_jobs j JOIN held t ON j.id = t.id AND j.attempt = t.attempt
            WHERE j.locked_by = $3::text AND j.state = 'running' AND j.id NOT IN (SELECT id FROM renewable)
            """
        typealias Row = (Int64, Bool?)

        let held: [(id: Int64, attempt: Int)]
        let worker: String
        let leaseSeconds: Double

        func makeBindings() throws -> PostgresBindings {
            var bindings = PostgresBindings(capacity: 4)
            bindings.append(held.map(\.id))
            bindings.append(held.map(\.attempt))
            bindings.append(worker)
            bindings.append(leaseSeconds)
            return bindings
        }

        func decodeRow(_ row: PostgresRow) throws -> Row { try row.decode(Row.self) }
    }
}
