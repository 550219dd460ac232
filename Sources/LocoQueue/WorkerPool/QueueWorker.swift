import Foundation
import Logging
import PostgresNIO
import ServiceLifecycle
import Synchronization

/// What every part of one worker process shares.
struct WorkerShared: Sendable {
    let databaseURL: DatabaseURL
    let store: JobStore
    let ledger: JobLedger
    let completer: Completer
    let metrics: QueueMetrics
    let handlers: JobHandlers
    let configuration: WorkerConfiguration
    let logger: Logger
    /// Set once LISTEN is in place (notifications sent earlier were not seen).
    let listening = OneShotEvent()
    /// Signalled by a `scale:<queue>` notification: an operator changed a queue's concurrency.
    let scalesChanged = WakeSignal()
    /// Set once the scales and limits were first read (or could not be): producers wait for it,
    /// briefly, before their first claim.
    let scalesRead = OneShotEvent()
    /// This process, in its presence row when it has no session of its own (poll-only): tells
    /// it apart from another process given the same worker id.
    let instance = UUID().uuidString

    /// A dedicated connection for one part of the worker, with `sessionSettings` for it. Behind a
    /// transaction-mode pooler (poll-only mode) statements are not prepared and session settings
    /// would reach the pooler's other clients, so it gets none.
    func connect(sessionSettings: [(name: String, value: String)] = [], queryTimeout: Duration = .seconds(30)) -> ReconnectingConnection {
        ReconnectingConnection(url: databaseURL, logger: logger, queryTimeout: queryTimeout, usePreparedStatements: !configuration.pollOnly,
                               sessionSettings: configuration.pollOnly ? [] : sessionSettings)
    }
}

/// A worker process's queue machinery as one `Service`: a pool per queue, the notification
/// listener, one batched heartbeat, and the maintenance loops (rescuer, scheduler, pruner,
/// periodic jobs). Graceful shutdown stops claiming, lets running jobs finish within the grace
/// period, then stops and releases the rest. Cancelling the task that runs it stops it the same
/// way without the grace period.
public final class QueueWorker: Service, Sendable {
    let shared: WorkerShared
    let pools: [String: WorkerPool]
    private let stopping = OneShotEvent()
    /// Set once running jobs are done: the completer writes what is left, then stops.
    private let drained = OneShotEvent()
    private let stopped = OneShotEvent()
    /// Set when the worker's task is cancelled: running jobs get no grace period.
    private let hurried = OneShotEvent()
    let parts = WorkerParts()

    /// Each part of the worker (a producer per queue, the completer, the heartbeat, maintenance,
    /// the listener) gets its own connection to `databaseURL`.
    public init(databaseURL: DatabaseURL, handlers: JobHandlers,
                configuration: WorkerConfiguration, metrics: QueueMetrics = QueueMetrics(), logger: Logger) throws {
        try configuration.validate()
        // LISTEN lives in a session, which a pooler in transaction mode does not keep.
        var configuration = configuration
        if databaseURL.transactionPooler { configuration.pollOnly = true }
        for (kind, timeout) in handlers.timeouts.sorted(by: { $0.key < $1.key }) where timeout <= .zero {
            throw QueueError.invalidWorkerConfiguration(reason: "the timeout of job kind '\(kind)' must be positive (got \(timeout))")
        }
        for (kind, retry) in handlers.retries.sorted(by: { $0.key < $1.key }) where retry.base < .zero || retry.cap < .zero {
            throw QueueError.invalidWorkerConfiguration(reason: "the retry backoff of job kind '\(kind)' must not be negative (got base \(retry.base), cap \(retry.cap))")
        }
        var logger = logger
        logger[metadataKey: "worker"] = "\(configuration.workerID)"
        let store = JobStore(logger: logger)
        let ledger = JobLedger()
        let completer = Completer(database: ReconnectingConnection(url: databaseURL, logger: logger, usePreparedStatements: !configuration.pollOnly), store: store, ledger: ledger, metrics: metrics,
                                  worker: configuration.workerID, logger: logger)
        shared = WorkerShared(databaseURL: databaseURL, store: store, ledger: ledger, completer: completer,
                              metrics: metrics, handlers: handlers, configuration: configuration, logger: logger)
        if configuration.pollOnly { shared.listening.set() }
        var pools: [String: WorkerPool] = [:]
        for slot in configuration.queues {
            pools[slot.name] = WorkerPool(queue: slot.name, concurrency: slot.concurrency, shared: shared)
        }
        self.pools = pools
    }

