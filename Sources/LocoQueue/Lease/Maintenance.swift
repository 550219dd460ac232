import Foundation
import Logging
import PostgresNIO

/// The loops that keep the queue healthy. Every worker process may run them at once: each
/// statement claims its rows with SKIP LOCKED, and cron slots are taken with a conditional
/// upsert, so running them on many nodes only adds redundancy.
struct Maintenance: Sendable {
    let shared: WorkerShared

    private let client: ReconnectingConnection
    private let periodicConnection: ReconnectingConnection
    private var store: JobStore { shared.store }

    init(shared: WorkerShared) {
        self.shared = shared
        client = shared.connect()
        periodicConnection = shared.connect()
    }

    func close() async {
        await client.close()
        await periodicConnection.close()
    }

    /// The longest `close()` takes: each connection waits at most for a connect under way.
    var longestClose: Duration { client.longestCall + periodicConnection.longestCall }
    private var configuration: WorkerConfiguration { shared.configuration }

    /// Jobs whose worker died go back to the queue: when its lease runs out (no heartbeat for a
    /// whole lease), or `orphanGrace` after its database session ended (a poll-only worker:
    /// after its presence row went unseen for its grace).
    func rescueLoop(_ activity: PartActivity) async {
        var wait = configuration.rescueInterval.jittered()
        var lastOrphanCheck = ContinuousClock.now - .seconds(1)
        var failures = FailureStreak(operation: "rescue", doing: "rescue expired leases")
        while !Task.isCancelled {
            activity.at("sleeping", bound: wait)
            try? await Task.sleep(for: wait)
            if Task.isCancelled { return }
            wait = configuration.rescueInterval.jittered()
            // Reading pg_locks takes every lock-table partition's lock for a moment: at most
            // once a second, however short the rescue interval.
            if ContinuousClock.now - lastOrphanCheck >= .seconds(1) {
                lastOrphanCheck = .now
                activity.at("looking for dead workers' jobs", bound: client.longestCall * 2)
                // Come back as the cut leases end, not a whole interval later.
                if await cutOrphanedLeases() { wait = min(wait, configuration.orphanGrace + .milliseconds(100)) }
            }
            do {
                while true {
                    activity.at("rescuing jobs whose leases expired", bound: client.longestCall)
                    let rescued = try await store.rescueExpired(limit: 500, retry: configuration.retry,
                                                                  kindRetries: shared.handlers.retries, on: client)
                    for job in rescued {
                        shared.metrics.rescued(queue: job.queue)
                        shared.logger.warning("rescued job \(job.id) from an expired lease; it is now \(job.state.rawValue)",
                                              metadata: ["job_id": "\(job.id)", "queue": "\(job.queue)"])
                    }
                    if rescued.count < 500 { break }
                }
                failures.succeeded(shared)
            } catch {
                failures.failed(error, shared)
            }
        }
    }

    /// Shortens the leases of dead workers' jobs; true if it cut any. Apart from the rescue
    /// itself: a database without the presence table (not migrated yet) must not stop expired
    /// leases from being rescued.
    private func cutOrphanedLeases() async -> Bool {
        var cutAny = false
        do {
            let cut = try await store.cutOrphanedLeases(grace: configuration.orphanGrace, on: client)
            for (worker, jobs) in Dictionary(grouping: cut, by: \.worker) {
                shared.logger.warning("worker \(worker) is gone (its database session ended); its jobs' leases now end in \(configuration.orphanGrace.spoken)",
                                      metadata: ["jobs": "\(jobs.map(\.id))"])
            }
            cutAny = !cut.isEmpty
        } catch {
            shared.metrics.databaseError(operation: "orphan_check")
        }
        // Apart, so a database without migration 10 still has its lock-holding workers watched.
        do {
            let cut = try await store.cutSilentWorkersLeases(grace: configuration.orphanGrace, on: client)
            for (worker, jobs) in Dictionary(grouping: cut, by: \.worker) {
                shared.logger.warning("worker \(worker) is gone (its presence row went unseen, or it stopped holding jobs); its jobs' leases now end in \(configuration.orphanGrace.spoken)",
                                      metadata: ["jobs": "\(jobs.map(\.id))"])
            }
            cutAny = cutAny || !cut.isEmpty
        } catch where !JobStore.lacksPresenceRows(error) {
            shared.metrics.databaseError(operation: "orphan_check")
        } catch {}
        return cutAny
    }

