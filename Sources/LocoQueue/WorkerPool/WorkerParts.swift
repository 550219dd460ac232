import Foundation
import Logging
import Synchronization

/// The parts of a worker (the producers, the completer, the heartbeat, the listener, the
/// maintenance loops), what each is waiting for now, and which are still running: a part
/// stuck past every deadline it has is named in the log, with what it waits for, instead of
/// going quiet; a shutdown that takes too long says which part it waits for.
final class WorkerParts: Sendable {
    private let activities = Mutex<[PartActivity]>([])
    /// The parts stalled at the watchdog's last look, as `part at 'step' for N s`.
    private let stalledNow = Mutex<[String]>([])

    /// The parts stalled at the watchdog's last look (none when healthy), as `part at 'step' for N s`.
    var stalled: [String] { stalledNow.withLock { $0 } }

    /// The operation of a task that runs `body` as the part called `name`: the part is watched
    /// from now on (see `starting(_:)`), before the task is made.
    func task(_ name: String, _ body: @escaping @Sendable (PartActivity) async -> Void) -> @Sendable () async -> Void {
        let activity = starting(name)
        return { await self.run(activity, body) }
    }

    /// Runs `body` as the part `activity` is for, and ends it.
    func run(_ activity: PartActivity, _ body: (PartActivity) async -> Void) async {
        await body(activity)
        activity.end()
    }

    /// The activity of a part whose task is about to be made: watched from now on, so a part
    /// whose task never gets to run is named too. One CI run's worker spun on one of its event
    /// loops from its start; the parts whose tasks were queued there never ran, and since an
    /// activity used to be made by the task itself, none of them was listed, and none named.
    func starting(_ name: String) -> PartActivity {
        let activity = activity(name)
        activity.at("waiting to start", bound: Self.startBound)
        return activity
    }

    /// The longest a part's task may take to get its first turn: on a healthy process,
    /// milliseconds; under a heavily loaded CI machine, a few seconds.
    static let startBound: Duration = .seconds(10)

    /// The activity of the part called `name`, made and watched from now on.
    func activity(_ name: String) -> PartActivity {
        let activity = PartActivity(part: name)
        activities.withLock { $0.append(activity) }
        return activity
    }

    /// The parts still running.
    var names: [String] { Set(activities.withLock { $0 }.filter { !$0.hasEnded }.map(\.part)).sorted() }

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

    /// Starts the watchdog: every `interval`, a part whose step has run `slack` past its bound
    /// is logged once as stalled (with every part's step, to tell one stuck part from a
    /// stuck process), and again when it moves on; `stalled` gets the count each time.
    ///
    /// It runs on a thread of its own, not in a task: what it watches for includes a task
    /// that is never resumed, and that would stop a watchdog that is one too.
    func startWatchdog(every interval: Duration = .seconds(1), slack: Duration = .seconds(5), logger: Logger,
                       stalled: @escaping @Sendable (Int) -> Void) -> Watchdog {
        let watchdog = Watchdog()
        stalled(0)
        let thread = Thread { [self] in
            while !watchdog.isStopped {
                watchdog.sleep(interval)
                if watchdog.isStopped { return }
                stalled(check(slack: slack, logger: logger))
            }
        }
        thread.name = "loco-part-watchdog"
        thread.start()
        return watchdog
    }

    /// One look at every part; the number stalled now.
    func check(slack: Duration, now: ContinuousClock.Instant = .now, logger: Logger) -> Int {
        let all = activities.withLock { $0 }
        let steps = all.map { ($0, $0.current) }
        var stalled: [String] = []
        for (activity, step) in steps {
            if let moved = activity.takeRecovery() {
                logger.notice("worker part \(activity.part) moved on after \(moved.waited.spoken) at '\(moved.what)'")
            }
            let waited = now - step.since
            guard let bound = step.bound, waited > bound + slack else { continue }
            stalled.append("\(activity.part) at '\(step.what)' for \(waited.spoken)")
            guard activity.markReported() else { continue }
            let everyPart = steps.map { "\($0.0.part): \($0.1.what) for \((now - $0.1.since).spoken)" }.joined(separator: "; ")
            logger.warning("""
                worker part \(activity.part) has been at '\(step.what)' for \(waited.spoken), past the \(bound.spoken) that \
                can take; it looks stuck. Its work (rescues, retries, leases or claims) waits meanwhile: restart the worker \
                if it does not move on, and report this line with the worker's log
                """, metadata: ["parts": "\(everyPart)"])
        }
        stalledNow.withLock { $0 = stalled }
        return stalled.count
    }

    /// Stops the watchdog's thread (within one interval).
    final class Watchdog: Sendable {
        private let stopped = Atomic<Bool>(false)
        private let wake = NSCondition()
        var isStopped: Bool { stopped.load(ordering: .acquiring) }

        func stop() {
            stopped.store(true, ordering: .releasing)
            wake.lock()
            wake.broadcast()
            wake.unlock()
        }

        fileprivate func sleep(_ interval: Duration) {
            wake.lock()
            defer { wake.unlock() }
            if !isStopped { _ = wake.wait(until: Date(timeIntervalSinceNow: interval.seconds)) }
        }
    }
}

/// What one part of a worker waits for now. A part says so before each of its waits (a
/// statement, a sleep, a wake-up), with the longest that wait can take given its own
/// deadlines; the worker's watchdog (`WorkerParts.startWatchdog`) names a part past that.
final class PartActivity: Sendable {
    let part: String

    struct Step: Sendable {
        var what: String
        var since: ContinuousClock.Instant
        /// nil: the wait has no end of its own (listening for notifications, an idle queue).
        var bound: Duration?
    }

    private struct State {
        var step: Step
        /// Whether the watchdog reported the current step as stalled.
        var reported = false
        /// A step reported stalled that the part has since left, and how long it was at it.
        var movedOn: (what: String, waited: Duration)?
        var ended = false
    }

    private let state: Mutex<State>

    init(part: String) {
        self.part = part
        state = Mutex(State(step: Step(what: "starting", since: .now, bound: nil)))
    }

    var current: Step { state.withLock { $0.step } }

    var hasEnded: Bool { state.withLock { $0.ended } }

    /// From now on the part is at `what`, which takes at most `bound` (nil: no bound).
    func at(_ what: String, bound: Duration?) {
        state.withLock { state in
            let now = ContinuousClock.now
            if state.reported { state.movedOn = (state.step.what, now - state.step.since) }
            state.step = Step(what: what, since: now, bound: bound)
            state.reported = false
        }
    }

    /// The part has stopped: it waits for nothing any more.
    func end() {
        at("stopped", bound: nil)
        state.withLock { $0.ended = true }
    }

    /// Whether this is the first report of the current step (which is then marked reported).
    fileprivate func markReported() -> Bool {
        state.withLock { state in
            defer { state.reported = true }
            return !state.reported
        }
    }

    /// The step reported stalled that the part has left since; nil if none.
    fileprivate func takeRecovery() -> (what: String, waited: Duration)? {
        state.withLock { state in
            defer { state.movedOn = nil }
            return state.movedOn
        }
    }
}
