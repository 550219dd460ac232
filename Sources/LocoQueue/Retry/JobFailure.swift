/// An error a handler throws to say how its failure should be treated.
///
/// Any other error a handler throws counts as `retryable` with code `error`.
public protocol ClassifiedJobError: Error {
    var errorClass: ErrorClass { get }
    var code: String { get }
    var message: String { get }
    var detail: String? { get }
    /// For `snooze`: how long to wait before running again (the attempt is not used up).
    var retryAfter: Duration? { get }
}

extension ClassifiedJobError {
    public var detail: String? { nil }
    public var retryAfter: Duration? { nil }
}

/// The ready-made `ClassifiedJobError`.
public struct JobFailure: ClassifiedJobError, CustomStringConvertible {
    public var errorClass: ErrorClass
    public var code: String
    public var message: String
    public var detail: String?
    public var retryAfter: Duration?

    /// Worth trying again after a backoff (network, 5xx, conflicts).
    public static func retryable(_ code: String, _ message: String, detail: String? = nil, after: Duration? = nil) -> JobFailure {
        JobFailure(errorClass: .retryable, code: code, message: message, detail: detail, retryAfter: after)
    }

    /// Will fail the same way every time (bad input); the job fails now.
    public static func permanent(_ code: String, _ message: String, detail: String? = nil) -> JobFailure {
        JobFailure(errorClass: .permanent, code: code, message: message, detail: detail, retryAfter: nil)
    }

    /// Not ready yet: run again after `duration` without using an attempt.
    public static func snooze(_ duration: Duration, reason: String = "snoozed") -> JobFailure {
        JobFailure(errorClass: .snooze, code: "snoozed", message: reason, detail: nil, retryAfter: duration)
    }

    public var description: String { "\(errorClass.rawValue) \(code): \(message)" }
}