    public var workerID: String { shared.configuration.workerID }

    /// Its parts stuck past their deadlines now, as `part at 'step' for N s` (empty when
    /// healthy): what `locod worker`'s `/healthz` answers 503 with, so that a liveness probe
    /// restarts a worker the watchdog found stuck.
    public var stalledParts: [String] { parts.stalled }

    /// Whether it polls for jobs without LISTEN: `pollOnly`, or a URL marked `pgbouncer=true`.
    public var pollsOnly: Bool { shared.configuration.pollOnly }

    /// Asks the worker to shut down gracefully (what SIGTERM does under a `ServiceGroup`).
    public func stop() {
        stopping.set()
        for pool in pools.values { pool.wake.signal() }
    }

    /// Stops claiming and stops the running jobs at once, giving them back to the queue.
    private func stopWithoutGrace() {
        if !hurried.isSet {
            shared.logger.notice("the worker's task was cancelled: stopping without the grace period; running jobs go back to the queue")
        }
        hurried.set()
        stop()
    }

    /// Returns once the worker receives notifications (at once in poll-only mode).
    public func waitUntilListening() async { await shared.listening.wait() }

    /// Returns once `run()` has finished its shutdown.
    public func waitUntilStopped() async { await stopped.wait() }

    public func run() async throws {
        // Cancelled (a ServiceGroup cancels its services when one of them fails), the worker
        // stops as on SIGTERM, without the grace period: running handlers are cancelled and
        // their jobs go back to the queue. Its parts run in a task of their own, so that this
        // stop (writing outcomes, giving jobs back, closing connections) is not cancelled too.
        // Cancelled along with it, the parts' waits returned at once and the producers and the
        // completer, which loop until the worker stops, spun: a `locod worker` whose metrics
        // port was taken ran at 100% of a core, never exited, and the connections on its busy
        // event loop never connected.
        let work = Task { await self.runParts() }
        await withTaskCancellationHandler {
            await work.value
        } onCancel: {
            self.stopWithoutGrace()
        }
    }

    private func runParts() async {
        defer { stopped.set() }
        let configuration = shared.configuration
        let shared = self.shared
        shared.logger.info("worker started", metadata: [
            "queues": "\(configuration.queues.map { "\($0.name)=\($0.concurrency)" }.joined(separator: ","))",
            "mode": "\(configuration.pollOnly ? (shared.databaseURL.transactionPooler ? "poll-only (pgbouncer=true)" : "poll-only") : "listen+poll")",
        ])
        let parts = self.parts
        // Read at once, beside the other parts' start: waiting for it before starting them held
        // every part up on one more connection, seconds under a loaded database (a CI run). Only
        // the producers wait for it (see `WorkerPool.produce`).
        let scales = ScaleWatcher(shared: shared, pools: pools)
        let watchdog = parts.startWatchdog(logger: shared.logger) { shared.metrics.stalledParts($0) }
        defer { watchdog.stop() }
        await withGracefulShutdownHandler {
            let stragglers = await withTaskGroup(of: Void.self) { background in
                background.addTask(operation: parts.task("scales") { await scales.run($0) })
                background.addTask(operation: parts.task("completer") { await shared.completer.run(stopping: self.drained, activity: $0) })
                // Its own task, to be ended before the worker says it left: a touch landing after
                // the stop mark would list a stopped poll-only worker as present again.
                let heartbeat = Task(operation: parts.task("heartbeat") { await Heartbeat(shared: shared).run($0) })
                let listener = NotificationListener(shared: shared, pools: self.pools)
                if !configuration.pollOnly {
                    background.addTask(operation: parts.task("listener") { await listener.run($0) })
                }
                if configuration.runMaintenance {
                    let maintenance = Maintenance(shared: shared)
                    background.addTask(operation: parts.task("maintenance connections") { activity in
                        // Closes the maintenance connections when the worker stops.
                        activity.at("waiting for the worker to stop", bound: nil)
                        await OneShotEvent().waitForever()
                        activity.at("closing", bound: maintenance.longestClose)
                        await maintenance.close()
                    })
                    background.addTask(operation: parts.task("rescuer") { await maintenance.rescueLoop($0) })
                    background.addTask(operation: parts.task("scheduler") { await maintenance.promoteLoop($0) })
                    background.addTask(operation: parts.task("pruner") { await maintenance.pruneLoop($0) })
                    if !configuration.periodicJobs.isEmpty {
                        background.addTask(operation: parts.task("periodic jobs") { await maintenance.periodicLoop($0) })
                    }
                }
                await withTaskGroup(of: Void.self) { producers in
                    for pool in self.pools.values {
                        producers.addTask(operation: parts.task("producer \(pool.queue)") { await pool.produce(stopping: self.stopping, activity: $0) })
                    }
                }
                await self.finishRunningJobs()
                heartbeat.cancel()
                await heartbeat.value
                await self.leavePresence()
                background.cancelAll()
                // Cancelling a task that waits for notifications does not always end the wait;
                // closing its connection does.
                await listener.shutdown()
                await scales.close()
                return Task { await parts.reportStragglers(every: .seconds(10), logger: shared.logger) }
            }
            stragglers.cancel()
        } onGracefulShutdown: {
            self.stop()
        }
        shared.logger.info("worker stopped")
    }

