import Logging
import NIOCore
import NIOPosix
import NIOSSL
import PostgresNIO
import Synchronization

/// Something that runs a closure inside one transaction.
public protocol TransactionRunner: Sendable {
    /// Runs `body` in one transaction. If it is still running after `timeLimit`, its connection
    /// is closed: the statement under way fails, the server rolls the transaction back, and the
    /// caller gets `database_unreachable`. nil sets no limit (migrations, which may wait for
    /// another process's).
    func transaction<T: Sendable>(timeLimit: Duration?, _ body: (PostgresConnection) async throws -> T) async throws -> T
}

extension TransactionRunner {
    /// Runs `body` in one transaction of at most `transactionTimeLimit`.
    public func transaction<T: Sendable>(_ body: (PostgresConnection) async throws -> T) async throws -> T {
        try await transaction(timeLimit: transactionTimeLimit, body)
    }
}

/// How long a transaction may run before its connection is closed. Loco's transactions are a few
/// short statements; one that runs this long waits on a server that stopped answering (a
/// network partition, with no TCP keep-alive to notice it) and would otherwise wait forever.
public let transactionTimeLimit: Duration = .seconds(120)

/// One Postgres connection owned by one part of a worker (a producer, the completer, the
/// heartbeat, maintenance), reconnected on demand after any failure.
///
/// Every connect and query has a deadline: a connection that stops answering is closed, which
/// fails what was waiting on it, and the next call reconnects. The worker never waits on a
/// shared pool's recovery (PostgresNIO's pool was seen to leave new connections hanging forever
/// after a server restart).
public final class ReconnectingConnection: QueryRunner, TransactionRunner, Sendable {
    public let url: DatabaseURL
    let logger: Logger
    let connectTimeout: Duration
    let queryTimeout: Duration
    /// False behind a transaction-mode pooler (PgBouncer), where a statement prepared on one
    /// server connection is unknown on the next: the same SQL is then sent unprepared, in
    /// transactions' bodies too.
    let usePreparedStatements: Bool
    /// Settings for every session this opens, made as it connects, so a reconnect gets them too.
    let sessionSettings: [(name: String, value: String)]
    let wakeUps: SingleEnqueueHandler.WakeUpTiming
    private let state = Mutex<Task<PostgresConnection, any Error>?>(nil)
    /// The established connection, so the hot path need not await the connect task again.
    private let ready = Mutex<PostgresConnection?>(nil)
    private let connectionIDs = Atomic<Int>(0)
    /// Queries under way, for the watchdog; cheaper than a timer task per query on the hot path.
    private let inFlight = Mutex<(next: UInt64, queries: [UInt64: InFlightQuery], watchdog: Task<Void, Never>?)>((0, [:], nil))
    /// Connections given up on lately, so a caller never gets one that is still closing. Held,
    /// not named by `ObjectIdentifier`: a freed connection's address is soon a new one's, which
    /// would then pass for dropped and be thrown away unclosed.
    private let dropped = Mutex<[PostgresConnection]>([])
    /// The executor of the connection's event loop, made once per connection.
    private let loopExecutor = Mutex<(connection: PostgresConnection, executor: EventLoopTaskExecutor)?>(nil)
    /// Wake-ups refused after this connection's transactions, or its statements that enqueued,
    /// committed (`WakeUpsAfterCommit`): with a full NOTIFY queue every one of them has one.
    let wakeUpRefusals = RepeatedWarning()
    /// The handler that sends single enqueues itself, in the pipeline of the connection it serves.
    private let singleEnqueues = SingleEnqueueSlot()
    /// Set by `close()`, for good: a part still running as its worker stops (a maintenance loop
    /// mid-statement) must not open a new connection that nobody then closes. One did, and
    /// PostgresNIO's check that a connection is closed before it is freed crashed a debug build.
    private let shutDown = Atomic<Bool>(false)

    private struct InFlightQuery {
        let started: ContinuousClock.Instant
        let limit: Duration
        let connection: PostgresConnection
        /// What the watchdog says as it gives up: "a query", "a transaction".
        let what: String
        let abandon: @Sendable (any Error) -> Void
    }

