import Foundation
import Logging
import Synchronization

/// A log handler that keeps every line logged through it, for tests that check what a worker
/// said, or print it when they fail.
public final class CapturedLog: LogHandler, Sendable {
    private typealias Line = (message: String, metadata: Logger.Metadata, level: Logger.Level, at: Duration)
    private let level: Logger.Level
    private let started = ContinuousClock.now
    private let lines = Mutex<[Line]>([])

    /// Keeps lines at `level` and above (PostgresNIO's trace lines are many per statement).
    public init(level: Logger.Level = .trace) { self.level = level }

    public var messages: [String] { lines.withLock { $0.map(\.message) } }
    /// Each message with its metadata, `message key=value …`.
    public var detailed: [String] { lines.withLock { $0.map { Self.withMetadata($0) } } }
    /// Each line as `+S.mmm s level message key=value …`, S the time since this log was made:
    /// what a failing test prints.
    public var timeline: [String] {
        lines.withLock { $0.map { line in
            let at = String(format: "+%.3f s", Double(line.at.components.seconds) + Double(line.at.components.attoseconds) / 1e18)
            return "\(at) \(line.level) \(Self.withMetadata(line))"
        } }
    }

    private static func withMetadata(_ line: Line) -> String {
        ([line.message] + line.metadata.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }).joined(separator: " ")
    }
    public var metadata: Logger.Metadata {
        get { [:] }
        set {}
    }
    public var logLevel: Logger.Level {
        get { level }
        set {}
    }
    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { nil }
        set {}
    }
    public func log(event: LogEvent) {
        let at = ContinuousClock.now - started
        lines.withLock { $0.append(("\(event.message)", event.metadata ?? [:], event.level, at)) }
    }
}