    private func finishRunningJobs() async {
        let ledger = shared.ledger
        let grace = ContinuousClock.now + shared.configuration.gracePeriod
        if ledger.count > 0 {
            shared.logger.info("waiting for running jobs to finish", metadata: ["jobs": "\(ledger.count)", "grace": "\(shared.configuration.gracePeriod)"])
        }
        while ledger.runningCount > 0 && ContinuousClock.now < grace && !hurried.isSet {
            await ledger.drained.wait(timeout: .milliseconds(50))
        }
        if ledger.runningCount > 0 {
            shared.logger.warning("\(hurried.isSet ? "no grace period" : "grace period over"): stopping \(ledger.runningCount) jobs and returning them to the queue")
            ledger.stopAll(reason: .shutdown)
            let deadline = ContinuousClock.now + .seconds(5)
            while ledger.runningCount > 0 && ContinuousClock.now < deadline {
                await ledger.drained.wait(timeout: .milliseconds(50))
            }
        }
        // Outcomes still being written get a short while; after that the leases expire on their own.
        drained.set()
        let deadline = ContinuousClock.now + .seconds(10)
        while ledger.count > ledger.runningCount && ContinuousClock.now < deadline {
            await ledger.drained.wait(timeout: .milliseconds(20))
        }
        let stuck = ledger.held()
        if !stuck.isEmpty {
            // Handlers that ignore cancellation: give their jobs back now rather than after the lease.
            let outcomes = stuck.map { JobOutcome(id: $0.id, attempt: $0.attempt, state: .available, refund: 1) }
            let connection = shared.connect()
            _ = try? await shared.store.record(outcomes, worker: shared.configuration.workerID, on: connection)
            await connection.close()
        }
    }
}

extension QueueWorker {
    /// A poll-only worker says it stopped, so it is listed as gone at once; with a session of its
    /// own, the session's end says so.
    fileprivate func leavePresence() async {
        guard shared.configuration.pollOnly else { return }
        let connection = shared.connect(queryTimeout: .seconds(5))
        do {
            try await shared.store.leavePresence(worker: shared.configuration.workerID, instance: shared.instance, on: connection)
        } catch {
            shared.metrics.databaseError(operation: "presence")
        }
        await connection.close()
    }
}

/// One UPDATE per interval renews the leases of every job this process holds, and tells which
/// jobs were lost or asked to cancel. It also keeps the worker present: a presence lock on its
/// session, or in poll-only mode a touch of its presence row every second.
struct Heartbeat: Sendable {
    let shared: WorkerShared
    let database: ReconnectingConnection

    init(shared: WorkerShared) {
        self.shared = shared
        // A renewal that gets no answer is given up after one heartbeat interval, not the usual
        // 30 s: on a link that died without a word, the leases (30 s by default) would run out
        // while it waited, and the jobs would be rescued and run again though this worker lives.
        database = shared.connect(queryTimeout: min(.seconds(30), shared.configuration.effectiveHeartbeat))
    }

