import Foundation

/// How a worker process runs: which queues at what concurrency, and the timings of its leases,
/// polling and maintenance.
public struct WorkerConfiguration: Sendable {
    public struct QueueSlot: Sendable, Equatable {
        public var name: String
        public var concurrency: Int
        public init(name: String, concurrency: Int) {
            self.name = name
            self.concurrency = concurrency
        }
    }

    /// Unique per process; written to `locked_by` of the jobs it holds.
    public var workerID: String
    public var queues: [QueueSlot]
    /// How long a claimed job stays ours without a heartbeat.
    public var leaseDuration: Duration = .seconds(30)
    /// Defaults to a third of the lease.
    public var heartbeatInterval: Duration?
    /// Fallback poll when no notification arrives (jittered ±20%).
    public var pollInterval: Duration = .seconds(1)
    /// No LISTEN/NOTIFY, prepared statements or session settings: for connection poolers in
    /// transaction mode (PgBouncer). A database URL marked `pgbouncer=true` implies it.
    public var pollOnly = false
    /// How often the listening connection is asked a `SELECT 1`; with no answer within this
    /// long (at most 10 s) it is closed and replaced. A link that died without a word (a host
    /// gone, a firewall or NAT that forgot the flow) ends no notification stream, and every
    /// wake-up would otherwise wait for the poll for as long as the process runs.
    public var listenerCheckInterval: Duration = .seconds(30)
    public var maxClaimBatch = 100
    /// How long a pool more than half busy, on a queue with more jobs waiting, lets slots free
    /// up before its next claim, so one claim takes several jobs; zero claims at once.
    public var claimGather: Duration = .microseconds(250)
    public var retry = RetryPolicy()
    /// How long a handler may run before it is cancelled and its attempt fails as retryable
    /// `job_timeout`; nil for no limit. A kind registered with a timeout of its own uses that.
    public var jobTimeout: Duration?
    /// On shutdown, how long running jobs may take to finish before they are stopped and released.
    public var gracePeriod: Duration = .seconds(30)
    /// Rescuer, scheduler, pruner and periodic jobs; any number of processes may run them.
    public var runMaintenance = true
    /// How often to look for expired leases and dead workers (jittered ±20%).
    public var rescueInterval: Duration = .seconds(2)
    /// A job whose worker's database session has ended (the process died) keeps its lease only
    /// this much longer, rather than all of it; a worker that merely lost the database and
    /// comes back within it renews its leases as it does. A poll-only worker, whose pooled
    /// sessions say nothing about it, is taken for gone once its presence row went unseen this
    /// long (at least 3 s); its leases are then cut to this.
    public var orphanGrace: Duration = .seconds(5)
    /// How often the worker reads the queue scales without being notified of a change.
    public var scaleCheckInterval: Duration = Self.defaultScaleCheckInterval
    public static let defaultScaleCheckInterval: Duration = .seconds(5)
    public var promoteInterval: Duration = .milliseconds(500)
    public var pruneInterval: Duration = .seconds(60)
    /// How long finished jobs are kept, by how they ended.
    public var retention = Retention()
    public var periodicJobs: [PeriodicJob] = []

    /// The concurrency a pool may have.
    public static let concurrencyRange = 1...10_000

    public init(queues: [QueueSlot], workerID: String = WorkerConfiguration.defaultWorkerID()) {
        self.queues = queues
        self.workerID = workerID
    }

    public static func defaultWorkerID() -> String {
        let host = ProcessInfo.processInfo.hostName.split(separator: ".").first.map(String.init) ?? "host"
        let suffix = String(UInt32.random(in: 0...UInt32.max), radix: 36)
        return "\(host)-\(ProcessInfo.processInfo.processIdentifier)-\(suffix)"
    }

    var effectiveHeartbeat: Duration { heartbeatInterval ?? leaseDuration / 3 }

    func validate() throws(QueueError) {
        guard !queues.isEmpty else { throw .invalidWorkerConfiguration(reason: "a worker needs at least one queue") }
        // It is written to every job the worker holds and shown by 'locod queue workers'; an
        // empty one names no worker, and PostgreSQL's text cannot hold a NUL character.
        guard (1...200).contains(workerID.count), !workerID.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) else {
            throw .invalidWorkerConfiguration(reason: "the worker id must be 1 to 200 characters, none of them control characters (got '\(Storable.text(String(workerID.prefix(200))))')")
        }
        // Two pools on one queue would each take the whole concurrency and report under one name.
        var named = Set<String>()
        for slot in queues where !named.insert(slot.name).inserted {
            throw .invalidWorkerConfiguration(reason: "queue '\(slot.name)' is named twice; a worker runs one pool per queue, so name it once with its whole concurrency")
        }
        for slot in queues {
            try Names.checkQueue(slot.name)
            let range = Self.concurrencyRange
            guard range.contains(slot.concurrency) else {
                throw .invalidWorkerConfiguration(reason: "concurrency of queue '\(slot.name)' must be between \(range.lowerBound) and \(range.upperBound) (got \(slot.concurrency))")
            }
        }
        guard claimGather >= .zero && claimGather <= .seconds(1) else {
            throw .invalidWorkerConfiguration(reason: "the claim gather time must be from 0 to 1 second (got \(claimGather))")
        }
        guard orphanGrace >= .seconds(1) else {
            throw .invalidWorkerConfiguration(reason: "the orphan grace must be at least 1 second (got \(orphanGrace)): a worker that reconnects after a database restart needs that long to renew its leases")
        }
        guard scaleCheckInterval >= .milliseconds(100) else {
            throw .invalidWorkerConfiguration(reason: "the scale check interval must be at least 100 ms (got \(scaleCheckInterval))")
        }
        guard listenerCheckInterval >= .milliseconds(100) else {
            throw .invalidWorkerConfiguration(reason: "the listener check interval must be at least 100 ms (got \(listenerCheckInterval.spoken))")
        }
        guard leaseDuration >= .seconds(1) else { throw .invalidWorkerConfiguration(reason: "the lease must be at least 1 second") }
        if let jobTimeout, jobTimeout <= .zero {
            throw .invalidWorkerConfiguration(reason: "the job timeout must be positive (got \(jobTimeout)); leave it unset for no limit")
        }
        guard effectiveHeartbeat < leaseDuration else { throw .invalidWorkerConfiguration(reason: "the heartbeat interval must be shorter than the lease") }
    }
}

/// How long finished jobs stay before the pruner deletes them, by how they ended. River's
/// defaults: a day for completed and cancelled jobs, a week for failed ones, which are the ones
/// someone comes back to read. A week of every completed job was millions of rows on a busy
/// queue, each one in the way of the table's scans and its autovacuum.
public struct Retention: Sendable, Equatable {
    public var completed: Duration
    public var cancelled: Duration
    public var failed: Duration

    public init(completed: Duration = .seconds(24 * 3600), cancelled: Duration = .seconds(24 * 3600),
                failed: Duration = .seconds(7 * 24 * 3600)) {
        self.completed = completed
        self.cancelled = cancelled
        self.failed = failed
    }

    /// The same period for every finished state.
    public init(all period: Duration) {
        self.init(completed: period, cancelled: period, failed: period)
    }

    var byState: [(state: JobState, period: Duration)] {
        [(.completed, completed), (.cancelled, cancelled), (.failed, failed)]
    }
}
