import Foundation
import Logging
import PostgresNIO

/// Presence for workers that hold no database session of their own: behind a transaction-mode
/// pooler (`?pgbouncer=true`) or `--poll-only`. A session advisory lock would be taken on
/// whichever server session the pooler lent and stay there after the transaction, so such a
/// worker touches its row in `loco_worker_beats` every second instead, and a row unseen for
/// the worker's own orphan grace means the process is gone. What a rescuer then does is what it
/// does for a lost presence lock: it cuts the worker's leases to its orphan grace.
extension JobStore {
    /// Whether `error` says the presence rows' table does not exist (a database not yet migrated
    /// to queue migration 10): nothing to watch there yet, and no database error worth counting
    /// every second; the worker said at its start that migrations are pending.
    static func lacksPresenceRows(_ error: any Error) -> Bool {
        DatabaseServerError.server(of: error)?.sqlState == "42P01"
    }

    /// Touches this process's row. Returns how many times rescuers have cut its leases so far
    /// (a rise means they took it for gone while it lived: its leases need renewing now), or nil
    /// if another live process (`instance`) holds the worker id. Also unlists the id from the
    /// presence-lock table when no session holds its lock, so that a row left there by an earlier
    /// process with the same id does not get this one's leases cut.
    func touchPresence(worker: String, instance: String, queues: [String], goneAfter: Duration,
                       on db: some QueryRunner) async throws -> Int64? {
        let rows = try await db.run("""
            WITH touched AS (
                INSERT INTO loco_worker_beats AS b (id, instance, queues, gone_after)
                VALUES (\(worker), \(instance), \(queues)::text[], make_interval(secs => \(goneAfter.seconds)))
                ON CONFLICT (id) DO UPDATE SET
                    seen_at = now(), instance = EXCLUDED.instance, queues = EXCLUDED.queues,
                    gone_after = EXCLUDED.gone_after, stopped_at = NULL,
                    started_at = CASE WHEN b.instance = EXCLUDED.instance THEN b.started_at ELSE now() END,
                    cuts = CASE WHEN b.instance = EXCLUDED.instance THEN b.cuts ELSE 0 END
                WHERE b.instance = EXCLUDED.instance OR b.stopped_at IS NOT NULL OR b.seen_at + b.gone_after < now()
                RETURNING b.cuts
            ),
            unlisted AS (
                DELETE FROM loco_workers w WHERE w.id = \(worker) AND EXISTS (SELECT FROM touched)
                  AND NOT \(unescaped: Self.presenceHeld(by: "w.id"))
            )
            SELECT cuts FROM touched
            """, logger: logger)
        for try await cuts in rows.decode(Int64.self) { return cuts }
        return nil
    }

    /// Marks this process's row stopped (a graceful shutdown): listed as gone at once rather
    /// than a grace later.
    func leavePresence(worker: String, instance: String, on db: some QueryRunner) async throws {
        _ = try await db.run("""
            UPDATE loco_worker_beats SET stopped_at = now() WHERE id = \(worker) AND instance = \(instance)
            """, logger: logger)
    }

    /// Cuts to `grace` the leases of running jobs whose worker's row went unseen for that
    /// worker's grace (or that stopped with jobs still held), and counts the cut on the row, so a
    /// worker that only stalled renews them at its next touch. Jobs of an id whose presence lock
    /// a session holds are left alone: that process lives. Returns the jobs whose leases were cut.
    func cutSilentWorkersLeases(grace: Duration, on db: some QueryRunner) async throws -> [(id: Int64, worker: String)] {
        let rows = try await db.run("""
            WITH gone AS MATERIALIZED (
                SELECT b.id FROM loco_worker_beats b
                WHERE (b.stopped_at IS NOT NULL OR b.seen_at + b.gone_after < now())
                  AND EXISTS (SELECT FROM loco_jobs j WHERE j.state = 'running' AND j.locked_by = b.id
                                AND j.lease_expires_at > now() + make_interval(secs => \(grace.seconds)))
                  AND NOT \(unescaped: Self.presenceHeld(by: "b.id"))
            ),
            orphaned AS MATERIALIZED (
                SELECT j.id FROM loco_jobs j JOIN gone ON gone.id = j.locked_by
                WHERE j.state = 'running' AND j.lease_expires_at > now() + make_interval(secs => \(grace.seconds))
                FOR UPDATE OF j SKIP LOCKED
            ),
            cut AS (
                UPDATE loco_jobs j SET lease_expires_at = now() + make_interval(secs => \(grace.seconds))
                FROM orphaned WHERE j.id = orphaned.id
                RETURNING j.id, j.locked_by
            ),
            counted AS (
                UPDATE loco_worker_beats b SET cuts = b.cuts + 1 WHERE b.id IN (SELECT locked_by FROM cut)
            )
            SELECT id, locked_by FROM cut
            """, logger: logger)
        var cut: [(id: Int64, worker: String)] = []
        for try await (id, worker) in rows.decode((Int64, String).self) { cut.append((id, worker)) }
        return cut
    }

    /// Forgets rows of workers gone for `age` that hold no running jobs; returns how many.
    func forgetSilentWorkers(olderThan age: Duration, on db: some QueryRunner) async throws -> Int {
        let rows = try await db.run("""
            DELETE FROM loco_worker_beats b
            WHERE b.seen_at < now() - make_interval(secs => \(age.seconds))
              AND NOT EXISTS (SELECT FROM loco_jobs j WHERE j.state = 'running' AND j.locked_by = b.id)
            RETURNING b.id
            """, logger: logger)
        var count = 0
        for try await _ in rows.decode(String.self) { count += 1 }
        return count
    }
}