    func run(_ activity: PartActivity) async {
        defer { Task { [database] in await database.close() } }
        let interval = shared.configuration.effectiveHeartbeat
        var nextBeat = ContinuousClock.now + interval
        var presentOn: PostgresConnection?
        var presenceFailing = false
        // Another process with this worker id would hold its own jobs under the same name: the
        // strays are looked for only while this session holds the id's presence lock.
        var holdsPresence = false
        var renewUntil = ContinuousClock.now
        var suspects: [Int64: Int] = [:]
        var nextStrayLook = ContinuousClock.now + interval
        var nextTouch = ContinuousClock.now
        var cutsSeen: Int64?
        while !Task.isCancelled {
            activity.at("waiting for the next check", bound: min(interval, Self.presenceCheck))
            await shared.ledger.recheckRequested.wait(timeout: min(interval, Self.presenceCheck))
            if Task.isCancelled { return }
            if shared.configuration.pollOnly, ContinuousClock.now >= nextTouch {
                nextTouch = .now + Self.touchInterval
                activity.at("touching its presence row", bound: database.longestCall)
                switch await touchPresence(sayFailure: !presenceFailing, sayTaken: holdsPresence || cutsSeen == nil) {
                case .failed:
                    presenceFailing = true
                case .taken:
                    presenceFailing = false
                    holdsPresence = false
                    cutsSeen = -1
                case .held(let cuts):
                    presenceFailing = false
                    holdsPresence = true
                    // A rescuer took this worker for gone (it could not touch its row for a
                    // while) and cut its leases: renewed now, and at every check for one grace,
                    // as after a new session below.
                    if let seen = cutsSeen, cuts > seen {
                        nextBeat = .now
                        renewUntil = .now + shared.configuration.orphanGrace
                    }
                    cutsSeen = cuts
                }
            }
            if !shared.configuration.pollOnly { activity.at("connecting", bound: database.longestCall) }
            if !shared.configuration.pollOnly, let connection = try? await database.connection(), connection !== presentOn {
                // A new session (the first, or after the database came back): it takes the
                // presence lock, and leases a rescuer cut meanwhile are renewed at once.
                activity.at("taking its presence lock", bound: database.longestCall)
                let held = await announcePresence(sayFailure: !presenceFailing)
                presenceFailing = held == nil
                holdsPresence = held ?? false
                if held != nil {
                    presentOn = connection
                    nextBeat = .now
                    // A rescuer whose statement began before the lock was taken still sees this
                    // worker as gone and may cut its leases after that first renewal (seen once
                    // under a full test run's load: the lease ran out 3 s later). Renewing at
                    // every presence check for one orphan grace undoes such a late cut.
                    renewUntil = .now + shared.configuration.orphanGrace
                }
            }
            if shared.ledger.takeRecheck() || ContinuousClock.now < renewUntil { nextBeat = .now }
            if ContinuousClock.now >= nextBeat {
                activity.at("renewing leases", bound: database.longestCall)
                await beat()
                nextBeat = ContinuousClock.now + interval
            }
            if ContinuousClock.now >= nextStrayLook {
                nextStrayLook = ContinuousClock.now + interval
                let window = shared.configuration.leaseDuration + interval * 2
                if holdsPresence, shared.ledger.hadUnansweredClaim(within: window) {
                    activity.at("looking for claims whose answer never came", bound: database.longestCall)
                    suspects = await releaseStrays(suspects)
                } else {
                    suspects = [:]
                }
            }
        }
    }

    /// One look for jobs claimed under this worker's name whose claim's answer never came (see
    /// `JobStore.releaseStrayClaims`): the ones seen at the last look too have their leases cut,
    /// so they run again within moments rather than when their leases run out. Returns the
    /// jobs suspected now.
    func releaseStrays(_ suspects: [Int64: Int]) async -> [Int64: Int] {
        do {
            let found = try await shared.store.releaseStrayClaims(
                worker: shared.configuration.workerID, held: shared.ledger.held().map(\.id), suspects: suspects,
                minimumAge: max(shared.configuration.effectiveHeartbeat, .seconds(5)), on: database)
            for id in found.cut {
                shared.logger.warning("job \(id) was claimed under this worker's name but its claim's answer never came; its lease is cut so that it runs again",
                                      metadata: ["job_id": "\(id)"])
            }
            return found.strays
        } catch {
            shared.metrics.databaseError(operation: "heartbeat")
            return suspects
        }
    }

    /// How often the heartbeat looks whether its session is still the one holding the presence lock.
    static let presenceCheck: Duration = .milliseconds(500)

