import Logging
import PostgresNIO
import Synchronization

/// Writes job outcomes in batches: whatever finished while the previous write was in flight
/// goes out in the next single UPDATE (group commit), so a busy worker pays one round trip for
/// many jobs and an idle one still writes each outcome at once. A busy pool's outcomes of jobs
/// without dependents skip it: its producer's next claim writes them (see `WorkerPool`).
final class Completer: Sendable {
    private let pending = Mutex<[JobOutcome]>([])
    /// Outcomes PostgreSQL refused even alone and with a plain error (a trigger of the
    /// operator's, say): tried again on their own every `parkedRetry`, so they hold up no other
    /// outcome. Their jobs stay held (the heartbeat renews them), so none runs twice meanwhile.
    private let parked = Mutex<[JobOutcome]>([])
    static let parkedRetry: Duration = .seconds(2)
    private let wake = WakeSignal()
    private let database: ReconnectingConnection
    private let store: JobStore
    private let ledger: JobLedger
    private let metrics: QueueMetrics
    private let worker: String
    private let logger: Logger

    init(database: ReconnectingConnection, store: JobStore, ledger: JobLedger, metrics: QueueMetrics, worker: String, logger: Logger) {
        self.database = database
        self.store = store
        self.ledger = ledger
        self.metrics = metrics
        self.worker = worker
        self.logger = logger
    }

    func submit(_ outcome: JobOutcome) {
        ledger.markFinishing(outcome.id)
        pending.withLock { $0.append(outcome) }
        wake.signal()
    }

    /// Outcomes a producer could not write with its claim: written with the next batch, first.
    func submit(contentsOf outcomes: [JobOutcome]) {
        guard !outcomes.isEmpty else { return }
        pending.withLock { $0.insert(contentsOf: outcomes, at: 0) }
        wake.signal()
    }

    var backlog: Int { pending.withLock { $0.count } }

    /// Writes outcomes until `stopping` is set and nothing is left to write.
    func run(stopping: OneShotEvent, activity: PartActivity) async {
        var failures = 0
        var parkedTried = ContinuousClock.now
        while true {
            if ContinuousClock.now - parkedTried >= Self.parkedRetry {
                parkedTried = ContinuousClock.now
                await retryParked(activity: activity)
            }
            let batch = pending.withLock { batch in
                defer { batch.removeAll(keepingCapacity: true) }
                return batch
            }
            if batch.isEmpty {
                // Cancelled, its waits return at once: it would spin.
                if stopping.isSet || Task.isCancelled {
                    await retryParked(activity: activity)
                    let given = parked.withLock { parked in
                        defer { parked.removeAll() }
                        return parked
                    }
                    if !given.isEmpty {
                        logger.error("giving up on \(given.count) job outcomes PostgreSQL refuses, at shutdown; their leases will expire and they will run again",
                                     metadata: ["jobs": "\(given.map(\.id))"])
                        ledger.remove(given.map { ($0.id, $0.run) })
                    }
                    activity.at("closing its connection", bound: database.longestCall)
                    await database.close()
                    return
                }
                activity.at("waiting for job outcomes", bound: .milliseconds(200))
                await wake.wait(timeout: .milliseconds(200))
                continue
            }
            activity.at("recording job outcomes", bound: database.longestCall)
            do {
                var updated = try await store.record(batch, worker: worker, on: database)
                failures = 0
                let unwritten = batch.filter { updated[$0.id] == nil }
                // Not lost, if an earlier try wrote them and only its answer was lost.
                if !unwritten.isEmpty {
                    activity.at("looking for job outcomes written before", bound: database.longestCall)
                    for (id, state) in (try? await store.alreadyRecorded(unwritten, worker: worker, on: database)) ?? [:] {
                        updated[id] = state
                        logger.debug("the result of job \(id) was written before; its answer was lost with the connection")
                    }
                }
                account(batch, updated: updated)
            } catch let error where Self.refusesOutcomes(error) {
                logger.warning("PostgreSQL refused job outcomes; writing them one at a time",
                               metadata: ["jobs": "\(batch.count)", "error": "\(database.url.describe(error))"])
                failures = 0
                await recordApart(batch, activity: activity)
            } catch {
                failures += 1
                if failures == 1 || failures % 50 == 0 {
                    logger.warning("cannot record job outcomes; retrying", metadata: ["jobs": "\(batch.count)", "error": "\(database.url.describe(error))"])
                }
                if (stopping.isSet || Task.isCancelled) && failures > 20 {
                    // The database is gone; leases will expire and the rescuer re-runs these jobs.
                    logger.error("giving up on \(batch.count) job outcomes at shutdown; their leases will expire and they will run again")
                    ledger.remove(batch.map { ($0.id, $0.run) })
                    return
                }
                pending.withLock { $0.insert(contentsOf: batch, at: 0) }
                activity.at("pausing after a failed write", bound: .seconds(1))
                try? await Task.sleep(for: .milliseconds(min(50 * failures, 1000)))
            }
        }
    }

