import Logging

/// Applies the scales operators set ('locod queue scale') to this process's pools: once before
/// the pools start, then whenever a `scale:<queue>` notification arrives, and every
/// `scaleCheckInterval` for a worker that missed one (or polls only).
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

    func run() async {
        var failing = false
        while !Task.isCancelled {
            await shared.scalesChanged.wait(timeout: shared.configuration.scaleCheckInterval.jittered())
            if Task.isCancelled { return }
            failing = !(await apply(sayFailure: !failing))
        }
    }

    /// Reads the scales and sets each pool's limit; false if they could not be read (the
    /// pools keep their limits).
    @discardableResult
    func apply(sayFailure: Bool = true) async -> Bool {
        let scales: [String: QueueScale]
        do {
            scales = try await shared.store.scales(of: shared.configuration.workerID, on: database)
        } catch {
            shared.metrics.databaseError(operation: "scales")
            if sayFailure {
                shared.logger.warning("cannot read queue scales; the pools keep their concurrency (run 'locod migrate' if the database is older than this worker)",
                                      metadata: ["error": "\(shared.databaseURL.describe(error))"])
            }
            return false
        }
        for pool in pools.values.sorted(by: { $0.queue < $1.queue }) {
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
