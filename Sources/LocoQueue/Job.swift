import Foundation

/// Where a job is in its life. `blocked` waits on dependencies; the last three are final.
public enum JobState: String, Sendable, Codable, CaseIterable, Equatable {
    case blocked, scheduled, available, running, completed, failed, cancelled

    public var isFinal: Bool { self == .completed || self == .failed || self == .cancelled }
    public static let live: [JobState] = [.blocked, .scheduled, .available, .running]
    /// Waiting to run: what a discard may fail.
    public static let queued: [JobState] = [.blocked, .scheduled, .available]
    /// What a retry may run again.
    public static let retryable: [JobState] = [.scheduled, .completed, .failed, .cancelled]
}

/// How an attempt's error is treated: retried with backoff, final, or a wait that uses no attempt.
public enum ErrorClass: String, Sendable, Codable, Equatable {
    case retryable, permanent, snooze
}

/// One attempt's error, kept on the job for good: `{attempt, at, worker, class, code, message, detail}`.
public struct AttemptError: Sendable, Codable, Equatable {
    public var attempt: Int
    public var at: Date
    public var worker: String?
    public var errorClass: ErrorClass
    public var code: String
    public var message: String
    public var detail: String?

    enum CodingKeys: String, CodingKey {
        case attempt, at, worker, errorClass = "class", code, message, detail
    }

    /// This error as JSON that PostgreSQL's jsonb can hold (see `Storable`), for the outcome
    /// that records it; "" if it does not encode.
    var storableJSON: String {
        (try? Storable.json(String(decoding: JSONCoding.encoder.encode(self), as: UTF8.self))) ?? ""
    }

    public init(attempt: Int, at: Date, worker: String?, errorClass: ErrorClass, code: String, message: String, detail: String?) {
        self.attempt = attempt
        self.at = at
        self.worker = worker
        self.errorClass = errorClass
        self.code = code
        self.message = message
        self.detail = detail
    }
}

/// A job row as operators and tests see it.
public struct JobRecord: Sendable, Codable, Equatable {
    public var id: Int64
    public var queue: String
    public var kind: String
    public var args: String
    public var state: JobState
    public var priority: Int
    public var attempt: Int
    public var maxAttempts: Int
    public var runAt: Date
    public var createdAt: Date
    public var attemptedAt: Date?
    public var finalizedAt: Date?
    public var lockedBy: String?
    public var leaseExpiresAt: Date?
    public var cancelRequested: Bool
    public var uniqueKey: String?
    /// For a key held for a period (`uniqueFor`): until when, or while the job is live if later.
    public var uniqueHeldUntil: Date? = nil
    public var pendingDependencies: Int
    public var dependsOn: [Int64]
    public var errors: [AttemptError]
}

/// Names are checked before they reach SQL, so notifications and metrics labels stay clean.
enum Names {
    static func checkQueue(_ name: String) throws(QueueError) {
        guard (1...64).contains(name.utf8.count),
              name.utf8.allSatisfy({ ($0 >= 97 && $0 <= 122) || ($0 >= 48 && $0 <= 57) || $0 == 95 || $0 == 45 || $0 == 46 })
        else { throw .invalidQueueName(name) }
    }

    static func checkKind(_ kind: String) throws(QueueError) {
        guard (1...128).contains(kind.utf8.count),
              kind.utf8.allSatisfy({ ($0 >= 97 && $0 <= 122) || ($0 >= 65 && $0 <= 90) || ($0 >= 48 && $0 <= 57) || $0 == 95 || $0 == 45 || $0 == 46 || $0 == 58 })
        else { throw .invalidKind(kind) }
    }
}

/// JSON stored on job rows: timestamps are RFC 3339 UTC with milliseconds, written the same way by
/// Swift and by SQL (SQL uses `to_char` with `sqlTimestampFormat`).
public enum JSONCoding {
    static let sqlTimestampFormat = #"YYYY-MM-DD"T"HH24:MI:SS.MS"Z""#

    static var decoder: JSONDecoder {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .custom { decoder in
            let text = try decoder.singleValueContainer().decode(String.self)
            if let date = parseTimestamp(text) { return date }
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "bad timestamp \(text)"))
        }
        return decoder
    }

    static var encoder: JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        encoder.dateEncodingStrategy = .custom { date, encoder in
            var container = encoder.singleValueContainer()
            try container.encode(formatTimestamp(date))
        }
        return encoder
    }

    public static func formatTimestamp(_ date: Date) -> String {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return formatter.string(from: date)
    }

    public static func parseTimestamp(_ text: String) -> Date? {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        if let date = formatter.date(from: text) { return date }
        formatter.formatOptions = [.withInternetDateTime]
        return formatter.date(from: text)
    }
}