    /// Scheduled jobs (retries, run-at) become available when due.
    func promoteLoop(_ activity: PartActivity) async {
        var failures = FailureStreak(operation: "promote", doing: "make due scheduled jobs available")
        while !Task.isCancelled {
            let wait = configuration.promoteInterval.jittered()
            activity.at("sleeping", bound: wait)
            try? await Task.sleep(for: wait)
            if Task.isCancelled { return }
            do {
                while true {
                    activity.at("making due scheduled jobs available", bound: client.longestCall)
                    if try await store.promoteDue(limit: 1000, on: client) < 1000 { break }
                }
                failures.succeeded(shared)
            } catch {
                failures.failed(error, shared)
            }
        }
    }

    /// Finished jobs are deleted after their state's retention period, in batches so no
    /// statement holds many row locks or runs long.
    func pruneLoop(_ activity: PartActivity) async {
        var failures = FailureStreak(operation: "prune", doing: "prune finished jobs")
        while !Task.isCancelled {
            let wait = configuration.pruneInterval.jittered()
            activity.at("sleeping", bound: wait)
            try? await Task.sleep(for: wait)
            if Task.isCancelled { return }
            do {
                var total = 0
                for (state, period) in configuration.retention.byState {
                    while !Task.isCancelled {
                        activity.at("pruning finished jobs", bound: client.longestCall)
                        let deleted = try await store.pruneFinished(state, olderThan: period, limit: 1000, on: client)
                        total += deleted
                        if deleted < 1000 { break }
                    }
                }
                if total > 0 { shared.logger.info("pruned \(total) finished jobs") }
                failures.succeeded(shared)
            } catch {
                failures.failed(error, shared)
            }
            activity.at("forgetting workers gone an hour", bound: client.longestCall * 2)
            if (try? await store.forgetGoneWorkers(olderThan: .seconds(3600), on: client)) == nil {
                shared.metrics.databaseError(operation: "forget_workers")
            }
            do {
                _ = try await store.forgetSilentWorkers(olderThan: .seconds(3600), on: client)
            } catch where !JobStore.lacksPresenceRows(error) {
                shared.metrics.databaseError(operation: "forget_workers")
            } catch {}
            // Apart from the jobs' pruning: a database without migration 9 has no such keys.
            while !Task.isCancelled {
                activity.at("pruning unique keys past their periods", bound: client.longestCall)
                guard let forgotten = try? await store.pruneUniquePeriods(limit: 1000, on: client) else {
                    shared.metrics.databaseError(operation: "prune_unique_periods")
                    break
                }
                if forgotten < 1000 { break }
            }
        }
    }