    /// Whether PostgreSQL refused the statement itself: a value in it (class 22, "data
    /// exception": a time out of range, text it cannot hold), or a trigger or constraint of the
    /// operator's (P0001, class 23), which sending the same batch again would meet every time.
    /// Not: the connection, the session ending, a conflict or a deadlock (class 40), a lack of
    /// resources (53), a cancel or shutdown (57), a lock not available (55P03), which pass.
    static func refusesOutcomes(_ error: any Error) -> Bool {
        guard let server = DatabaseServerError.server(of: error), !server.endsSession else { return false }
        let passing = ["08", "25", "40", "53", "57", "58", "XX"]
        return !passing.contains(where: server.sqlState.hasPrefix) && server.sqlState != "55P03"
    }

    /// Writes `batch` one outcome at a time. Retried whole, one outcome PostgreSQL refuses would
    /// fail every batch it is in, so no later outcome of this worker would be written and its
    /// jobs would stay running. One refused alone is written again with a plain error saying so in
    /// place of its own (its state kept); refused even then, it is parked
    /// and tried again on its own (see `parked`).
    private func recordApart(_ batch: [JobOutcome], activity: PartActivity) async {
        for (index, outcome) in batch.enumerated() {
            activity.at("recording job outcomes one at a time", bound: database.longestCall)
            do {
                do {
                    account([outcome], updated: try await store.record([outcome], worker: worker, on: database))
                } catch let error where Self.refusesOutcomes(error) {
                    let plain = outcome.refused(because: database.url.describe(error), worker: worker)
                    do {
                        account([plain], updated: try await store.record([plain], worker: worker, on: database))
                        logger.error("PostgreSQL refused the outcome of job \(outcome.id); it was written with a plain error instead",
                                     metadata: ["job_id": "\(outcome.id)", "error": "\(database.url.describe(error))"])
                    } catch let again where Self.refusesOutcomes(again) {
                        logger.error("PostgreSQL refuses the outcome of job \(outcome.id) even with a plain error; trying it again on its own every \(Self.parkedRetry.spoken)",
                                     metadata: ["job_id": "\(outcome.id)", "error": "\(database.url.describe(again))"])
                        parked.withLock { $0.append(plain) }
                    }
                }
            } catch {
                // Not a value: the connection. What is left goes back in line, first.
                pending.withLock { $0.insert(contentsOf: batch[index...], at: 0) }
                return
            }
        }
    }

    /// Tries each parked outcome again on its own; those still refused stay parked.
    private func retryParked(activity: PartActivity) async {
        let waiting = parked.withLock { parked in
            defer { parked.removeAll() }
            return parked
        }
        for (index, outcome) in waiting.enumerated() {
            activity.at("recording a job outcome PostgreSQL refused before", bound: database.longestCall)
            do {
                account([outcome], updated: try await store.record([outcome], worker: worker, on: database))
                logger.notice("the outcome of job \(outcome.id) that PostgreSQL refused before is written", metadata: ["job_id": "\(outcome.id)"])
            } catch where Self.refusesOutcomes(error) {
                parked.withLock { $0.append(outcome) }
            } catch {
                // The connection: the rest wait for the next round.
                parked.withLock { $0.append(contentsOf: waiting[index...]) }
                return
            }
        }
    }

    /// Metrics, warnings for dropped results, and the ledger, for a batch written (here or with a claim).
    func account(_ batch: [JobOutcome], updated: [Int64: JobState]) {
        for outcome in batch {
            guard let state = updated[outcome.id] else {
                metrics.resultDropped(queue: outcome.queue)
                logger.warning("dropped the result of job \(outcome.id): this worker no longer holds it (lease expired or taken over)",
                               metadata: ["job_id": "\(outcome.id)", "job_attempt": "\(outcome.attempt)"])
                continue
            }
            metrics.finished(queue: outcome.queue, state: state)
        }
        ledger.remove(batch.map { ($0.id, $0.run) })
    }
}
