import Foundation

/// How long a serving container that exited waits before it starts again: the kubelet's
/// crash-loop back-off. The first exit of a streak restarts at once; each further one waits
/// twice as long as the one before (10 s, 20 s, 40 s, … at most 5 minutes); a run that lasted
/// 10 minutes ends the streak.
public struct RestartBackoff: Sendable, Equatable {
    /// The wait before the second restart of a streak.
    public var base: TimeInterval
    /// The longest wait.
    public var cap: TimeInterval
    /// A run at least this long starts the streak over.
    public var resetAfter: TimeInterval

    public init(base: TimeInterval = 10, cap: TimeInterval = 300, resetAfter: TimeInterval = 600) {
        self.base = base
        self.cap = cap
        self.resetAfter = resetAfter
    }

    /// The wait after an exit, when the streak has restarted the container `streak` times so far.
    public func delay(afterRestarts streak: Int) -> TimeInterval {
        guard streak > 0 else { return 0 }
        return min(base * pow(2, Double(min(streak - 1, 32))), cap)
    }

    /// The streak an exit continues, after a run of `seconds`.
    public func streak(_ streak: Int, afterRunOf seconds: TimeInterval) -> Int {
        seconds >= resetAfter ? 0 : streak
    }

    /// When a container that exited at `exitedAt`, after a run of `ranFor` seconds, is next
    /// started, and the streak that start continues. A start that failed since the exit counts
    /// as a try: the next waits from it, and the run before the exit no longer starts the count
    /// over (or every pass would try again at once).
    public func nextStart(exitedAt: Date, ranFor: TimeInterval, record: RestartRecord) -> (streak: Int, at: Date) {
        let triedSinceExit = record.lastAttemptAt.map { $0 > exitedAt } ?? false
        let streak = triedSinceExit ? record.streak : streak(record.streak, afterRunOf: ranFor)
        let since = max(exitedAt, record.lastAttemptAt ?? exitedAt)
        return (streak, since.addingTimeInterval(delay(afterRestarts: streak)))
    }
}

/// What the supervisor knows of one container it looks after. podman 4.3 counts only its own
/// restart policy's restarts, so these live beside the runtime's storage, in `restarts.json`.
public struct RestartRecord: Codable, Sendable, Equatable {
    /// Every time it was started again.
    public var restarts = 0
    /// Restarts since its last long run: the back-off's exponent.
    public var streak = 0
    /// The exit code of the run before the last restart.
    public var lastExitCode: Int32?
    /// When the supervisor last started it (or tried to).
    public var lastAttemptAt: Date?
    /// While it waits out its back-off: when it starts again.
    public var nextStartAt: Date?
    /// What podman said when the last start failed.
    public var lastError: String?

    public init() {}

    enum CodingKeys: String, CodingKey {
        case restarts, streak, lastExitCode = "last_exit_code", lastAttemptAt = "last_attempt_at", nextStartAt = "next_start_at", lastError = "last_error"
    }
}

/// The records, by container ID, in one JSON file written whole (rename), so a reader never
/// sees half of it; writers hold the supervisor's lock.
struct RestartBook: Sendable {
    let file: URL

    var lock: FileLock { FileLock(file: file.deletingLastPathComponent().appending(path: "restarts.lock")) }

    func read() -> [String: RestartRecord] {
        guard let data = try? Data(contentsOf: file) else { return [:] }
        return (try? Self.decoder.decode([String: RestartRecord].self, from: data)) ?? [:]
    }

    func write(_ records: [String: RestartRecord]) throws {
        try Self.encoder.encode(records).write(to: file, options: .atomic)
    }

    static let encoder: JSONEncoder = {
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .iso8601
        encoder.outputFormatting = .sortedKeys
        return encoder
    }()

    static let decoder: JSONDecoder = {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        return decoder
    }()
}