    /// How often a poll-only worker touches its presence row.
    static let touchInterval: Duration = .seconds(1)

    /// How long a poll-only worker may go unseen before rescuers take it for gone: its orphan
    /// grace, but at least three touches, so one slow touch is not a death.
    static func goneAfter(_ configuration: WorkerConfiguration) -> Duration {
        max(configuration.orphanGrace, touchInterval * 3)
    }

    enum PresenceTouch { case held(cuts: Int64), taken, failed }

    /// Touches a poll-only worker's presence row (see `JobStore.touchPresence`).
    func touchPresence(sayFailure: Bool, sayTaken: Bool) async -> PresenceTouch {
        let worker = shared.configuration.workerID
        do {
            guard let cuts = try await shared.store.touchPresence(
                worker: worker, instance: shared.instance, queues: shared.configuration.queues.map(\.name),
                goneAfter: Self.goneAfter(shared.configuration), on: database)
            else {
                if sayTaken {
                    shared.logger.warning("""
                        another live process has the worker id \(worker) (two processes with one --worker-id?); \
                        this worker's jobs are rescued only when their leases run out
                        """)
                }
                return .taken
            }
            return .held(cuts: cuts)
        } catch {
            if sayFailure {
                shared.logger.warning("cannot touch this worker's presence row; if it dies, its jobs wait out their leases (run 'locod migrate' if the database is older than this worker)",
                                      metadata: ["error": "\(shared.databaseURL.describe(error))"])
            }
            shared.metrics.databaseError(operation: "presence")
            return .failed
        }
    }

    /// Whether this session holds the presence lock; nil if the statement failed, and the next
    /// check tries again.
    func announcePresence(sayFailure: Bool) async -> Bool? {
        let worker = shared.configuration.workerID
        do {
            let held = try await shared.store.announcePresence(worker: worker, queues: shared.configuration.queues.map(\.name), on: database)
            if !held {
                shared.logger.warning("""
                    another database session holds the presence lock of worker id \(worker) (two processes with one --worker-id?); \
                    this worker's jobs are rescued only when their leases run out
                    """)
            }
            return held
        } catch {
            // Every 0.5 s while it fails (a database without the presence table, not migrated
            // yet): said once, then counted.
            if sayFailure {
                shared.logger.warning("cannot take this worker's presence lock; if it dies, its jobs wait out their leases (run 'locod migrate' if the database is older than this worker)",
                                      metadata: ["error": "\(shared.databaseURL.describe(error))"])
            }
            shared.metrics.databaseError(operation: "presence")
            return nil
        }
    }

    func beat() async {
        let held = shared.ledger.held()
        guard !held.isEmpty else { return }
        do {
            let alive = try await shared.store.heartbeat(held.map { ($0.id, $0.attempt) }, worker: shared.configuration.workerID,
                                                         lease: shared.configuration.leaseDuration, on: database)
            for job in held {
                switch alive[job.id] {
                case nil: shared.ledger.stop(job.id, run: job.run, reason: .leaseLost)
                case .renewed(cancelRequested: true)?: shared.ledger.stop(job.id, run: job.run, reason: .cancelRequested)
                case .renewed(cancelRequested: false)?, .busy?: break
                }
            }
        } catch {
            shared.metrics.databaseError(operation: "heartbeat")
            shared.logger.warning("heartbeat failed; leases run out unless the next one succeeds",
                                  metadata: ["error": "\(shared.databaseURL.describe(error))"])
        }
    }
}

/// LISTENs on the queue channel with one dedicated connection: a queue name wakes that pool; a
/// `cancel:<id>` payload stops the handler at once. Reconnects by itself; while it is down the
/// pools keep polling.
final class NotificationListener: Sendable {
    let shared: WorkerShared
    let pools: [String: WorkerPool]
    /// The open connection, and whether the worker is shutting down.
    private let current = Mutex<(connection: PostgresConnection?, closed: Bool)>((nil, false))

    init(shared: WorkerShared, pools: [String: WorkerPool]) {
        self.shared = shared
        self.pools = pools
    }

    /// Ends `run()`: no reconnecting, and the connection it listens on is closed.
    func shutdown() async {
        let connection = current.withLock { state -> PostgresConnection? in
            state.closed = true
            defer { state.connection = nil }
            return state.connection
        }
        try? await connection?.close()
    }

