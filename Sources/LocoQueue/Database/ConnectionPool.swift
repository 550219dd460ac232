import Logging
import PostgresNIO
import Synchronization

/// A few `ReconnectingConnection`s shared by one process's short-lived work (CLI commands,
/// tests, the metrics endpoint). Queries go to the least busy connection (PostgresNIO queues
/// queries per connection); a transaction holds one connection to itself.
///
/// Used instead of PostgresNIO's `PostgresClient`, whose pool was seen to wait forever for a
/// connection that never finished connecting (after a server restart, and under load).
public final class ConnectionPool: QueryRunner, TransactionRunner, Sendable {
    private struct Slot {
        let connection: ReconnectingConnection
        var users = 0
        var exclusive = false
    }

    private let slots: Mutex<(slots: [Slot], waiters: [CheckedContinuation<Void, Never>])>
    let logger: Logger

    public init(url: DatabaseURL, size: Int = 4, logger: Logger, queryTimeout: Duration = .seconds(30)) {
        self.logger = logger
        let connections = (0..<max(1, size)).map { _ in
            Slot(connection: ReconnectingConnection(url: url, logger: logger, queryTimeout: queryTimeout))
        }
        slots = Mutex((connections, []))
    }

    public func run(_ query: PostgresQuery, logger: Logger) async throws -> PostgresRowSequence {
        try await shared { try await $0.run(query, logger: logger) }
    }

    public func prepared<Statement: PostgresPreparedStatement>(_ statement: Statement, logger: Logger) async throws -> [Statement.Row]
        where Statement.Row: Sendable {
        try await shared { try await $0.prepared(statement, logger: logger) }
    }

    public func insertJob(_ job: NewJob, logger: Logger) async throws -> (id: Int64, state: String)? {
        try await shared { try await $0.insertJob(job, logger: logger) }
    }

    public var wakesQueuesAfterCommit: Bool { true }

    public func wakeUp(_ queues: [String], logger: Logger) async {
        await shared { await $0.wakeUp(queues, logger: logger) }
    }

    /// Runs a query on the pool with its own logger; for callers that do not carry one.
    public func query(_ query: PostgresQuery) async throws -> PostgresRowSequence {
        try await run(query, logger: logger)
    }

    public func transaction<T: Sendable>(timeLimit: Duration?, _ body: (PostgresConnection) async throws -> T) async throws -> T {
        let index = await acquireExclusive()
        defer { release(index, exclusive: true) }
        let connection = slots.withLock { $0.slots[index].connection }
        return try await connection.transaction(timeLimit: timeLimit, body)
    }

    public func close() async {
        let connections = slots.withLock { $0.slots.map(\.connection) }
        for connection in connections { await connection.close() }
    }

    /// Waits for a connection (it cannot fail: it waits until one is free) and runs `body` on it.
    private func shared<T>(_ body: (ReconnectingConnection) async throws -> T) async rethrows -> T {
        let index = await acquire(exclusive: false) { slots in
            slots.indices.filter { !slots[$0].exclusive }.min { slots[$0].users < slots[$1].users }
        }
        defer { release(index, exclusive: false) }
        return try await body(slots.withLock { $0.slots[index].connection })
    }

    private func acquireExclusive() async -> Int {
        await acquire(exclusive: true) { slots in slots.indices.first { !slots[$0].exclusive && slots[$0].users == 0 } }
    }

    /// Waits until `pick` finds a slot, then takes it.
    private func acquire(exclusive: Bool, _ pick: @escaping @Sendable ([Slot]) -> Int?) async -> Int {
        while true {
            var taken: Int?
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let ready = slots.withLock { state -> Bool in
                    guard let index = pick(state.slots) else {
                        state.waiters.append(continuation)
                        return false
                    }
                    state.slots[index].users += 1
                    state.slots[index].exclusive = exclusive
                    taken = index
                    return true
                }
                if ready { continuation.resume() }
            }
            if let taken {
                return taken
            }
        }
    }

    private func release(_ index: Int, exclusive: Bool) {
        let waiters = slots.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.slots[index].users -= 1
            if exclusive { state.slots[index].exclusive = false }
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters { waiter.resume() }
    }
}
