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
///
/// Each claim of a job is a *run* with a number of its own. Answers that arrive late (a
/// heartbeat's, a written outcome's) name the run they are about, and only that run is stopped
/// or forgotten. The attempt number cannot tell runs apart: a snooze gives its attempt back,
/// so the job's next run has the same one. A heartbeat that had sent the snoozed run, and
/// found the job no longer running, once stopped the next run as `leaseLost`; its result was
/// dropped and the job sat `running` until its lease ran out.
final class JobLedger: Sendable {
    /// One claim of a job, as the heartbeat sends it and its answer names it.
    struct Run: Sendable, Equatable {
        var id: Int64
        var attempt: Int
        var run: UInt64
    }

    struct Entry {
        var run: UInt64
        var attempt: Int
        var queue: String
        var task: Task<Void, Never>?
        var stopReason: StopReason?
        /// The handler returned; its outcome is waiting to be written.
        var finishing = false
    }

    private let entries = Mutex<[Int64: Entry]>([:])
    private let lastRun = Atomic<UInt64>(0)
    /// Cancel requests that named a job this process did not hold when they arrived, and when.
    /// The job may be one this process is claiming: the claim committed (the job is `running`,
    /// so it can be cancelled) but its answer is still on the way. Dropping such a request left
    /// the handler running until the next heartbeat, up to 10 s later.
    private let unmatchedCancels = Mutex<(requests: [Int64: ContinuousClock.Instant], recheck: Bool)>(([:], false))
    /// Wakes the heartbeat when a claimed job had a remembered cancel request.
    let recheckRequested = WakeSignal()
    /// How long an unmatched cancel request is kept: far longer than a claim's answer takes.
    static let unmatchedCancelMemory: Duration = .seconds(30)
    static let unmatchedCancelLimit = 4096
    let drained = WakeSignal()
    /// When a claim last failed without an answer (it may have committed all the same).
    private let lastUnansweredClaim = Mutex<ContinuousClock.Instant?>(nil)

    /// Holds a claimed job; returns the number of this run of it.
    @discardableResult
    func add(id: Int64, attempt: Int, queue: String) -> UInt64 {
        let run = lastRun.add(1, ordering: .relaxed).newValue
        let recheck = entries.withLock { entries -> Bool in
            entries[id] = Entry(run: run, attempt: attempt, queue: queue)
            // Inside the entries' lock, so a request is either seen here or finds the entry.
            return unmatchedCancels.withLock { unmatched -> Bool in
                guard let at = unmatched.requests.removeValue(forKey: id), at.duration(to: .now) < Self.unmatchedCancelMemory else {
                    return false
                }
                // Not a cancel on its own: the request may be about an earlier attempt. The
                // heartbeat asks the database, which knows.
                unmatched.recheck = true
                return true
            }
        }
        if recheck { recheckRequested.signal() }
        return run
    }

    /// A cancel request (NOTIFY `cancel:<id>`) arrived: stops the handler if the job is held,
    /// otherwise remembers the request until the job is, if it ever is. True if it stopped one.
    func requestCancel(_ id: Int64) -> Bool {
        // Remembered inside the entries' lock, so a claim adding the job either finds it or is found.
        let held = entries.withLock { entries -> Bool in
            guard entries[id] == nil else { return true }
            unmatchedCancels.withLock { unmatched in
                let now = ContinuousClock.now
                if unmatched.requests.count >= Self.unmatchedCancelLimit {
                    unmatched.requests = unmatched.requests.filter { $0.value.duration(to: now) < Self.unmatchedCancelMemory }
                    if unmatched.requests.count >= Self.unmatchedCancelLimit { unmatched.requests.removeAll() }
                }
                unmatched.requests[id] = now
            }
            return false
        }
        return held && stop(id, reason: .cancelRequested)
    }

    /// Whether a cancel request for a job not held is remembered (for tests and diagnostics).
    func remembersCancel(of id: Int64) -> Bool {
        unmatchedCancels.withLock { $0.requests[id] != nil }
    }

    /// Whether a job was claimed after a cancel request named it: the heartbeat, woken by
    /// `recheckRequested`, then beats at once rather than at its interval. Reading it resets it.
    func takeRecheck() -> Bool {
        unmatchedCancels.withLock { unmatched in
            defer { unmatched.recheck = false }
            return unmatched.recheck
        }
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

    /// Forgets runs whose outcome is written or dropped: only the run named. A retry due at once
    /// (or a short snooze) can bring the job back before the outcome of its last run is
    /// accounted; forgetting the new run too left its timer, cancel and heartbeat nothing to act
    /// on (a timed-out handler then ran on, and the job sat `running`).
    func remove(_ runs: some Sequence<(id: Int64, run: UInt64)>) {
        let empty = entries.withLock { entries -> Bool in
            for (id, run) in runs where entries[id]?.run == run { entries[id] = nil }
            return entries.isEmpty
        }
        if empty { drained.signal() }
    }

    /// Stops a running handler; returns false if the job is not held or already finishing, or,
    /// given `run`, if the job held now is another run of it. A heartbeat's answer is about the
    /// runs it sent: one that arrives after the job came back must not stop its next run.
    @discardableResult
    func stop(_ id: Int64, run: UInt64? = nil, reason: StopReason) -> Bool {
        let task = entries.withLock { entries -> Task<Void, Never>?? in
            guard var entry = entries[id], !entry.finishing else { return .none }
            if let run, entry.run != run { return .none }
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

    /// A claim failed (an error, a dropped connection, the watchdog): whether it committed is
    /// unknown, and if it did, its jobs are held under this worker's name but not by this ledger.
    func noteUnansweredClaim() {
        lastUnansweredClaim.withLock { $0 = .now }
    }

    /// Whether a claim failed within `window`: only then can the database hold strays of ours.
    func hadUnansweredClaim(within window: Duration) -> Bool {
        lastUnansweredClaim.withLock { at in at.map { $0.duration(to: .now) < window } ?? false }
    }

    /// Jobs to renew: everything held, including outcomes not yet written.
    func held() -> [Run] {
        entries.withLock { $0.map { Run(id: $0.key, attempt: $0.value.attempt, run: $0.value.run) } }
    }

    /// Held jobs whose handler is still running.
    var runningCount: Int { entries.withLock { $0.values.count { !$0.finishing } } }
    var count: Int { entries.withLock { $0.count } }
}
