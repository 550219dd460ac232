import Foundation
import Logging
import LocoShared
import PostgresNIO
import Synchronization

/// One queue's pool in a worker process: a producer that claims as many jobs as it has free
/// slots (one round trip per batch), and an executor that runs each claimed job in its own
/// task and hands the outcome to the process's `Completer`.
final class WorkerPool: Sendable {
    let queue: String
    /// The concurrency this process was started with for the queue (`--concurrency`).
    let declaredConcurrency: Int
    /// How many of its jobs run at once now: the declared concurrency, or an operator's scale.
    private let currentConcurrency: Atomic<Int>
    var concurrency: Int { currentConcurrency.load(ordering: .relaxed) }
    /// The queue's limit across all workers ('locod queue limit'), as this worker last read it;
    /// 0 for none. With one, claims take the limited path (`claimUnderLimit`).
    private let sharedLimit = Atomic<Int>(0)
    var globalLimit: Int? {
        let value = sharedLimit.load(ordering: .relaxed)
        return value > 0 ? value : nil
    }
    let wake = WakeSignal()
    private let running = Mutex<(count: Int, waitingForSlot: Bool)>((0, false))
    /// While the queue is busy (the last claim came back full), outcomes of this pool's jobs
    /// without dependents wait here for the producer's next claim, which writes them in its
    /// own statement: one commit, and one WAL flush, instead of two. That claim comes as soon
    /// as a slot frees up (after at most `claimGather`), so they wait well under a millisecond.
    private let carried = Mutex<(enabled: Bool, outcomes: [JobOutcome])>((false, []))
    private let shared: WorkerShared
    private let database: ReconnectingConnection

    init(queue: String, concurrency: Int, shared: WorkerShared) {
        self.queue = queue
        declaredConcurrency = concurrency
        currentConcurrency = Atomic(concurrency)
        self.shared = shared
        shared.metrics.concurrency(queue: queue, limit: concurrency)
        // It only claims: it keeps one plan for the claim (see `Claim.sessionSettings`).
        database = shared.connect(sessionSettings: JobStatements.Claim.sessionSettings)
    }

