import Logging

/// Applies the scales and limits operators set ('locod queue scale', 'locod queue limit') to
/// this process's pools: once as the worker starts, then whenever a `scale:<queue>`
/// notification arrives, and every `scaleCheckInterval` for a worker that missed one (or
/// polls only).
struct ScaleWatcher: Sendable {
    let shared: WorkerShared
    let pools: [String: WorkerPool]
    private let database: ReconnectingConnection

    init(shared: WorkerShared, pools: [String: WorkerPool]) {
        self.shared = shared
        self.pools = pools
        database = shared.connect(queryTimeout: .seconds(5))
    }

    func close() async { await database.close() }

    func run(_ activity: PartActivity) async {
        // Two statements, each within the connection's deadlines.
        activity.at("reading the queue scales", bound: database.longestCall * 2)
        var failing = !(await apply())
        shared.scalesRead.set()
        while !Task.isCancelled {
            let wait = shared.configuration.scaleCheckInterval.jittered()
            activity.at("waiting for a scale change", bound: wait)
            await shared.scalesChanged.wait(timeout: wait)
            if Task.isCancelled { return }
            activity.at("reading the queue scales", bound: database.longestCall * 2)
            failing = !(await apply(sayFailure: !failing))
        }
    }

    /// Reads the scales and limits and sets each pool's; false if they could not be read (the
    /// pools keep what they had).
    @discardableResult
    func apply(sayFailure: Bool = true) async -> Bool {
        let scales: [String: QueueScale]
        let limits: [String: QueueLimit]
        do {
            scales = try await shared.store.scales(of: shared.configuration.workerID, on: database)
            limits = Dictionary(uniqueKeysWithValues: try await shared.store.queueLimits(on: database).map { ($0.queue, $0) })
        } catch {
            shared.metrics.databaseError(operation: "scales")
            if sayFailure {
                shared.logger.warning("cannot read queue scales; the pools keep their concurrency (run 'locod migrate' if the database is older than this worker)",
                                      metadata: ["error": "\(shared.databaseURL.describe(error))"])
            }
            return false
        }
        for pool in pools.values.sorted(by: { $0.queue < $1.queue }) {
            let limit = limits[pool.queue]
            if limit?.limit != pool.globalLimit {
                pool.setGlobalLimit(limit?.limit)
                if let limit {
                    shared.logger.notice("queue \(pool.queue): at most \(limit.limit) of its jobs run at once across all workers",
                                         metadata: ["queue": "\(pool.queue)", "changed_by": "\(limit.changedBy ?? "-")"])
                } else {
                    shared.logger.notice("queue \(pool.queue): no limit across workers any more", metadata: ["queue": "\(pool.queue)"])
                }
            }
            let scale = scales[pool.queue]
            let target = scale?.concurrency ?? pool.declaredConcurrency
            guard target != pool.concurrency else { continue }
            let before = pool.rescale(to: target)
            if let scale {
                shared.logger.notice("queue \(pool.queue) scaled to \(target) (was \(before)) \(scale.worker == nil ? "on every worker" : "on this worker")",
                                     metadata: ["queue": "\(pool.queue)", "changed_by": "\(scale.changedBy ?? "-")"])
            } else {
                shared.logger.notice("queue \(pool.queue) is back to its --concurrency \(target) (was \(before))", metadata: ["queue": "\(pool.queue)"])
            }
        }
        return true
    }
}
