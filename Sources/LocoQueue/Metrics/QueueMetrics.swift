import Foundation
import Prometheus
import Synchronization

/// The queue's Prometheus metrics. Counters and histograms are per process; depth and the
/// oldest job's age are read from the database at scrape time (`update(from:)`).
public final class QueueMetrics: Sendable {
    public let registry: PrometheusCollectorRegistry

    static let latencyBuckets: [Duration] = [
        .microseconds(500), .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10),
        .milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500),
        .seconds(1), .seconds(5), .seconds(30), .seconds(120), .seconds(600),
    ]

    private static func name(_ metric: String, _ unit: String, _ help: String) -> MetricNameDescriptor {
        MetricNameDescriptor(namespace: "loco", subsystem: "queue", metricName: metric, unitName: unit, helpText: help)
    }

    static var started: MetricNameDescriptor { name("jobs_started", "total", "Jobs claimed and started by this process.") }
    static var startLag: MetricNameDescriptor { name("start_lag", "seconds", "Time from a job becoming runnable to its handler starting.") }
    static var runTime: MetricNameDescriptor { name("run", "seconds", "Handler run time.") }
    static var dropped: MetricNameDescriptor { name("results_dropped", "total", "Job results dropped because this worker had lost the lease.") }
    static var rescued: MetricNameDescriptor { name("jobs_rescued", "total", "Jobs returned to the queue after their worker's lease expired.") }
    static var timedOut: MetricNameDescriptor { name("jobs_timed_out", "total", "Handlers cancelled because they ran past their job timeout.") }
    static var databaseErrors: MetricNameDescriptor { name("database_errors", "total", "Failed queue statements, by operation.") }
    static var depth: MetricNameDescriptor { name("depth", "", "Live jobs (blocked, scheduled, available, running) by queue and state, read from the database at scrape time.") }
    static var oldest: MetricNameDescriptor { name("oldest_available_age", "seconds", "Age of the oldest available job per queue.") }
    static var paused: MetricNameDescriptor { name("paused", "", "1 while the queue is paused (locod queue pause), else 0.") }
    static var cronLastSlot: MetricNameDescriptor { name("cron_last_slot", "timestamp_seconds", "Unix time of the newest slot of each periodic job that a scheduler or locod cron enqueued.") }
    static var globalLimit: MetricNameDescriptor { name("global_limit", "", "How many of the queue's jobs may run at once across all workers (locod queue limit); 0 for no limit.") }
    static var concurrency: MetricNameDescriptor { name("concurrency", "", "How many jobs of the queue this process runs at once: its --concurrency, or the scale an operator set (locod queue scale).") }
    static var stalledParts: MetricNameDescriptor { name("stalled_parts", "", "Parts of this worker (producers, completer, heartbeat, listener, maintenance loops) waiting past the longest their step can take; the worker's log names them. 0 when healthy.") }
    static var notificationQueue: MetricNameDescriptor { name("notification_queue_usage", "ratio", "How full PostgreSQL's NOTIFY queue is (pg_notification_queue_usage()), read from the database at scrape time. At 1, every NOTIFY is refused: workers find the jobs of single enqueues and of Loco's transactions only when they poll, and batches outside a transaction fail. A session that LISTENs inside a long transaction fills it.") }
    static var cronPaused: MetricNameDescriptor { name("cron_paused", "", "1 while the periodic job is paused (locod cron pause), else 0.") }
    static var outcomes: [JobState: MetricNameDescriptor] { [
        .completed: name("jobs_completed", "total", "Jobs completed."),
        .failed: name("jobs_failed", "total", "Jobs that failed for good."),
        .cancelled: name("jobs_cancelled", "total", "Jobs cancelled while running."),
        .scheduled: name("jobs_retried", "total", "Failed attempts scheduled to run again (retries and snoozes)."),
        .available: name("jobs_released", "total", "Jobs given back to the queue at shutdown."),
    ] }

    /// The metric objects already made, by name and label values. The registry checks a metric's
    /// name and help text on every `make…` call: at 8,000 jobs/s that was about 6% of a
    /// worker's CPU (perf), for counters it had made long before.
    private struct MadeKey: Hashable {
        var name: String
        var labels: [String]
    }
    private let counters = Mutex<[MadeKey: Counter]>([:])
    private let histograms = Mutex<[MadeKey: DurationHistogram]>([:])
    /// Queues whose depth gauges have been set, so one that empties is set to zero.
    private let knownQueues = Mutex<Set<String>>([])

    public init(registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry()) {
        self.registry = registry
    }

    /// nil when `descriptor` has none (a state without an outcome counter).
    private func counter(_ name: String, _ labels: [(String, String)], _ descriptor: () -> MetricNameDescriptor?) -> Counter? {
        let key = MadeKey(name: name, labels: labels.map(\.1))
        if let made = counters.withLock({ $0[key] }) { return made }
        guard let descriptor = descriptor() else { return nil }
        // The registry hands back the same counter for the same name and labels, so two callers
        // racing here store the same object.
        let made = registry.makeCounter(descriptor: descriptor, labels: labels)
        counters.withLock { $0[key] = made }
        return made
    }

    private func histogram(_ name: String, _ labels: [(String, String)], _ descriptor: () -> MetricNameDescriptor) -> DurationHistogram {
        let key = MadeKey(name: name, labels: labels.map(\.1))
        if let made = histograms.withLock({ $0[key] }) { return made }
        let made = registry.makeDurationHistogram(descriptor: descriptor(), labels: labels, buckets: Self.latencyBuckets)
        histograms.withLock { $0[key] = made }
        return made
    }

    func started(queue: String, startLag: Duration) {
        counter("started", [("queue", queue)]) { Self.started }?.increment()
        histogram("start_lag", [("queue", queue)]) { Self.startLag }.record(startLag)
    }

    func ran(queue: String, kind: String, duration: Duration) {
        histogram("run", [("queue", queue), ("kind", kind)]) { Self.runTime }.record(duration)
    }

    func finished(queue: String, state: JobState) {
        counter(state.rawValue, [("queue", queue)]) { Self.outcomes[state] }?.increment()
    }

    func resultDropped(queue: String) {
        counter("dropped", [("queue", queue)]) { Self.dropped }?.increment()
    }

    func rescued(queue: String) {
        counter("rescued", [("queue", queue)]) { Self.rescued }?.increment()
    }

    func timedOut(queue: String, kind: String) {
        counter("timed_out", [("queue", queue), ("kind", kind)]) { Self.timedOut }?.increment()
    }

    func concurrency(queue: String, limit: Int) {
        registry.makeGauge(descriptor: Self.concurrency, labels: [("queue", queue)]).set(Double(limit))
    }

    func stalledParts(_ count: Int) {
        registry.makeGauge(descriptor: Self.stalledParts).set(Double(count))
    }

    func databaseError(operation: String) {
        counter("database_errors", [("operation", operation)]) { Self.databaseErrors }?.increment()
    }

    /// Sets the depth gauges from `stats`: every live state of every queue, zeros included. A
    /// queue seen before and missing now (its jobs all finished or pruned) reads 0, not its last
    /// depth. Finished states have no gauge: counting them reads the whole table (see `stats`);
    /// the `jobs_completed`/`jobs_failed` counters say what finishes.
    public func update(from stats: QueueStats) {
        let seen = Set(stats.queues.map(\.name))
        let gone = knownQueues.withLock { known in
            defer { known.formUnion(seen) }
            return known.subtracting(seen)
        }
        for queue in stats.queues + gone.sorted().map({ QueueStats.Queue(name: $0) }) {
            for state in JobState.live {
                registry.makeGauge(descriptor: Self.depth, labels: [("queue", queue.name), ("state", state.rawValue)])
                    .set(Double(queue.depth[state.rawValue] ?? 0))
            }
            registry.makeGauge(descriptor: Self.oldest, labels: [("queue", queue.name)])
                .set(queue.oldestAvailableSeconds ?? 0)
            registry.makeGauge(descriptor: Self.paused, labels: [("queue", queue.name)]).set(queue.pausedAt == nil ? 0.0 : 1.0)
            registry.makeGauge(descriptor: Self.globalLimit, labels: [("queue", queue.name)]).set(Double(queue.globalLimit ?? 0))
        }
    }

    /// Sets the periodic jobs' gauges, read from the database at scrape time: the newest slot
    /// enqueued (so an alert can say "registry-cleanup has not run for 25 hours") and the pause.
    public func updatePeriodic(lastSlots: [String: Date], settings: [String: CronSetting]) {
        for name in Set(lastSlots.keys).union(settings.keys).sorted() {
            if let slot = lastSlots[name] {
                registry.makeGauge(descriptor: Self.cronLastSlot, labels: [("name", name)]).set(slot.timeIntervalSince1970)
            }
            registry.makeGauge(descriptor: Self.cronPaused, labels: [("name", name)]).set(settings[name]?.pausedAt == nil ? 0.0 : 1.0)
        }
    }

    /// Sets the NOTIFY queue's fill (0 to 1), read from the database at scrape time.
    public func updateNotificationQueue(usage: Double) {
        registry.makeGauge(descriptor: Self.notificationQueue).set(usage)
    }

    /// The Prometheus text exposition of everything above.
    public func render() -> String {
        var buffer: [UInt8] = []
        registry.emit(into: &buffer)
        return String(decoding: buffer, as: UTF8.self)
    }
}
