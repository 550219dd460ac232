import Synchronization

/// A coalescing wake-up: any number of `signal()` calls wake one pending or future `wait`.
final class WakeSignal: Sendable {
    private struct State {
        var pending = false
        var waiter: CheckedContinuation<Void, Never>?
    }

    private let state = Mutex(State())

    func signal() {
        let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
            if let waiter = state.waiter {
                state.waiter = nil
                return waiter
            }
            state.pending = true
            return nil
        }
        waiter?.resume()
    }

    /// Returns on a signal, after `timeout`, or when the task is cancelled.
    func wait(timeout: Duration) async {
        if state.withLock({ state in
            let was = state.pending
            state.pending = false
            return was
        }) { return }
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                do {
                    try await Task.sleep(for: timeout)
                    self.signal()
                } catch {}
            }
            group.addTask { await self.waitForSignal() }
            await group.next()
            group.cancelAll()
        }
    }

    private func waitForSignal() async {
        await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                let resumeNow = state.withLock { state -> Bool in
                    if state.pending || Task.isCancelled {
                        state.pending = false
                        return true
                    }
                    state.waiter = continuation
                    return false
                }
                if resumeNow { continuation.resume() }
            }
        } onCancel: {
            let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
                defer { state.waiter = nil }
                return state.waiter
            }
            waiter?.resume()
        }
    }
}

/// A one-shot event: once set, every wait returns at once.
final class OneShotEvent: Sendable {
    private let state = Mutex<(set: Bool, waiters: [CheckedContinuation<Void, Never>])>((false, []))

    var isSet: Bool { state.withLock { $0.set } }

    func set() {
        let waiters = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            guard !state.set else { return [] }
            state.set = true
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Suspends until the task is cancelled (an event nobody sets).
    func waitForever() async {
        await withTaskCancellationHandler {
            await wait()
        } onCancel: {
            set()
        }
    }

    /// Waits until the event is set or `timeout` passes; whether it was set. It looks every 5 ms:
    /// for a wait that happens once, as a worker starts.
    func wait(upTo timeout: Duration) async -> Bool {
        let deadline = ContinuousClock.now + timeout
        while !isSet, ContinuousClock.now < deadline, !Task.isCancelled {
            try? await Task.sleep(for: .milliseconds(5))
        }
        return isSet
    }

    func wait() async {
        await withCheckedContinuation { continuation in
            let done = state.withLock { state -> Bool in
                if state.set { return true }
                state.waiters.append(continuation)
                return false
            }
            if done { continuation.resume() }
        }
    }
}

extension Duration {
    /// This duration scaled by a random factor in `1-spread ... 1+spread`, so many processes
    /// polling on the same interval drift apart instead of hitting the database together.
    func jittered(by spread: Double = 0.2) -> Duration {
        .nanoseconds(Int64(seconds * 1e9 * Double.random(in: (1 - spread)...(1 + spread))))
    }
}