    /// Enqueues each periodic job's due slot once across all schedulers, on the schedule an
    /// operator set for it (`locod cron set`), unless paused; settings are read at every tick.
    func periodicLoop(_ activity: PartActivity) async {
        let scheduler = PeriodicScheduler(store: store, logger: shared.logger)
        var lastSlots: [String: Date] = [:]
        var settings: [String: CronSetting] = [:]
        var unreadable: Set<String> = []
        var paused: Set<String> = []
        while !Task.isCancelled {
            activity.at("reading the periodic jobs' settings", bound: periodicConnection.longestCall)
            do {
                settings = try await store.cronSettings(on: periodicConnection)
            } catch {
                // Keep the last settings read: the ticks below say whether the database is reachable.
                shared.metrics.databaseError(operation: "cron_settings")
            }
            var effective: [PeriodicJob] = []
            for declared in configuration.periodicJobs {
                let setting = settings[declared.name]
                if setting?.pausedAt != nil {
                    if paused.insert(declared.name).inserted {
                        shared.logger.notice("periodic job \(declared.name) is paused; none of its slots are enqueued until 'locod cron resume \(declared.name)'")
                    }
                    continue
                }
                if paused.remove(declared.name) != nil { shared.logger.notice("periodic job \(declared.name) runs again") }
                do {
                    effective.append(try declared.applying(setting))
                } catch {
                    if unreadable.insert("\(declared.name) \(setting?.schedule ?? "")").inserted {
                        shared.logger.warning("the schedule set for periodic job \(declared.name) does not read (\(error.message)); it runs on its declared '\(declared.schedule)'. Fix: locod cron set \(declared.name) 'EXPRESSION'")
                    }
                    effective.append(declared)
                }
            }
            for periodic in effective {
                // A few statements, then an enqueue in a transaction.
                activity.at("scheduling periodic job \(periodic.name)", bound: periodicConnection.longestCall * 3 + transactionTimeLimit)
                do {
                    lastSlots[periodic.name] = try await scheduler.tick(periodic, lastSlot: lastSlots[periodic.name], now: Date(), database: periodicConnection)
                } catch {
                    shared.metrics.databaseError(operation: "cron")
                    shared.logger.warning("cannot schedule periodic job \(periodic.name)", metadata: ["error": "\(shared.databaseURL.describe(error))"])
                }
            }
            let resolution: Duration = effective.contains { $0.schedule.hasSeconds } ? .milliseconds(200) : .seconds(1)
            activity.at("sleeping", bound: resolution)
            try? await Task.sleep(for: resolution)
        }
    }
}

/// Counts a maintenance loop's failed statements in a row. Each one is a metric; the first and
/// every 50th are logged too, so a loop that cannot reach the database says so without
/// flooding the log, and says when it works again.
private struct FailureStreak {
    let operation: String
    let doing: String
    private var count = 0

    init(operation: String, doing: String) {
        self.operation = operation
        self.doing = doing
    }

    mutating func failed(_ error: any Error, _ shared: WorkerShared) {
        count += 1
        shared.metrics.databaseError(operation: operation)
        if count == 1 || count % 50 == 0 {
            shared.logger.warning("cannot \(doing); retrying", metadata: ["failures": "\(count)", "error": "\(shared.databaseURL.describe(error))"])
        }
    }

    mutating func succeeded(_ shared: WorkerShared) {
        if count > 0 { shared.logger.info("\(operation) works again after \(count) failed attempts") }
        count = 0
    }
}

/// Decides and records periodic slots; shared by the in-process scheduler and `locod cron`.
public struct PeriodicScheduler: Sendable {
    let store: JobStore
    let logger: Logger

    public init(store: JobStore, logger: Logger) {
        self.store = store
        self.logger = logger
    }

    /// One scheduler step for `periodic`: returns the newest slot now known to be taken.
    ///
    /// A periodic job seen for the first time starts from the current slot without running it;
    /// slots missed while no scheduler ran are caught up with a single run, not one per slot.
    func tick(_ periodic: PeriodicJob, lastSlot: Date?, now: Date, database: ReconnectingConnection) async throws -> Date {
        var last = lastSlot
        if last == nil {
            last = try await store.cronSlot(name: periodic.name, on: database)
            if last == nil {
                let current = periodic.schedule.slot(containing: now)
                _ = try await store.advanceCronSlot(name: periodic.name, to: current, on: database)
                return try await store.cronSlot(name: periodic.name, on: database) ?? current
            }
        }
        guard let last, let due = periodic.schedule.latestDue(after: last, now: now) else { return last ?? now }
        if let id = try await enqueue(periodic, slot: due, database: database) {
            logger.info("enqueued periodic job \(periodic.name)", metadata: ["job_id": "\(id)", "slot": "\(due)"])
        }
        return due
    }

    /// Enqueues `slot` of `periodic` unless some scheduler already did; returns the new job's id.
    public func enqueue(_ periodic: PeriodicJob, slot: Date, database: some TransactionRunner) async throws -> Int64? {
        try await database.transaction { connection in
            guard try await store.advanceCronSlot(name: periodic.name, to: slot, on: connection) else { return nil }
            return try await store.enqueue(periodic.job(forSlot: slot.timeIntervalSince1970), on: connection).id
        }
    }
}