    public convenience init(url: DatabaseURL, logger: Logger, connectTimeout: Duration = .seconds(5), queryTimeout: Duration = .seconds(30),
                            usePreparedStatements: Bool = true, sessionSettings: [(name: String, value: String)] = []) {
        self.init(url: url, logger: logger, connectTimeout: connectTimeout, queryTimeout: queryTimeout,
                  usePreparedStatements: usePreparedStatements, sessionSettings: sessionSettings, wakeUps: .standard)
    }

    /// `wakeUps`: when single enqueues owe their wake-ups (tests stretch it to see them owed).
    init(url: DatabaseURL, logger: Logger, connectTimeout: Duration, queryTimeout: Duration,
         usePreparedStatements: Bool, sessionSettings: [(name: String, value: String)], wakeUps: SingleEnqueueHandler.WakeUpTiming) {
        self.wakeUps = wakeUps
        // Behind a pooler in transaction mode, a session's statements and settings would stay
        // with whichever server session made them.
        self.usePreparedStatements = usePreparedStatements && !url.transactionPooler
        self.sessionSettings = url.transactionPooler ? [] : sessionSettings
        self.url = url
        self.logger = logger
        self.connectTimeout = connectTimeout
        self.queryTimeout = queryTimeout
    }

    /// Closes what is still open when the owner let go without `close()` (a test that failed
    /// half-way did): PostgresNIO asserts that a connection is closed before it is freed, and
    /// that assertion ended a whole debug test run. The close keeps the connection alive until
    /// it is done.
    deinit {
        let held = [ready.withLock { $0 }, loopExecutor.withLock { $0?.connection },
                    singleEnqueues.connection]
        var seen: [PostgresConnection] = []
        for case let connection? in held where !connection.isClosed && !seen.contains(where: { $0 === connection }) {
            seen.append(connection)
            connection.close().whenComplete { _ in _ = connection }
        }
    }

    /// The longest one call (`run`, `prepared`, `connection`) can take by its deadlines: a connect,
    /// then the statement. A wait longer than this is a bug, which `WorkerParts` reports.
    var longestCall: Duration { connectTimeout + queryTimeout }

    /// The current connection, connecting first if there is none (concurrent callers share one attempt).
    public func connection() async throws -> PostgresConnection {
        if let connection = ready.withLock({ $0 }), !connection.isClosed { return connection }
        if shutDown.load(ordering: .acquiring) { throw url.explain(ConnectionClosed()) }
        let attempt = state.withLock { current -> Task<PostgresConnection, any Error> in
            if let current { return current }
            let id = connectionIDs.wrappingAdd(1, ordering: .relaxed).newValue
            let task = Task { [url, logger, connectTimeout, sessionSettings, wakeUps, singleEnqueues] in
                let (connection, handler) = try await Self.deadline(connectTimeout, late: { opened in try? await opened.0.close() }) {
                    let (connection, handler) = try await Self.open(url, id: id, wakeUps: wakeUps, logger: logger)
                    do {
                        try await Self.apply(sessionSettings, on: connection, logger: logger)
                    } catch {
                        try? await connection.close()
                        throw error
                    }
                    return (connection, handler)
                }
                // Only a connection made in time: one that came late is closed, and must not
                // take the slot from the attempt that replaced it.
                singleEnqueues.set(connection, handler)
                return connection
            }
            current = task
            return task
        }
        do {
            let connection = try await attempt.value
            if shutDown.load(ordering: .acquiring) {
                // close() ran while this connected; it closes what its attempt made, but this
                // may be a newer attempt than the one it saw.
                try? await connection.close()
                throw ConnectionClosed()
            }
            if connection.isClosed || wasDropped(connection) {
                forget(attempt)
                return try await self.connection()
            }
            ready.withLock { $0 = connection }
            return connection
        } catch {
            forget(attempt)
            throw url.explain(error)
        }
    }

