import Foundation
import LocoCore

/// What Loco itself says about an app's containers (a restart, a crash-loop back-off), shown by
/// `loco logs` among the app's own lines, as Heroku shows `heroku[web.1]` beside `app[web.1]`.
/// One JSON line per entry, a file per app beside the runtime's storage. Only the supervisor
/// writes (under its lock); readers take whole lines.
struct PlatformLog: Sendable {
    let folder: URL
    /// An app whose containers crash for days writes at most one entry per back-off (5 minutes);
    /// past this size only the last `kept` entries stay.
    static let limit = 1 << 20
    static let kept = 1000

    func file(team: String, app: String) -> URL { folder.appending(path: "\(team)--\(app).jsonl") }

    func append(_ line: LogLine, team: String, app: String) throws {
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        let url = file(team: team, app: app)
        if let size = (try? FileManager.default.attributesOfItem(atPath: url.path))?[.size] as? Int, size > Self.limit {
            let kept = read(url).suffix(Self.kept)
            try Data(kept.map { CoreJSON.encode($0) + "\n" }.joined().utf8).write(to: url, options: .atomic)
        }
        let handle = try FileHandle(forWritingTo: url, creatingIfMissing: true)
        defer { try? handle.close() }
        try handle.seekToEnd()
        try handle.write(contentsOf: Data((CoreJSON.encode(line) + "\n").utf8))
    }

    /// The app's entries, oldest first, and where the file ended (to follow it from there).
    func lines(team: String, app: String, from offset: UInt64 = 0) -> (lines: [LogLine], end: UInt64) {
        let url = file(team: team, app: app)
        guard let handle = try? FileHandle(forReadingFrom: url) else { return ([], offset) }
        defer { try? handle.close() }
        let end = (try? handle.seekToEnd()) ?? 0
        // The file was trimmed since: read it again from the start.
        let start = offset <= end ? offset : 0
        try? handle.seek(toOffset: start)
        guard let data = try? handle.read(upToCount: Int(end - start)), !data.isEmpty,
              let last = data.lastIndex(of: UInt8(ascii: "\n")) else { return ([], start) }
        // A line still being written (no newline yet) waits for the next read.
        let complete = data[data.startIndex...last]
        return (Self.parse(complete), start + UInt64(complete.count))
    }

    func remove(team: String, app: String) {
        try? FileManager.default.removeItem(at: file(team: team, app: app))
    }

    private func read(_ url: URL) -> [LogLine] {
        (try? Data(contentsOf: url)).map(Self.parse) ?? []
    }

    private static func parse(_ data: Data) -> [LogLine] {
        let decoder = CoreJSON.decoder
        return data.split(separator: UInt8(ascii: "\n")).compactMap { try? decoder.decode(LogLine.self, from: Data($0)) }
    }
}

extension FileHandle {
    convenience init(forWritingTo url: URL, creatingIfMissing: Bool) throws {
        if creatingIfMissing, !FileManager.default.fileExists(atPath: url.path) {
            FileManager.default.createFile(atPath: url.path, contents: nil, attributes: [.posixPermissions: 0o600])
        }
        try self.init(forWritingTo: url)
    }
}
