import Foundation
import Logging
import LocoQueue
import PostgresNIO
import Synchronization

/// Settings that make a test worker react in milliseconds instead of seconds.
public func fastConfiguration(_ queues: [(String, Int)], workerID: String? = nil) -> WorkerConfiguration {
    var configuration = WorkerConfiguration(queues: queues.map { .init(name: $0.0, concurrency: $0.1) })
    if let workerID { configuration.workerID = workerID }
    configuration.pollInterval = .milliseconds(200)
    configuration.promoteInterval = .milliseconds(50)
    configuration.rescueInterval = .milliseconds(100)
    configuration.retry = RetryPolicy(base: .milliseconds(10), cap: .milliseconds(100))
    configuration.gracePeriod = .seconds(5)
    return configuration
}

extension TestDatabase {
    /// Runs a worker against this database (or `url`, a way to it) while `body` runs, then shuts
    /// it down gracefully.
    @discardableResult
    public func withWorker<T: Sendable>(
        _ configuration: WorkerConfiguration,
        handlers: JobHandlers,
        url: DatabaseURL? = nil,
        logger: Logger? = nil,
        _ body: (QueueWorker) async throws -> T
    ) async throws -> T {
        let worker = try QueueWorker(databaseURL: url ?? self.url, handlers: handlers, configuration: configuration, logger: logger ?? self.logger)
        let running = Task { try await worker.run() }
        do {
            let result = try await body(worker)
            worker.stop()
            try await running.value
            return result
        } catch {
            worker.stop()
            _ = try? await running.value
            throw error
        }
    }

    public var store: JobStore { JobStore(logger: logger) }

    public func state(of id: Int64) async throws -> JobState? {
        try await store.job(id: id, on: client)?.state
    }

    /// Waits until job `id` reaches `state`; returns the job as it then is.
    @discardableResult
    public func wait(for id: Int64, toBe state: JobState, timeout: Duration = .seconds(60)) async throws -> JobRecord {
        var last: JobRecord?
        let reached = try await eventually(timeout: timeout) {
            last = try await store.job(id: id, on: client)
            return last?.state == state
        }
        guard reached, let last else {
            throw TestSetupError("job \(id) did not become \(state.rawValue) within \(timeout); it is \(last?.state.rawValue ?? "missing")")
        }
        return last
    }

    public func count(state: JobState, queue: String? = nil) async throws -> Int {
        if let queue {
            return Int(try await scalar("SELECT count(*) FROM loco_jobs WHERE state = \(state.rawValue) AND queue = \(queue)", as: Int64.self))
        }
        return Int(try await scalar("SELECT count(*) FROM loco_jobs WHERE state = \(state.rawValue)", as: Int64.self))
    }
}

/// A thread-safe tally for handlers to record what ran.
public final class Tally<Key: Hashable & Sendable>: Sendable {
    private let counts = Mutex<[Key: Int]>([:])
    private let order = Mutex<[Key]>([])

    public init() {}

    public func record(_ key: Key) {
        counts.withLock { $0[key, default: 0] += 1 }
        order.withLock { $0.append(key) }
    }

    public var snapshot: [Key: Int] { counts.withLock { $0 } }
    public var sequence: [Key] { order.withLock { $0 } }
    public func count(_ key: Key) -> Int { counts.withLock { $0[key] ?? 0 } }
}
