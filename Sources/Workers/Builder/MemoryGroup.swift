import Foundation
import Logging

/// A cgroup v1 memory group for one build (`/sys/fs/cgroup/memory/loco-builds/<id>`): the kernel
/// kills what the build runs once it passes the limit, and the group says that it did.
struct MemoryGroup {
    static let root = "/sys/fs/cgroup/memory"
    let path: String

    var procsFile: String { path + "/cgroup.procs" }

    /// `nil` when there is no limit or this host offers no writable cgroup v1 memory controller
    /// (then builds run unlimited, and the worker logs so once per build).
    static func make(limit: Int64?, logger: Logger) -> MemoryGroup? {
        guard let limit else { return nil }
        let path = "\(root)/loco-builds/\(UUID().uuidString.lowercased())"
        do {
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
            try "\(limit)".write(toFile: path + "/memory.limit_in_bytes", atomically: false, encoding: .utf8)
            // Swap would let a build go past the limit slowly instead of failing.
            try? "\(limit)".write(toFile: path + "/memory.memsw.limit_in_bytes", atomically: false, encoding: .utf8)
            return MemoryGroup(path: path)
        } catch {
            logger.warning("builds run without a memory limit: no writable cgroup v1 memory controller", metadata: ["path": "\(path)", "error": "\(error)"])
            try? FileManager.default.removeItem(atPath: path)
            return nil
        }
    }

    /// Whether the kernel killed something in the group for memory.
    var outOfMemory: Bool {
        if let control = try? String(contentsOfFile: path + "/memory.oom_control", encoding: .utf8),
           let line = control.split(separator: "\n").first(where: { $0.hasPrefix("oom_kill ") }),
           let count = Int(line.split(separator: " ").last ?? ""), count > 0 { return true }
        let failures = (try? String(contentsOfFile: path + "/memory.failcnt", encoding: .utf8)).flatMap { Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) } ?? 0
        return failures > 0
    }

    /// Removes the group once its processes are gone (rmdir fails while any remain).
    func remove() {
        for _ in 0..<50 {
            if rmdir(path) == 0 || errno == ENOENT { return }
            usleep(20_000)
        }
    }
}