    /// Claims and starts jobs until `stopping` is set.
    func produce(stopping: OneShotEvent, activity: PartActivity) async {
        defer { Task { [database] in await database.close() } }
        defer { carry(false) }
        var failures = 0
        var busy = false, gathered = false
        let configuration = shared.configuration
        // A claim counts its free slots, then is sent. The first claim would wait for the
        // connection to be made, long enough for the scales (and limits across workers) to be
        // read and jobs enqueued meanwhile; counted by --concurrency, it could take more jobs
        // than a scale allows. So: connect, then wait for the scales' first read (at most
        // `firstScaleReadWait`), then count.
        activity.at("connecting", bound: database.longestCall)
        _ = try? await database.connection()
        activity.at("waiting for the queue scales' first read", bound: Self.firstScaleReadWait)
        if !(await shared.scalesRead.wait(upTo: Self.firstScaleReadWait)) {
            shared.logger.debug("starting to claim before the queue scales were read", metadata: ["queue": "\(queue)"])
        }
        // Cancellation ends it too: cancelled, every wait below returns at once.
        while !stopping.isSet && !Task.isCancelled {
            let free = running.withLock { state -> Int in
                let free = concurrency - state.count
                state.waitingForSlot = free <= 0
                return free
            }
            if shared.completer.backlog > concurrency * 8 {
                carry(false)
                activity.at("waiting for the completer's backlog to shrink", bound: configuration.pollInterval)
                await wake.wait(timeout: configuration.pollInterval)
                continue
            }
            if free <= 0 {
                activity.at("waiting for a free slot", bound: configuration.pollInterval)
                await wake.wait(timeout: configuration.pollInterval)
                continue
            }
            // A busy queue (the last claim came back full) and a pool more than half busy: let
            // a few more slots free up before claiming, once, so that one claim takes several
            // jobs. Each claim scans past the rows the ones before it took, so many small claims
            // cost PostgreSQL more per job than a few larger ones.
            if busy, !gathered, free < concurrency / 2, configuration.claimGather > .zero {
                gathered = true
                activity.at("letting slots free up before claiming", bound: configuration.claimGather)
                try? await Task.sleep(for: configuration.claimGather)
                continue
            }
            let limit = min(free, configuration.maxClaimBatch)
            let limited = globalLimit != nil
            // Limited claims write no outcomes: those carried go to the completer.
            if limited { carry(false) }
            let outcomes = carried.withLock { state in
                defer { state.outcomes.removeAll(keepingCapacity: true) }
                return state.outcomes
            }
            let jobs: [ClaimedJob]
            var atLimit = false
            activity.at("claiming jobs", bound: database.longestCall)
            do {
                if limited {
                    (jobs, atLimit) = try await shared.store.claimUnderLimit(
                        queue: queue, limit: limit, worker: configuration.workerID, lease: configuration.leaseDuration, on: database)
                } else {
                    let recorded: [Int64: JobState]
                    (jobs, recorded) = try await shared.store.claim(
                        queue: queue, limit: limit, worker: configuration.workerID, lease: configuration.leaseDuration,
                        recording: outcomes, on: database)
                    if !outcomes.isEmpty { shared.completer.account(outcomes, updated: recorded) }
                }
                if failures > 0 { shared.logger.info("claiming works again", metadata: ["queue": "\(queue)"]) }
                failures = 0
            } catch {
                // The claim may have committed without its answer reaching us: the heartbeat
                // then looks for jobs held under this worker's name that it never started.
                shared.ledger.noteUnansweredClaim()
                shared.completer.submit(contentsOf: outcomes)
                carry(false)
                failures += 1
                shared.metrics.databaseError(operation: "claim")
                if failures == 1 || failures % 50 == 0 {
                    shared.logger.warning("cannot claim jobs; retrying",
                                          metadata: ["queue": "\(queue)", "error": "\(shared.databaseURL.describe(error))"])
                }
                activity.at("pausing after a failed claim", bound: .milliseconds(min(100 * failures, 2000)))
                await wake.wait(timeout: .milliseconds(min(100 * failures, 2000)))
                continue
            }
            for job in jobs { start(job) }
            busy = !limited && jobs.count == limit
            gathered = false
            carry(busy && !stopping.isSet)
            if jobs.count < limit {
                activity.at("waiting for jobs", bound: configuration.pollInterval * 1.2)
                // Jobs left waiting for the limit: a slot freed on another worker sends no notification.
                await wake.wait(timeout: (atLimit ? min(configuration.pollInterval, Self.limitedRecheck) : configuration.pollInterval).jittered())
            }
        }
    }

    /// How long a producer waits for the scales' first read before it claims anyway: as long as
    /// that read may take by its own deadlines (two statements, each a 5 s connect and a 5 s
    /// query), so a scale set before the worker started holds for its first claim. A read that
    /// fails (a database older than the scales) ends the wait at once. 2 s was too short for a
    /// loaded CI machine: the first claim took 5 jobs under a scale of 2.
    static let firstScaleReadWait: Duration = .seconds(20)

    /// How soon a producer whose queue's jobs wait for its limit looks again: a slot freed on
    /// another worker sends no notification.
    static let limitedRecheck: Duration = .milliseconds(250)

    /// Sets the queue's limit across all workers as read (nil: none).
    func setGlobalLimit(_ newLimit: Int?) {
        sharedLimit.store(newLimit ?? 0, ordering: .relaxed)
        wake.signal()
    }

    /// Runs at most `newLimit` jobs at once from now on; returns the limit before. Running jobs
    /// over a lower limit finish; no new one starts until the pool is under it.
    @discardableResult
    func rescale(to newLimit: Int) -> Int {
        let old = currentConcurrency.exchange(newLimit, ordering: .relaxed)
        shared.metrics.concurrency(queue: queue, limit: newLimit)
        if newLimit > old { wake.signal() }
        return old
    }