    public func run(_ query: PostgresQuery, logger: Logger) async throws -> PostgresRowSequence {
        try await watched { try await $0.run(query, logger: logger) }
    }

    public func prepared<Statement: PostgresPreparedStatement>(_ statement: Statement, logger: Logger) async throws -> [Statement.Row]
        where Statement.Row: Sendable {
        guard usePreparedStatements else { return try await watched { try await $0.unprepared(statement, logger: logger) } }
        return try await watched { try await $0.prepared(statement, logger: logger) }
    }

    /// Runs `body` on the connection while the watchdog may give up on it after `queryTimeout`:
    /// the caller then gets an error, the connection is closed, and the next call reconnects.
    ///
    /// The caller waits for `body` in a task of its own rather than directly, so that it can be
    /// let go: a query sent as the server restarted was seen to wait forever, even after its
    /// connection was closed. A query written to a closed connection does that (see
    /// `PostgresConnection.run`, which now refuses it); the task is the backstop for any other
    /// way a query can be lost. It runs on the connection's own thread, so it adds no thread hop.
    private func watched<T: Sendable>(_ body: @escaping @Sendable (PostgresConnection) async throws -> T) async throws -> T {
        let connection = try await connection()
        let executor = executor(for: connection)
        let work = Mutex<Task<Void, Never>?>(nil)
        // The caller's cancellation still reaches the query, as when it awaited it directly.
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
                let resume = Self.once(continuation)
                let token = track(connection, abandon: { resume(.failure($0)) })
                work.withLock { $0 = Task(executorPreference: executor) {
                    let result: Result<T, any Error>
                    do {
                        result = .success(try await body(connection))
                    } catch {
                        if connection.isClosed || Self.endsSession(error) { self.drop(connection) }
                        result = .failure(error)
                    }
                    self.untrack(token)
                    resume(result)
                } }
            }
        } onCancel: {
            work.withLock { $0?.cancel() }
        }
    }

    /// `watched` for a request answered with a future (a single enqueue, `SingleEnqueueHandler`).
    /// It is written on the connection's own thread, right after checking that the connection is
    /// open, for the reason `PostgresConnection.run` gives; the watchdog and `close()` can still
    /// let the caller go if no answer comes.
    func watched<T: Sendable>(_ connection: PostgresConnection,
                              _ start: @escaping @Sendable () -> EventLoopFuture<T>) async throws -> T {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
            let resume = Self.once(continuation)
            let token = track(connection, abandon: { resume(.failure($0)) })
            let send: @Sendable () -> Void = {
                let finish: @Sendable (Result<T, any Error>) -> Void = { result in
                    self.untrack(token)
                    if case .failure(let error) = result, connection.isClosed || Self.endsSession(error) { self.drop(connection) }
                    resume(result)
                }
                if connection.isClosed { return finish(.failure(ConnectionClosed())) }
                start().whenComplete(finish)
            }
            if connection.eventLoop.inEventLoop { send() } else { connection.eventLoop.execute(send) }
        }
    }

    /// Resumes `continuation` with the first result given; later ones (the answer after the
    /// watchdog gave up, or the other way round) are ignored.
    private static func once<T: Sendable>(_ continuation: CheckedContinuation<T, any Error>) -> @Sendable (Result<T, any Error>) -> Void {
        let waiter = Mutex<CheckedContinuation<T, any Error>?>(continuation)
        return { result in
            waiter.withLock { current in
                current?.resume(with: result)
                current = nil
            }
        }
    }

    /// Lists a query for the watchdog, which calls `abandon` if it runs past `limit` (by default
    /// `queryTimeout`).
    private func track(_ connection: PostgresConnection, limit: Duration? = nil, what: String = "a query",
                       abandon: @escaping @Sendable (any Error) -> Void) -> UInt64 {
        inFlight.withLock { state in
            state.next &+= 1
            state.queries[state.next] = InFlightQuery(started: .now, limit: limit ?? queryTimeout, connection: connection,
                                                      what: what, abandon: abandon)
            if state.watchdog == nil { state.watchdog = startWatchdog() }
            return state.next
        }
    }

    private func untrack(_ token: UInt64) {
        _ = inFlight.withLock { $0.queries.removeValue(forKey: token) }
    }

    /// Whether `error` is one the server ends the session with (FATAL, PANIC): it arrives before
    /// the connection is seen to close, and the next call must not be sent on that connection.
    private static func endsSession(_ error: any Error) -> Bool {
        DatabaseServerError.server(of: error)?.endsSession ?? false
    }

    func executor(for connection: PostgresConnection) -> EventLoopTaskExecutor {
        loopExecutor.withLock { cached in
            if let cached, cached.connection === connection { return cached.executor }
            let executor = EventLoopTaskExecutor(connection.eventLoop)
            cached = (connection, executor)
            return executor
        }
    }

    private func startWatchdog() -> Task<Void, Never> {
        Task { [weak self, queryTimeout] in
            while !Task.isCancelled {
                try? await Task.sleep(for: min(queryTimeout / 4, .seconds(1)))
                guard let self else { return }
                let stuck = self.inFlight.withLock { state -> [InFlightQuery] in
                    let late = state.queries.filter { ContinuousClock.now - $0.value.started > $0.value.limit }
                    for token in late.keys { state.queries.removeValue(forKey: token) }
                    return Array(late.values)
                }
                for query in stuck {
                    self.logger.warning("\(query.what) ran past \(query.limit.spoken); giving up on it and reconnecting")
                    // The connection is retired before the caller is let go, or the caller's
                    // next call could be sent on it and fail as the close lands (a raw
                    // PSQLError in one full test run); it is closed after, so that the caller
                    // hears of the deadline, not of the close.
                    self.drop(query.connection) {
                        query.abandon(QueueError.databaseUnreachable(
                            endpoint: self.url.endpoint, reason: "no answer to \(query.what) within \(query.limit.spoken); reconnecting"))
                    }
                }
            }
        }
    }

    /// Runs `body` in a transaction on this connection; nothing else may use it meanwhile.
    ///
    /// The transaction runs on the connection's thread, so that no statement of it can be sent
    /// after the connection closed (see `PostgresConnection.run`): it fails instead. Past
    /// `timeLimit` the watchdog closes the connection, which fails the statement under way (the
    /// caller cannot be let go as `watched` lets it go: `body` borrows its stack).
    public func transaction<T: Sendable>(timeLimit: Duration?, _ body: (PostgresConnection) async throws -> T) async throws -> T {
        let connection = try await connection()
        let overdue = Mutex<(any Error)?>(nil)
        let token = timeLimit.map { limit in
            track(connection, limit: limit, what: "a transaction") { error in overdue.withLock { $0 = error } }
        }
        defer { if let token { untrack(token) } }
        // Jobs enqueued in the body wake their queues after the commit, not inside it.
        let wakeUps = WakeUpsAfterCommit(for: connection)
        return try await withTaskExecutorPreference(executor(for: connection)) {
            do {
                _ = try await connection.run("BEGIN", logger: logger)
                let result = try await WakeUpsAfterCommit.$current.withValue(wakeUps) {
                    if usePreparedStatements {
                        try await body(connection)
                    } else {
                        try await StatementPreparation.$byName.withValue(false) { try await body(connection) }
                    }
                }
                _ = try await connection.run("COMMIT", logger: logger)
                await wakeUps.send(through: usePreparedStatements ? singleEnqueueHandler(for: connection) : nil,
                                   refusals: wakeUpRefusals, logger: logger)
                return result
            } catch {
                _ = try? await connection.run("ROLLBACK", logger: logger)
                if connection.isClosed { drop(connection) }
                // The watchdog's reason, not the close it caused.
                throw overdue.withLock { $0 } ?? error
            }
        }
    }

    /// Closes the connection, for good: later calls fail with `database_unreachable` ("the
    /// connection was closed") instead of reconnecting. A query still waiting on it afterwards is
    /// one the connection dropped (see `PostgresConnection.run`); its caller is let go with an error.
    public func close() async {
        shutDown.store(true, ordering: .releasing)
        let watchdog = inFlight.withLock { state in
            defer { state.watchdog = nil }
            return state.watchdog
        }
        watchdog?.cancel()
        let attempt = state.withLock { current in
            defer { current = nil }
            return current
        }
        ready.withLock { $0 = nil }
        if let connection = try? await attempt?.value { try? await connection.close() }
        // The connection last used may not be the attempt's (one dropped a moment ago still closing).
        if let cached = loopExecutor.withLock({ $0?.connection }), !cached.isClosed { try? await cached.close() }
        let left = inFlight.withLock { state in
            defer { state.queries = [:] }
            return Array(state.queries.values)
        }
        for query in left {
            query.abandon(QueueError.databaseUnreachable(endpoint: url.endpoint, reason: "the connection was closed"))
        }
    }

    private func forget(_ attempt: Task<PostgresConnection, any Error>) {
        state.withLock { current in
            if current == attempt { current = nil }
        }
        ready.withLock { $0 = nil }
    }

    /// Whether `connection` was given up on; it may not be closed yet (closing takes a moment).
    private func wasDropped(_ connection: PostgresConnection) -> Bool {
        dropped.withLock { $0.contains { $0 === connection } }
    }

    /// Retires `connection`: no later call is sent on it. `beforeClosing` runs once that holds and
    /// before the close starts.
    private func drop(_ connection: PostgresConnection, beforeClosing: () -> Void = {}) {
        dropped.withLock { list in
            list.append(connection)
            if list.count > 8 { list.removeFirst() }
        }
        ready.withLock { if $0 === connection { $0 = nil } }
        beforeClosing()
        let attempt = state.withLock { $0 }
        Task { [weak self] in
            if let attempt, let current = try? await attempt.value, current === connection { self?.forget(attempt) }
            try? await connection.close()
        }
    }

    /// Connects the socket itself and hands it to PostgresNIO for the start-up (TLS, login), so
    /// that `SingleEnqueueHandler` can join its pipeline: PostgresNIO keeps its channel to itself.
    private static func open(_ url: DatabaseURL, id: Int, wakeUps: SingleEnqueueHandler.WakeUpTiming,
                             logger: Logger) async throws -> (PostgresConnection, SingleEnqueueHandler) {
        try await url.connecting { settings in try await open(url, settings, id: id, wakeUps: wakeUps, logger: logger) }
    }

    private static func open(_ url: DatabaseURL, _ settings: PostgresConnection.Configuration, id: Int,
                             wakeUps: SingleEnqueueHandler.WakeUpTiming, logger: Logger) async throws -> (PostgresConnection, SingleEnqueueHandler) {
        let loop = PostgresConnection.defaultEventLoopGroup.any()
        var bootstrap = ClientBootstrap(group: loop).connectTimeout(settings.options.connectTimeout)
        let channel: any Channel
        let busyPoll: BusyPoll?
        if let budget = url.busyPoll {
            // Busy polling needs the socket's descriptor, which NIO keeps to itself when it connects.
            let descriptor = try await NIOThreadPool.singleton.runIfActive {
                try BusyPoll.connect(host: url.host, port: url.port, unixSocketPath: settings.unixSocketPath, timeout: settings.options.connectTimeout)
            }
            // NIO owns the descriptor from here on, and closes it with the channel.
            channel = try await bootstrap.withConnectedSocket(descriptor).get()
            busyPoll = BusyPoll(descriptor: descriptor, budget: budget)
        } else if let path = settings.unixSocketPath {
            busyPoll = nil
            channel = try await bootstrap.connect(unixDomainSocketPath: path).get()
        } else {
            busyPoll = nil
            bootstrap = bootstrap.channelOption(.socketOption(.tcp_nodelay), value: 1)
            channel = try await bootstrap.connect(host: url.host, port: url.port).get()
        }
        var configuration = PostgresConnection.Configuration(establishedChannel: channel, tls: settings.tls, username: settings.username,
                                                             password: settings.password, database: settings.database)
        configuration.options = settings.options
        // PostgresNIO names the server for TLS (SNI, the certificate's check) only when it connects itself.
        if configuration.options.tlsServerName == nil, settings.unixSocketPath == nil, (try? SocketAddress(ipAddress: url.host, port: 0)) == nil {
            configuration.options.tlsServerName = url.host
        }
        let connection: PostgresConnection
        do {
            connection = try await PostgresConnection.connect(on: loop, configuration: configuration, id: id, logger: logger)
        } catch {
            try? await channel.close()
            throw error
        }
        let handler = SingleEnqueueHandler(logger: logger, wakeUps: wakeUps)
        do {
            try await loop.submit {
                let pipeline = channel.pipeline.syncOperations
                if let tls = try? pipeline.handler(type: NIOSSLClientHandler.self) {
                    try pipeline.addHandler(handler, position: .after(tls))
                } else {
                    try pipeline.addHandler(handler, position: .first)
                }
                handler.busyPoll = busyPoll
            }.get()
        } catch {
            try? await connection.close()
            throw error
        }
        return (connection, handler)
    }

    /// The handler for single enqueues in `connection`'s pipeline.
    func singleEnqueueHandler(for connection: PostgresConnection) -> SingleEnqueueHandler? {
        singleEnqueues.handler(for: connection)
    }

    /// How many enqueue answers on the current session busy polling saw arrive (for the tests).
    func answersFoundPolling() async throws -> Int {
        let connection = try await connection()
        guard let handler = singleEnqueueHandler(for: connection) else { return 0 }
        return try await connection.eventLoop.submit { handler.answersFoundPolling }.get()
    }

    struct DeadlineExceeded: Error {}

    /// Makes the session's settings with `set_config`, rather than in the startup message,
    /// which a pooler such as PgBouncer refuses for settings it does not know.
    private static func apply(_ settings: [(name: String, value: String)], on connection: PostgresConnection,
                              logger: Logger) async throws {
        guard !settings.isEmpty else { return }
        var binds = PostgresBindings(capacity: settings.count * 2)
        var calls: [String] = []
        for (index, setting) in settings.enumerated() {
            binds.append(setting.name)
            binds.append(setting.value)
            calls.append("set_config($\(index * 2 + 1), $\(index * 2 + 2), false)")
        }
        let query = PostgresQuery(unsafeSQL: "SELECT " + calls.joined(separator: ", "), binds: binds)
        do {
            for try await _ in try await connection.query(query, logger: logger) {}
        } catch let error as PSQLError where error.code == .server {
            throw QueueError.sessionSettingsRefused(settings: settings.map(\.name), reason: DatabaseServerError.text(of: error))
        }
    }

    /// Runs `operation` but stops waiting for it after `timeout`, abandoning it: a task group
    /// would wait for its child, and PostgresNIO's connect was seen to ignore cancellation
    /// while the server restarts, which hung the caller forever. A result that arrives after
    /// the deadline goes to `late` (to close a connection nobody will use).
    static func deadline<T: Sendable>(_ timeout: Duration, late: @escaping @Sendable (T) async -> Void = { _ in },
                                      _ operation: @escaping @Sendable () async throws -> T) async throws -> T {
        let waiter = Mutex<CheckedContinuation<T, any Error>?>(nil)
        let take: @Sendable () -> CheckedContinuation<T, any Error>? = {
            waiter.withLock { current in
                defer { current = nil }
                return current
            }
        }
        return try await withCheckedThrowingContinuation { continuation in
            waiter.withLock { $0 = continuation }
            let work = Task {
                do {
                    let value = try await operation()
                    if let continuation = take() { continuation.resume(returning: value) } else { await late(value) }
                } catch {
                    take()?.resume(throwing: error)
                }
            }
            Task {
                try? await Task.sleep(for: timeout)
                if let continuation = take() {
                    work.cancel()
                    continuation.resume(throwing: DeadlineExceeded())
                }
            }
        }
    }
}

extension ReconnectingConnection.DeadlineExceeded: CustomStringConvertible {
    var description: String { "the database did not answer in time" }
}
