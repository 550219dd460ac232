import Synchronization

/// Why this process stopped a handler before it finished.
enum StopReason: Sendable, Equatable {
    /// An operator or the API cancelled the job.
    case cancelRequested
    /// The heartbeat found the job no longer ours: its result must be dropped.
    case leaseLost
    /// The process is shutting down past its grace period: the job goes back to the queue.
    case shutdown
    /// The handler ran past its kind's (or the worker's) job timeout: the attempt fails as retryable.
    case timedOut(Duration)
}

/// The jobs this process holds (claimed and not yet recorded as finished): what the heartbeat
/// renews, what cancellation reaches, and what shutdown waits for.
final class JobLedger: Sendable {
    struct Entry {
        var attempt: Int
        var queue: String
        var task: Task<Void, Never>?
        var stopReason: StopReason?
        /// The handler returned; its outcome is waiting to be written.
        var finishing = false
    }

    private let entries = Mutex<[Int64: Entry]>([:])
    let drained = WakeSignal()

    func add(id: Int64, attempt: Int, queue: String) {
        entries.withLock { $0[id] = Entry(attempt: attempt, queue: queue) }
    }

    func attach(_ task: Task<Void, Never>, to id: Int64) {
        let reason = entries.withLock { entries -> StopReason? in
            entries[id]?.task = task
            return entries[id]?.stopReason
        }
        if reason != nil { task.cancel() }
    }

    func markFinishing(_ id: Int64) {
        entries.withLock { $0[id]?.finishing = true }
    }

    /// Forgets attempts whose outcome is written or dropped: only the attempt named. A retry due
    /// at once can bring the job back for its next attempt before the outcome of the last one is
    /// accounted; forgetting that one too left its timer, cancel and heartbeat nothing to act on
    /// (a timed-out handler then ran on, and the job sat `running`).
    func remove(_ attempts: some Sequence<(id: Int64, attempt: Int)>) {
        let empty = entries.withLock { entries -> Bool in
            for (id, attempt) in attempts where entries[id]?.attempt == attempt { entries[id] = nil }
            return entries.isEmpty
        }
        if empty { drained.signal() }
    }

    /// Stops a running handler; returns false if the job is not held or already finishing, or,
    /// given `attempt`, if the job held now is another attempt of it. A heartbeat's answer is
    /// about the attempts it sent: one that arrives after the job came back for its next
    /// attempt must not stop that one (it once did, and the job sat `running` until its lease
    /// ran out).
    @discardableResult
    func stop(_ id: Int64, attempt: Int? = nil, reason: StopReason) -> Bool {
        let task = entries.withLock { entries -> Task<Void, Never>?? in
            guard var entry = entries[id], !entry.finishing else { return .none }
            if let attempt, entry.attempt != attempt { return .none }
            if entry.stopReason == nil || reason == .leaseLost { entry.stopReason = reason }
            entries[id] = entry
            return .some(entry.task)
        }
        guard let task else { return false }
        task?.cancel()
        return true
    }

    func stopAll(reason: StopReason) {
        let ids = entries.withLock { Array($0.keys) }
        for id in ids { stop(id, reason: reason) }
    }

    func stopReason(of id: Int64) -> StopReason? {
        entries.withLock { $0[id]?.stopReason }
    }

    /// Jobs to renew: everything held, including outcomes not yet written.
    func held() -> [(id: Int64, attempt: Int)] {
        entries.withLock { $0.map { ($0.key, $0.value.attempt) } }
    }

    /// Held jobs whose handler is still running.
    var runningCount: Int { entries.withLock { $0.values.count { !$0.finishing } } }
    var count: Int { entries.withLock { $0.count } }
}
