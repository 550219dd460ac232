import Foundation
import Logging
import PostgresNIO

/// What a handler knows about the job it runs.
public struct JobContext: Sendable {
    public let id: Int64
    public let queue: String
    public let kind: String
    /// 1 on the first run.
    public let attempt: Int
    public let maxAttempts: Int
    public let createdAt: Date
    /// When this attempt's job timeout ends (its handler is then cancelled); nil without a timeout.
    public let deadline: ContinuousClock.Instant?
    /// Carries `job_id`, `job_kind`, `job_attempt` and `queue` metadata.
    public let logger: Logger
    let worker: String
    let store: JobStore
    let finishedInTransaction: @Sendable () -> Void

    /// Completes the job inside the caller's transaction, so the handler's own writes and the
    /// completion commit together or not at all. Throws `QueueError.leaseLost` (rolling back
    /// the caller's transaction) if this worker no longer holds the job.
    public func complete(in connection: PostgresConnection) async throws {
        let outcome = JobOutcome(id: id, attempt: attempt, state: .completed)
        let updated = try await store.record([outcome], worker: worker, on: connection)
        guard updated[id] != nil else { throw QueueError.leaseLost(id: id) }
        finishedInTransaction()
    }
}

/// A handler gets the job's JSON arguments; the typed `register` decodes them first.
public typealias JobHandler = @Sendable (_ args: String, _ context: JobContext) async throws -> Void

/// Handlers by job kind. A job whose kind has no handler fails its attempt with `unknown_kind`
/// (retried, so a newer worker that knows the kind can still run it).
///
/// A kind may have a timeout of its own (else the worker's `jobTimeout` applies): a handler
/// still running when it ends is cancelled, and its attempt fails as retryable `job_timeout`.
/// It may have a retry policy of its own too (else the worker's `retry` applies), as River's
/// `NextRetry` and Oban's `backoff/1` give one per worker: a call to a flaky service retries
/// within seconds, a build that ran out of disk waits minutes.
public struct JobHandlers: Sendable {
    var byKind: [String: JobHandler] = [:]
    var timeouts: [String: Duration] = [:]
    var retries: [String: RetryPolicy] = [:]

    public init() {}

    public var kinds: [String] { byKind.keys.sorted() }

    /// The timeout of `kind`'s own registration, if it has one.
    public func timeout(of kind: String) -> Duration? { timeouts[kind] }

    /// The retry policy of `kind`'s own registration, if it has one.
    public func retryPolicy(of kind: String) -> RetryPolicy? { retries[kind] }

    public mutating func register(kind: String, timeout: Duration? = nil, retry: RetryPolicy? = nil, _ handler: @escaping JobHandler) {
        byKind[kind] = handler
        timeouts[kind] = timeout
        retries[kind] = retry
    }

    public mutating func register<Args: JobArgs>(_ type: Args.Type, timeout: Duration? = nil, retry: RetryPolicy? = nil,
                                                 _ handler: @escaping @Sendable (Args, JobContext) async throws -> Void) {
        timeouts[Args.kind] = timeout
        retries[Args.kind] = retry
        byKind[Args.kind] = { json, context in
            let args: Args
            do {
                args = try JSONCoding.decoder.decode(Args.self, from: Data(json.utf8))
            } catch {
                throw JobFailure.permanent("invalid_args", "the job's arguments do not match \(Args.kind)", detail: Self.describe(error))
            }
            try await handler(args, context)
        }
    }

    static func describe(_ error: any Error) -> String {
        switch error as? DecodingError {
        case let .keyNotFound(key, _): "missing field '\(key.stringValue)'"
        case let .typeMismatch(_, context), let .valueNotFound(_, context):
            "field '\(context.codingPath.map(\.stringValue).joined(separator: "."))': \(context.debugDescription)"
        case let .dataCorrupted(context): context.debugDescription
        default: "\(error)"
        }
    }
}
