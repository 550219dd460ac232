import Foundation
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