    /// Whether outcomes wait for the next claim; when not, those waiting go to the completer.
    private func carry(_ enabled: Bool) {
        let left = carried.withLock { state -> [JobOutcome] in
            state.enabled = enabled
            guard !enabled else { return [] }
            defer { state.outcomes.removeAll() }
            return state.outcomes
        }
        shared.completer.submit(contentsOf: left)
    }

    private func start(_ job: ClaimedJob) {
        running.withLock { $0.count += 1 }
        let run = shared.ledger.add(id: job.id, attempt: job.attempt, queue: queue)
        shared.metrics.started(queue: queue, startLag: .milliseconds(Int64(max(0, job.attemptedAt.timeIntervalSince(job.runAt)) * 1000)))
        let task = Task { await self.execute(job, run: run) }
        shared.ledger.attach(task, to: job.id)
    }

    private func execute(_ job: ClaimedJob, run: UInt64) async {
        var logger = shared.logger
        // In one assignment: a stream handler renders its metadata again on every change, and
        // four changes per job showed up in profiles of a busy worker.
        logger.handler.metadata.merge([
            "job_id": "\(job.id)", "job_kind": "\(job.kind)", "job_attempt": "\(job.attempt)", "queue": "\(queue)",
        ]) { $1 }
        let finishedInTransaction = Mutex(false)
        let began = ContinuousClock.now
        let timeout = shared.handlers.timeout(of: job.kind) ?? shared.configuration.jobTimeout
        let context = JobContext(
            id: job.id, queue: queue, kind: job.kind, attempt: job.attempt, maxAttempts: job.maxAttempts,
            createdAt: job.createdAt, deadline: timeout.map { began + $0 }, logger: logger,
            worker: shared.configuration.workerID, store: shared.store,
            finishedInTransaction: { finishedInTransaction.withLock { $0 = true } })
        let timer = timeout.map { limit in Task { [shared, logger, queue, id = job.id, kind = job.kind] in
            guard (try? await Task.sleep(for: limit)) != nil else { return }
            // A job already being stopped (cancelled, lease lost, shutdown) keeps that reason.
            if shared.ledger.stop(id, run: run, reason: .timedOut(limit)), shared.ledger.stopReason(of: id) == .timedOut(limit) {
                shared.metrics.timedOut(queue: queue, kind: kind)
                logger.warning("the job ran past its timeout of \(limit.spoken); its handler was cancelled")
                // Cancellation is cooperative: a handler that ignores it keeps its slot (and its
                // lease, so the job never runs twice at once). Say so until it returns.
                var waited = Duration.zero
                while (try? await Task.sleep(for: .seconds(60))) != nil {
                    waited += .seconds(60)
                    logger.warning("the job's handler has not returned \(waited.spoken) after its timeout; it keeps its slot until it does")
                }
            }
        } }
        var failure: (any Error)?
        do {
            guard let handler = shared.handlers.byKind[job.kind] else {
                throw JobFailure.retryable(
                    "unknown_kind", "no handler for job kind '\(job.kind)' on worker \(shared.configuration.workerID)",
                    detail: shared.handlers.kinds.isEmpty ? "this worker has no handlers registered"
                        : "this worker knows: \(shared.handlers.kinds.joined(separator: ", "))")
            }
            try await handler(job.args, context)
        } catch {
            failure = error
        }
        // A handler that has returned cannot be stopped any more: marking it finishing first
        // makes a timer that fires from here on a no-op, so it cannot replace the handler's own
        // error with job_timeout, nor warn about a job that completes.
        shared.ledger.markFinishing(job.id)
        timer?.cancel()
        let outcome: JobOutcome? = if let failure {
            decide(job, error: failure, finishedInTransaction: finishedInTransaction.withLock { $0 })
        } else {
            finishedInTransaction.withLock { $0 } ? nil : JobOutcome(id: job.id, attempt: job.attempt, queue: queue, state: .completed)
        }
        shared.metrics.ran(queue: queue, kind: job.kind, duration: ContinuousClock.now - began)
        if var outcome {
            outcome.run = run
            outcome.hasDependents = job.hasDependents
            // While carrying is on, the producer's next claim writes it.
            let carriedByClaim = !outcome.hasDependents && carried.withLock { state in
                if state.enabled { state.outcomes.append(outcome) }
                return state.enabled
            }
            if !carriedByClaim { shared.completer.submit(outcome) }
        } else {
            shared.ledger.remove([(job.id, run)])
        }
        let wakeProducer = running.withLock { state -> Bool in
            state.count -= 1
            defer { state.waitingForSlot = false }
            return state.waitingForSlot
        }
        if wakeProducer { wake.signal() }
    }