    func run(_ activity: PartActivity) async {
        var failures = 0
        while !Task.isCancelled && !current.withLock({ $0.closed }) {
            activity.at("connecting", bound: Self.connectDeadline)
            do {
                // Under the same deadline as every other part's connect (PostgresNIO's connect was
                // seen to ignore cancellation while the server restarted).
                let connection = try await ReconnectingConnection.deadline(Self.connectDeadline, late: { try? await $0.close() }) { [shared] in
                    try await shared.databaseURL.connecting { try await PostgresConnection.connect(configuration: $0, id: 0, logger: shared.logger) }
                }
                let open = current.withLock { state -> Bool in
                    if !state.closed { state.connection = connection }
                    return !state.closed
                }
                guard open else {
                    try? await connection.close()
                    return
                }
                activity.at("starting to listen", bound: Self.connectDeadline)
                // PostgresNIO gives LISTEN no deadline: one that got no answer kept the worker
                // without wake-ups for good, polling only. Unanswered in time, its connection is closed.
                let answered = OneShotEvent()
                let unanswered = Task { () -> Bool in
                    guard !(await answered.wait(upTo: Self.connectDeadline)), !Task.isCancelled else { return false }
                    try? await connection.close()
                    return true
                }
                defer { unanswered.cancel() }
                do {
                    try await connection.listen(on: JobStore.channel) { notifications in
                        answered.set()
                        activity.at("listening for notifications", bound: nil)
                        if failures > 0 { shared.logger.info("listening for job notifications again") }
                        failures = 0
                        shared.listening.set()
                        // Anything enqueued while we were not listening must not wait for the poll.
                        for pool in pools.values { pool.wake.signal() }
                        let check = Task { await self.closeIfSilent(connection) }
                        defer { check.cancel() }
                        for try await notification in notifications {
                            // Notifications keep coming after a cancel; they must not keep this alive.
                            if Task.isCancelled || current.withLock({ $0.closed }) { break }
                            handle(notification.payload)
                        }
                    }
                } catch {
                    try? await connection.close()
                    unanswered.cancel()
                    if await unanswered.value {
                        throw QueueError.databaseUnreachable(endpoint: shared.databaseURL.endpoint,
                                                             reason: "LISTEN got no answer within \(Self.connectDeadline.spoken); reconnecting")
                    }
                    throw error
                }
                try? await connection.close()
            } catch {
                if Task.isCancelled || current.withLock({ $0.closed }) { return }
                failures += 1
                if failures == 1 || failures % 30 == 0 {
                    shared.logger.warning("job notifications unavailable; polling meanwhile",
                                          metadata: ["error": "\(shared.databaseURL.describe(error))"])
                }
                activity.at("pausing before reconnecting", bound: .milliseconds(min(100 * failures, 2000)))
                try? await Task.sleep(for: .milliseconds(min(100 * failures, 2000)))
            }
        }
    }

    /// How long the listener waits for a connection, as every other part does.
    static let connectDeadline: Duration = .seconds(5)

    /// Until cancelled, asks `connection` a `SELECT 1` every `listenerCheckInterval`; closes it
    /// (which ends its notification stream with an error, so `run` reconnects) if no answer
    /// comes in time.
    private func closeIfSilent(_ connection: PostgresConnection) async {
        let interval = shared.configuration.listenerCheckInterval
        let limit = min(interval, .seconds(10))
        while (try? await Task.sleep(for: interval)) != nil {
            do {
                try await ReconnectingConnection.deadline(limit) {
                    for try await _ in try await connection.run("SELECT 1", logger: self.shared.logger) {}
                }
            } catch {
                if Task.isCancelled || connection.isClosed { return }
                shared.metrics.databaseError(operation: "listener_check")
                shared.logger.warning("the connection for job notifications did not answer a check within \(limit.spoken); replacing it",
                                      metadata: ["error": "\(shared.databaseURL.describe(error))"])
                try? await connection.close()
                return
            }
        }
    }

    private func handle(_ payload: String) {
        if payload.hasPrefix("cancel:") {
            if let id = Int64(payload.dropFirst("cancel:".count)), shared.ledger.requestCancel(id) {
                shared.logger.info("job \(id) cancelled while running")
            }
        } else if payload.hasPrefix("scale:") {
            shared.scalesChanged.signal()
        } else {
            pools[payload]?.wake.signal()
        }
    }
}
