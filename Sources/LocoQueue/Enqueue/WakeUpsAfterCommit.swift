import Logging
import PostgresNIO
import Synchronization

/// The queues to wake once a transaction that Loco runs (`ReconnectingConnection.transaction`,
/// and through it `ConnectionPool.transaction`) has committed, rather than by a NOTIFY inside it.
///
/// A NOTIFY in a transaction takes PostgreSQL's one lock for the whole server at commit and
/// holds it through the commit's WAL flush, so such transactions commit one after another
/// however many connections run them; and once the NOTIFY queue is full (a LISTENing session
/// idle in a long transaction), PostgreSQL refuses the NOTIFY and with it the whole
/// transaction: the deployment and its jobs. Enqueues in such a transaction, on its own
/// connection, note their queue here instead; the wake-up after the commit writes nothing but
/// its commit record, waits for no flush, and a refusal fails nothing.
final class WakeUpsAfterCommit: Sendable {
    @TaskLocal static var current: WakeUpsAfterCommit?

    private let connection: PostgresConnection
    private let queues = Mutex<[String]>([])

    init(for connection: PostgresConnection) {
        self.connection = connection
    }

    /// The list to note queues in when `db` is the connection of the transaction this task
    /// runs; nil anywhere else (a caller's own transaction notifies at its commit, as before).
    static func noting(on db: some QueryRunner) -> WakeUpsAfterCommit? {
        guard let current, let connection = db as? PostgresConnection, connection === current.connection else { return nil }
        return current
    }

    func note(_ queue: String) {
        queues.withLock { if !$0.contains(queue) { $0.append(queue) } }
    }

    /// Wakes the queues noted, once the transaction has committed, on its connection; a wake-up
    /// PostgreSQL refuses is logged: the jobs are in, and workers polling find them.
    ///
    /// NOTIFY is refused at commit (a full queue, a `lock_timeout` on its lock), after its
    /// statement's answer, where PostgresNIO drops the refusal when the statement is a
    /// transaction of its own. So the wake-ups go through the connection's
    /// `SingleEnqueueHandler`, which reads every answer itself, in one round trip; without one
    /// (behind a pooler), through PostgresNIO in BEGIN / SELECT / COMMIT, three.
    /// Refusals are logged at most every 10 s per connection (`refusals`), with how many there were.
    func send(through handler: SingleEnqueueHandler?, refusals: RepeatedWarning, logger: Logger) async {
        let queues = queues.withLock { $0 }
        guard !queues.isEmpty else { return }
        do {
            if let handler {
                let loop = connection.eventLoop
                try await (loop.inEventLoop ? handler.wakeUp(queues) : loop.flatSubmit { handler.wakeUp(queues) }).get()
                return
            }
            _ = try await connection.run("BEGIN", logger: logger)
            _ = try await connection.run("SELECT pg_notify(\(JobStore.channel), queue) FROM unnest(\(queues)::text[]) AS queue", logger: logger)
                .collect()
            _ = try await connection.run("COMMIT", logger: logger)
        } catch {
            if handler == nil { _ = try? await connection.run("ROLLBACK", logger: logger) }
            guard let refused = refusals.due() else { return }
            logger.warning("jobs were enqueued but their queues' workers were not woken; idle ones find them at their next poll",
                           metadata: ["queues": "\(queues.joined(separator: ","))", "error": "\(DatabaseServerError.server(of: error)?.message ?? "\(error)")",
                                      "refused": "\(refused)"])
        }
    }
}