    /// `complete(in:)` throws `leaseLost`; a transaction helper may wrap it.
    static func isLeaseLost(_ error: any Error) -> Bool {
        if case QueueError.leaseLost? = error as? QueueError { return true }
        if let wrapped = (error as? PostgresTransactionError)?.closureError { return isLeaseLost(wrapped) }
        return false
    }

    private func decide(_ job: ClaimedJob, error: any Error, finishedInTransaction: Bool) -> JobOutcome? {
        let worker = shared.configuration.workerID
        func attemptError(_ errorClass: ErrorClass, _ code: String, _ message: String, _ detail: String?) -> String {
            let record = AttemptError(attempt: job.attempt, at: Date(), worker: worker, errorClass: errorClass, code: code,
                                      message: String(message.prefix(2000)), detail: detail.map { String($0.suffix(8000)) })
            return record.storableJSON
        }
        if finishedInTransaction { return nil }
        var timedOut: JobFailure?
        switch shared.ledger.stopReason(of: job.id) {
        case .leaseLost:
            shared.logger.warning("job \(job.id) was stopped: this worker lost its lease; the result is dropped")
            return nil
        case .cancelRequested:
            return JobOutcome(id: job.id, attempt: job.attempt, queue: queue, state: .cancelled,
                              errorJSON: attemptError(.permanent, "cancelled", "the job was cancelled while running", nil))
        case .shutdown:
            return JobOutcome(id: job.id, attempt: job.attempt, queue: queue, state: .available, refund: 1,
                              errorJSON: attemptError(.retryable, "worker_shutdown", "the worker shut down before the job finished; it runs again", nil))
        case .timedOut(let limit):
            // Whatever the handler threw once cancelled is a consequence; the cause is the timeout.
            timedOut = JobFailure.retryable("job_timeout", "the job ran past its timeout of \(limit.spoken) and was stopped",
                                            detail: "the handler then threw: \(String(describing: error))")
        case nil:
            break
        }
        if timedOut == nil, Self.isLeaseLost(error) {
            shared.logger.warning("job \(job.id) finished after this worker lost its lease; its transaction was rolled back")
            return nil
        }
        let classified: any ClassifiedJobError = timedOut ?? (error as? any ClassifiedJobError)
            ?? JobFailure.retryable("error", String(describing: error), detail: String(reflecting: error))
        let errorJSON = attemptError(classified.errorClass, classified.code, classified.message, classified.detail)
        switch classified.errorClass {
        case .snooze:
            let wait = classified.retryAfter ?? .seconds(1)
            return JobOutcome(id: job.id, attempt: job.attempt, queue: queue, state: .scheduled, delaySeconds: JobOutcome.delay(wait), refund: 1, errorJSON: errorJSON)
        case .permanent:
            return JobOutcome(id: job.id, attempt: job.attempt, queue: queue, state: .failed, errorJSON: errorJSON)
        case .retryable:
            if job.attempt >= job.maxAttempts {
                return JobOutcome(id: job.id, attempt: job.attempt, queue: queue, state: .failed, errorJSON: errorJSON)
            }
            let policy = shared.handlers.retryPolicy(of: job.kind) ?? shared.configuration.retry
            let wait = classified.retryAfter ?? policy.delay(afterAttempt: job.attempt)
            return JobOutcome(id: job.id, attempt: job.attempt, queue: queue, state: .scheduled, delaySeconds: JobOutcome.delay(wait), errorJSON: errorJSON)
        }
    }
}
