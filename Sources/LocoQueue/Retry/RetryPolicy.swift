/// Capped exponential backoff with full jitter: attempt n waits a random time in
/// `0 ... min(cap, base * 2^(n-1))`, so a burst of failures does not retry in lockstep.
public struct RetryPolicy: Sendable, Equatable {
    public var base: Duration
    public var cap: Duration

    public init(base: Duration = .seconds(1), cap: Duration = .seconds(600)) {
        self.base = base
        self.cap = cap
    }

    /// The upper bound of the wait after `attempt` failed (attempts count from 1).
    public func ceiling(afterAttempt attempt: Int) -> Duration {
        let exponent = min(max(attempt - 1, 0), 60)
        let ceiling = base.seconds * Double(1 << min(exponent, 62))
        return .milliseconds(Int64(min(ceiling, cap.seconds) * 1000))
    }

    /// A random wait in `0 ... ceiling(afterAttempt:)`.
    public func delay(afterAttempt attempt: Int, random: Double = Double.random(in: 0...1)) -> Duration {
        let bound = ceiling(afterAttempt: attempt).seconds
        return .milliseconds(Int64(bound * min(max(random, 0), 1) * 1000))
    }
}
