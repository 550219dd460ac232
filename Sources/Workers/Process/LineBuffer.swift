import Synchronization

/// Output lines gathered from another thread (a process's reader).
final class LineBuffer: Sendable {
    private let lines = Mutex<[String]>([])

    @Sendable func add(_ line: String) { lines.withLock { $0.append(line) } }

    /// The lines so far, leaving the buffer empty.
    func take() -> [String] { lines.withLock { lines in defer { lines.removeAll() }; return lines } }

    var text: String { lines.withLock { $0.joined(separator: "\n") } }
}
