import Foundation
import LocoShared

/// An exclusive lock on a file, shared by the processes of one machine (worker processes, the
/// API): `flock`, polled so that a waiting task stays cancellable and blocks no thread.
struct FileLock: Sendable {
    let file: URL

    func withLock<T>(_ body: () async throws -> T) async throws -> T {
        try FileManager.default.createDirectory(at: file.deletingLastPathComponent(), withIntermediateDirectories: true)
        let fd = open(file.path, O_CREAT | O_RDWR | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw FileLockError(path: file.path, errno: errno) }
        defer { close(fd) }
        while flock(fd, LOCK_EX | LOCK_NB) != 0 { try await Task.sleep(for: .milliseconds(20)) }
        defer { flock(fd, LOCK_UN) }
        return try await body()
    }
}

struct FileLockError: CodedError {
    var path: String
    var errno: Int32
    var code: String { "runtime_unavailable" }
    var message: String { "cannot open the lock file \(path): \(String(cString: strerror(errno)))" }
    var hint: String { "Make the folder writable for this process (the workers' and the API's --work-dir, LOCO_WORK_DIR)." }
}
