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
    /// `SingleEnqueueHandler`, which reads every answer itself; without one (behind a pooler), by
    /// `wakeUpCall`. One round trip either way.
    func send(through handler: SingleEnqueueHandler?, refusals: RepeatedWarning, logger: Logger) async {
        let queues = queues.withLock { $0 }
        guard !queues.isEmpty else { return }
        do {
            if let handler {
                let loop = connection.eventLoop
                try await (loop.inEventLoop ? handler.wakeUp(queues) : loop.flatSubmit { handler.wakeUp(queues) }).get()
                return
            }
            _ = try await connection.run(Self.wakeUpCall(queues), logger: logger).collect()
        } catch {
            Self.refused(queues, error, refusals: refusals, logger: logger)
        }
    }

    /// Wakes `queues` by the procedure `loco_wake_up`, which notifies and commits inside the
    /// statement, so that a refusal is the statement's error, which every client reads.
    static func wakeUpCall(_ queues: [String]) -> PostgresQuery {
        "CALL loco_wake_up(\(queues))"
    }

    /// Logs a refused wake-up, at most every 10 s per connection (`refusals`), with how many
    /// there were.
    static func refused(_ payloads: [String], _ error: any Error, refusals: RepeatedWarning, logger: Logger) {
        guard let refused = refusals.due() else { return }
        logger.warning("\(unannounced(payloads))",
                       metadata: ["queues": "\(payloads.joined(separator: ","))", "error": "\(DatabaseServerError.server(of: error)?.message ?? "\(error)")",
                                  "refused": "\(refused)"])
    }

    /// What workers were not told when `payloads` went unsent, and when they find out anyway:
    /// jobs made available (queue names), running jobs' cancels (`cancel:ID`), and queues'
    /// scales and limits (`scale:QUEUE`) each have their own fallback.
    static func unannounced(_ payloads: [String]) -> String {
        var queues: [String] = [], cancels: [String] = [], scales: [String] = []
        for payload in payloads {
            if payload.hasPrefix("cancel:") {
                cancels.append(String(payload.dropFirst("cancel:".count)))
            } else if payload.hasPrefix("scale:") {
                scales.append(String(payload.dropFirst("scale:".count)))
            } else {
                queues.append(payload)
            }
        }
        var said: [String] = []
        if !queues.isEmpty {
            said.append("jobs became available but their queues' workers were not woken; idle ones find them at their next poll")
        }
        if !cancels.isEmpty {
            said.append("the cancel of running job \(cancels.joined(separator: ", ")) was recorded but its worker was not told; "
                        + "it sees the request at the job's next heartbeat")
        }
        if !scales.isEmpty {
            said.append("the scale or limit of queue \(scales.joined(separator: ", ")) changed but its workers were not told; "
                        + "they read it at their next periodic read (every \(WorkerConfiguration.defaultScaleCheckInterval.components.seconds) s by default)")
        }
        return said.joined(separator: "; and ")
    }
}

/// When a statement's jobs (or a cancel or scale it records) are announced to workers: after
/// the commit of the transaction Loco runs on the statement's connection, after the commit of
/// the statement itself (`QueryRunner.wakesQueuesAfterCommit`), or by a NOTIFY inside the
/// statement, in a caller's own transaction, whose COMMIT reports a refusal.
enum WakeUpMoment {
    case afterTransaction(WakeUpsAfterCommit)
    case afterStatement
    case inStatement

    init(for db: some QueryRunner) {
        if let noted = WakeUpsAfterCommit.noting(on: db) {
            self = .afterTransaction(noted)
        } else {
            self = db.wakesQueuesAfterCommit ? .afterStatement : .inStatement
        }
    }

    /// Whether the statement notifies itself.
    var inStatement: Bool {
        if case .inStatement = self { true } else { false }
    }

    /// Announces `payloads` (queue names, `cancel:ID`, `scale:QUEUE`) once the statement has
    /// committed: noted for after the transaction, or sent now; nothing when the statement
    /// notified itself.
    func wake(_ payloads: [String], on db: some QueryRunner, logger: Logger) async {
        guard !payloads.isEmpty else { return }
        switch self {
        case .afterTransaction(let noted): for payload in payloads { noted.note(payload) }
        case .afterStatement: await db.wakeUp(payloads, logger: logger)
        case .inStatement: break
        }
    }
}
