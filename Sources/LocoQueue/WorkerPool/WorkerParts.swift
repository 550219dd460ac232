import Logging
import Synchronization

/// The parts of a worker still running, by name, so that a shutdown that takes too long says
/// which part it waits for instead of hanging in silence.
final class WorkerParts: Sendable {
    private let running = Mutex<[String: Int]>([:])

    /// Runs `body` as the part called `name`.
    func run(_ name: String, _ body: () async -> Void) async {
        running.withLock { $0[name, default: 0] += 1 }
        await body()
        running.withLock { parts in
            parts[name, default: 1] -= 1
            if parts[name] == 0 { parts[name] = nil }
        }
    }

    var names: [String] { running.withLock { $0.keys.sorted() } }

    /// Until cancelled, logs every `interval` which parts have not stopped yet.
    func reportStragglers(every interval: Duration, logger: Logger) async {
        var waited = Duration.zero
        while !Task.isCancelled {
            try? await Task.sleep(for: interval)
            if Task.isCancelled { return }
            waited += interval
            logger.warning("the worker is still stopping after \(waited): waiting for \(names.joined(separator: ", "))")
        }
    }
}
