import Foundation
@testable import LocoQueue
import LocoTestSupport
import Logging
import Synchronization
import Testing

/// The worker's watchdog over its own parts: a part waiting past the longest its step can take
/// is named, with what it waits for, instead of going quiet.
@Suite("Watchdog over a worker's parts")
struct WorkerPartsTests {
    @Test("a part past its step's bound is named once, with every part's step; its moving on is said; unbounded steps never are")
    func namesAStalledPart() {
        let log = CapturedLog()
        let logger = Logger(label: "test") { _ in log }
        let parts = WorkerParts()
        let scheduler = parts.activity("scheduler")
        let listener = parts.activity("listener")
        let rescuer = parts.activity("rescuer")
        let start = ContinuousClock.now
        scheduler.at("making due scheduled jobs available", bound: .seconds(35))
        listener.at("listening for notifications", bound: nil)
        rescuer.at("sleeping", bound: .seconds(1))

        // Within bound and slack: nothing.
        #expect(parts.check(slack: .seconds(5), now: start + .seconds(5), logger: logger) == 0)
        #expect(log.messages.isEmpty, "\(log.messages)")
        #expect(parts.check(slack: .seconds(5), now: start + .seconds(7), logger: logger) == 1)
        #expect(log.messages.count == 1 && log.messages[0].hasPrefix("worker part rescuer has been at 'sleeping' for "), "\(log.messages)")
        #expect(parts.stalled.count == 1 && parts.stalled[0].hasPrefix("rescuer at 'sleeping' for "), "\(parts.stalled)")
        rescuer.at("sleeping", bound: .seconds(1))
        #expect(parts.check(slack: .seconds(5), logger: logger) == 0)
        #expect(log.messages.last?.hasPrefix("worker part rescuer moved on after") == true, "\(log.messages)")

        let stalled = parts.check(slack: .seconds(5), now: start + .seconds(45), logger: logger)
        #expect(stalled == 2, "the scheduler and the rescuer (its new step is 45 s old by this clock)")
        #expect(parts.stalled.contains("scheduler at 'making due scheduled jobs available' for 45 s"), "\(parts.stalled)")
        let warning = log.detailed.first { $0.hasPrefix("worker part scheduler") }
        #expect(warning?.contains("has been at 'making due scheduled jobs available' for 45") == true, "\(log.detailed)")
        #expect(warning?.contains("past the 35 s that can take; it looks stuck") == true, "\(log.detailed)")
        // Every part's step, so that one stuck part tells apart from a stuck process.
        #expect(warning?.contains("listener: listening for notifications for 45") == true, "\(log.detailed)")
        let said = log.messages.count

        // Said once per stalled step, however long it lasts; a step with no bound never is.
        #expect(parts.check(slack: .seconds(5), now: start + .seconds(600), logger: logger) == 2)
        #expect(log.messages.count == said, "\(log.messages)")
        #expect(!log.messages.contains { $0.hasPrefix("worker part listener") })

        scheduler.at("sleeping", bound: .seconds(1))
        rescuer.at("stopped", bound: nil)
        #expect(parts.check(slack: .seconds(5), logger: logger) == 0)
        #expect(parts.stalled.isEmpty)
        #expect(log.messages.contains { $0.hasPrefix("worker part scheduler moved on after") && $0.hasSuffix("at 'making due scheduled jobs available'") },
                "\(log.messages)")
    }

    @Test("a part whose task never gets to run is named too: it is watched from before its task is made")
    func namesAPartThatNeverStarted() async {
        let log = CapturedLog()
        let logger = Logger(label: "test") { _ in log }
        let parts = WorkerParts()
        let start = ContinuousClock.now
        let starved = parts.starting("listener")
        let started = parts.starting("scheduler")
        await parts.run(started) { $0.at("sleeping", bound: nil) }
        #expect(parts.names == ["listener"], "a part that ended is not running; one that never started is")
        #expect(parts.check(slack: .seconds(5), now: start + WorkerParts.startBound + .seconds(4), logger: logger) == 0)
        #expect(parts.check(slack: .seconds(5), now: start + WorkerParts.startBound + .seconds(6), logger: logger) == 1)
        #expect(log.messages.count == 1 && log.messages[0].hasPrefix("worker part listener has been at 'waiting to start' for 16 s, past the 10 s"),
                "\(log.messages)")
        await parts.run(starved) { $0.at("listening for notifications", bound: nil) }
        #expect(parts.check(slack: .seconds(5), logger: logger) == 0)
        #expect(log.messages.last?.hasPrefix("worker part listener moved on after") == true, "\(log.messages)")
    }

    @Test("a worker's stalled parts are what its watchdog last found (what locod worker's /healthz answers 503 with)")
    func workerStalledParts() throws {
        let configuration = WorkerConfiguration(queues: [.init(name: "default", concurrency: 1)], workerID: "stalled-parts")
        let worker = try QueueWorker(databaseURL: try DatabaseURL("postgres://postgres@127.0.0.1:1/none"), handlers: JobHandlers(),
                                     configuration: configuration, logger: Logger(label: "test"))
        #expect(worker.stalledParts.isEmpty)
        let completer = worker.parts.activity("completer")
        completer.at("recording job outcomes", bound: .seconds(35))
        _ = worker.parts.check(slack: .seconds(5), now: .now + .seconds(60), logger: Logger(label: "test"))
        #expect(worker.stalledParts.count == 1 && worker.stalledParts[0].hasPrefix("completer at 'recording job outcomes' for 60"), "\(worker.stalledParts)")
        completer.at("waiting for job outcomes", bound: .milliseconds(200))
        _ = worker.parts.check(slack: .seconds(5), logger: Logger(label: "test"))
        #expect(worker.stalledParts.isEmpty)
    }

    @Test("the watchdog runs on a thread of its own: it reports a part stuck in a wait that never ends, and stops when told")
    func watchdogThread() async throws {
        let log = CapturedLog()
        let logger = Logger(label: "test") { _ in log }
        let parts = WorkerParts()
        let counts = Mutex<[Int]>([])
        let watchdog = parts.startWatchdog(every: .milliseconds(50), slack: .milliseconds(100), logger: logger) { count in
            counts.withLock { $0.append(count) }
        }
        let stuck = Task {
            await parts.run(parts.activity("heartbeat")) { activity in
                activity.at("renewing leases", bound: .milliseconds(100))
                // A continuation nobody resumes until the test lets it go.
                await OneShotEvent().waitForever()
            }
        }
        let reported = await eventually(timeout: .seconds(10)) {
            log.messages.contains { $0.hasPrefix("worker part heartbeat has been at 'renewing leases'") }
        }
        #expect(reported, "\(log.messages)")
        #expect(counts.withLock { $0.contains(1) })
        stuck.cancel()
        await stuck.value
        // Once the part ended, it is no longer stalled.
        #expect(await eventually(timeout: .seconds(10)) { counts.withLock { $0.last == 0 } })
        #expect(log.messages.contains { $0.hasPrefix("worker part heartbeat moved on after") && $0.hasSuffix("at 'renewing leases'") }, "\(log.messages)")
        watchdog.stop()
        let seen = counts.withLock { $0.count }
        try await Task.sleep(for: .milliseconds(300))
        #expect(counts.withLock { $0.count } == seen, "the watchdog went on after stop()")
    }
}
