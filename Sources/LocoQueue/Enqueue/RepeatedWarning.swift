import Synchronization

/// A warning that can come with every request while its cause lasts (a full NOTIFY queue
/// refuses every wake-up), let out at most once per `interval` with how many times it came.
final class RepeatedWarning: Sendable {
    private let interval: Duration
    private let state = Mutex<(lastLogged: ContinuousClock.Instant?, since: Int)>((nil, 0))

    init(every interval: Duration = .seconds(10)) {
        self.interval = interval
    }

    /// nil when this one is held back; otherwise how many came since the last line, this one
    /// included.
    func due() -> Int? {
        state.withLock { state in
            state.since += 1
            let now = ContinuousClock.now
            if let last = state.lastLogged, now - last < interval { return nil }
            defer { state = (now, 0) }
            return state.since
        }
    }
}
