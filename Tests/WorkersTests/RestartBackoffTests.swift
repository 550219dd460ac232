import Foundation
import Logging
import Testing
@testable import Workers

@Suite("Crash-loop back-off (the local runtime's restarts)")
struct RestartBackoffTests {
    @Test("the first exit restarts at once, then 10 s, 20 s, 40 s … doubling up to 5 minutes")
    func delaysDouble() {
        let backoff = RestartBackoff()
        #expect((0...8).map { backoff.delay(afterRestarts: $0) } == [0, 10, 20, 40, 80, 160, 300, 300, 300])
        #expect(backoff.delay(afterRestarts: 10_000) == 300, "a long streak neither overflows nor exceeds the cap")
    }

    @Test("a run of 10 minutes starts the streak over; a shorter one continues it")
    func longRunResets() {
        let backoff = RestartBackoff()
        #expect(backoff.streak(6, afterRunOf: 600) == 0)
        #expect(backoff.streak(6, afterRunOf: 599) == 6)
        #expect(backoff.delay(afterRestarts: backoff.streak(6, afterRunOf: 3_600)) == 0)
    }

    @Test("a start that failed counts as a try: the next waits from it, and the long run before the exit no longer starts the count over")
    func failedStartWaits() {
        let backoff = RestartBackoff()
        let exitedAt = Date(timeIntervalSince1970: 1_796_000_000)
        var record = RestartRecord()
        record.streak = 3
        // An hour's run, then an exit: the count starts over and it starts at once.
        let first = backoff.nextStart(exitedAt: exitedAt, ranFor: 3_600, record: record)
        #expect(first.streak == 0 && first.at == exitedAt)
        // That start failed (its port taken): the next waits 10 s from the try, not 0 s at every pass.
        record.streak = 1
        record.lastAttemptAt = exitedAt.addingTimeInterval(1)
        let second = backoff.nextStart(exitedAt: exitedAt, ranFor: 3_600, record: record)
        #expect(second.streak == 1 && second.at == exitedAt.addingTimeInterval(11))
        // A start that worked, then a short run and an exit after it: the streak goes on from the exit.
        let later = exitedAt.addingTimeInterval(30)
        let third = backoff.nextStart(exitedAt: later, ranFor: 20, record: record)
        #expect(third.streak == 1 && third.at == later.addingTimeInterval(10))
    }

    @Test("podman's reason for a failed start is cut to the point")
    func startFailureReason() {
        let output = """
            time="2026-12-03T14:51:28Z" level=warning msg="something first"
            Error: unable to start container "cc2eebd2383bb9b8364ff210523292b0fa6fee575379349726685e89aa42f98f": rootlessport listen tcp 127.0.0.1:41053: bind: address already in use

            """
        #expect(ContainerSupervisor.startFailure(output) == "rootlessport listen tcp 127.0.0.1:41053: bind: address already in use")
        #expect(ContainerSupervisor.startFailure("Error: no container with name or ID \"x\" found: no such container")
                == "no container with name or ID \"x\" found: no such container")
        #expect(ContainerSupervisor.startFailure("") == "podman start failed without a message")
        #expect(ContainerSupervisor.startFailure(String(repeating: "x", count: 1_000)).count == 300)
    }

    @Test("the record survives a round trip through restarts.json; a missing or unreadable file reads as empty")
    func bookRoundTrip() throws {
        let folder = FileManager.default.temporaryDirectory.appending(path: "loco-book-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        let book = RestartBook(file: folder.appending(path: "restarts.json"))
        #expect(book.read().isEmpty)
        var record = RestartRecord()
        record.restarts = 3
        record.streak = 2
        record.lastExitCode = 137
        record.nextStartAt = Date(timeIntervalSince1970: 1_796_295_852)
        try book.write(["abc": record])
        #expect(book.read() == ["abc": record])
        try Data("{not json".utf8).write(to: book.file)
        #expect(book.read().isEmpty)
    }
}

@Suite("The supervisor's failures")
struct SupervisorFailureTests {
    @Test("a lock file that cannot be opened is a coded error naming the file and what to do")
    func lockFileRefused() async throws {
        let lock = FileLock(file: URL(fileURLWithPath: "/proc/self/loco-restarts.lock"))
        do {
            _ = try await lock.withLock { 1 }
            Issue.record("the lock was taken")
        } catch let error as FileLockError {
            #expect(error.code == "runtime_unavailable" && error.message.contains("/proc/self/loco-restarts.lock") && error.hint.contains("LOCO_WORK_DIR"),
                    "\(error)")
        }
    }

    @Test("podman that cannot list the containers fails the pass with a coded error, and the pass records nothing")
    func podmanListFails() async throws {
        let folder = FileManager.default.temporaryDirectory.appending(path: "loco-supervisor-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: folder) }
        let runtime = try PodmanRuntime(stateFolder: folder, podman: "/bin/false", logger: Logger(label: "test"))
        defer { PodmanRuntime.removeRunroot(stateFolder: folder) }
        do {
            _ = try await ContainerSupervisor(runtime: runtime, logger: Logger(label: "test")).pass()
            Issue.record("the pass succeeded")
        } catch let error as PodmanListError {
            #expect(error.code == "runtime_unavailable" && error.message.hasPrefix("podman could not list the app containers") && error.hint.contains("podman ps"),
                    "\(error)")
        }
        #expect(!FileManager.default.fileExists(atPath: folder.appending(path: "restarts.json").path))
    }
}
