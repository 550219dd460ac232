import Foundation

/// Typed job arguments: a `kind` plus Codable fields. Handlers receive them decoded.
public protocol JobArgs: Codable, Sendable {
    static var kind: String { get }
}

/// A job to enqueue.
public struct NewJob: Sendable {
    public var queue: String
    public var kind: String
    /// A JSON object.
    public var args: String
    /// Lower runs first.
    public var priority: Int
    /// Run no earlier than this; `nil` means now.
    public var runAt: Date?
    public var maxAttempts: Int
    /// At most one live job holds a unique key at a time.
    public var uniqueKey: String?
    /// With a unique key: the key also stays held for this long after the job is enqueued,
    /// even once it completed (Oban's `period`, River's `ByPeriod`), so the same work runs at
    /// most once per period. A job that fails for good or is cancelled frees it early.
    public var uniqueFor: Duration?
    /// Jobs that must complete first; the job waits `blocked` until they do.
    public var dependsOn: [Int64]

    public init(queue: String, kind: String, args: String = "{}", priority: Int = 0, runAt: Date? = nil,
                maxAttempts: Int = 10, uniqueKey: String? = nil, uniqueFor: Duration? = nil, dependsOn: [Int64] = []) {
        self.queue = queue
        self.kind = kind
        self.args = args
        self.priority = priority
        self.runAt = runAt
        self.maxAttempts = maxAttempts
        self.uniqueKey = uniqueKey
        self.uniqueFor = uniqueFor
        self.dependsOn = dependsOn
    }

    public init<Args: JobArgs>(_ args: Args, queue: String, priority: Int = 0, runAt: Date? = nil,
                               maxAttempts: Int = 10, uniqueKey: String? = nil, uniqueFor: Duration? = nil,
                               dependsOn: [Int64] = []) throws {
        let data: Data
        do { data = try JSONCoding.encoder.encode(args) } catch {
            throw QueueError.invalidArgs(kind: Args.kind, reason: "\(error)")
        }
        self.init(queue: queue, kind: Args.kind, args: String(decoding: data, as: UTF8.self), priority: priority,
                  runAt: runAt, maxAttempts: maxAttempts, uniqueKey: uniqueKey, uniqueFor: uniqueFor, dependsOn: dependsOn)
    }

    static let longestUniquePeriod: Duration = .seconds(366 * 86_400)

    /// 10000-01-01T00:00:00Z, in seconds since 1970.
    static let latestRunAt = 253_402_300_800.0

    /// Rejects what the database would reject, with an error that says which field and why.
    func validate() throws(QueueError) {
        try Names.checkQueue(queue)
        try Names.checkKind(kind)
        if let problem = JSONSyntax.problem(in: args) {
            throw .invalidArgs(kind: kind, reason: "args are not valid JSON (\(problem)): \(args.prefix(80))")
        }
        guard JSONSyntax.isObject(args) else {
            throw .invalidArgs(kind: kind, reason: "args must be a JSON object, got: \(args.prefix(80))")
        }
        // PostgreSQL would store an infinite time as 'infinity' (a job that never runs) and
        // refuse one past its range with a bare "timestamp out of range".
        if let runAt, !(runAt.timeIntervalSince1970.magnitude < Self.latestRunAt) {
            throw .invalidEnqueue(reason: "the run-at time must be a date before the year 10000 (got \(runAt.timeIntervalSince1970) s since 1970)")
        }
        guard (1...1000).contains(maxAttempts) else {
            throw .invalidEnqueue(reason: "max attempts must be between 1 and 1000 (got \(maxAttempts))")
        }
        guard (-32768...32767).contains(priority) else {
            throw .invalidEnqueue(reason: "priority must be between -32768 and 32767 (got \(priority))")
        }
        if let uniqueKey, uniqueKey.isEmpty || uniqueKey.utf8.count > 512 || uniqueKey.utf8.contains(0) {
            throw .invalidEnqueue(reason: "a unique key must be 1 to 512 bytes long, without NUL characters")
        }
        if let uniqueFor {
            guard uniqueKey != nil else {
                throw .invalidEnqueue(reason: "a unique period needs a unique key: give the job one (uniqueKey, --unique-key)")
            }
            guard uniqueFor >= .seconds(1), uniqueFor <= Self.longestUniquePeriod else {
                throw .invalidEnqueue(reason: "a unique period must be between 1 second and 366 days (got \(uniqueFor.seconds) s)")
            }
        }
        if dependsOn.count > 1000 {
            throw .invalidEnqueue(reason: "a job may depend on at most 1000 jobs (got \(dependsOn.count))")
        }
    }
}

/// What enqueueing produced: the job's id and first state, or the live job already holding the unique key.
public struct EnqueuedJob: Sendable, Equatable {
    public var id: Int64
    public var state: JobState
    public var duplicate: Bool
}
