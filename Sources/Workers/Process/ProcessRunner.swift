import Foundation
import LocoShared
#if canImport(Glibc)
import Glibc
#endif

/// Runs a command in its own process group, hands its output (stdout and stderr merged) over
/// line by line as it comes, and kills the whole group at a deadline. posix_spawn and waitpid
/// directly: Foundation's Process leaves zombies on Linux under load.
/// glibc's pipe2 (Swift's Glibc module leaves it out: it is a GNU extension). Atomic, unlike
/// pipe() followed by fcntl, so no spawn on another thread can slip in between.
@_silgen_name("pipe2")
private func systemPipe2(_ fds: UnsafeMutablePointer<Int32>, _ flags: Int32) -> Int32

/// glibc's posix_spawn_file_actions_addchdir_np (2.29+; also left out of Swift's Glibc module):
/// the child starts in another folder without the parent changing its own.
@_silgen_name("posix_spawn_file_actions_addchdir_np")
private func systemAddChdir(_ actions: UnsafeMutablePointer<posix_spawn_file_actions_t>, _ path: UnsafePointer<CChar>) -> Int32

/// Set once, read from another thread.
final class ExitFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false
    func set() { lock.lock(); value = true; lock.unlock() }
    var isSet: Bool { lock.lock(); defer { lock.unlock() }; return value }
}

public enum ProcessRunner {
    public struct Outcome: Sendable {
        public var status: Int32
        public var timedOut: Bool
    }

    /// `leavesDaemon`: the command starts a daemon and exits, so what it forked lives on after
    /// it (the daemon leaves the process group only once it calls setsid, a moment later).
    /// `directory`: where the command runs (default: this process's working directory).
    public static func run(_ executable: String, _ arguments: [String], environment: [String: String],
                           timeout: Duration, leavesDaemon: Bool = false, directory: String? = nil,
                           onLine: @escaping @Sendable (String) -> Void) async throws -> Outcome {
        var fds: [Int32] = [0, 0]
        // Close-on-exec: otherwise every process spawned meanwhile (by this or any other task)
        // inherits the write end, and this reader waits for EOF until that process dies — a
        // container monitor can live for hours. The child's own copy is made by dup2, which
        // clears the flag.
        guard systemPipe2(&fds, O_CLOEXEC) == 0 else { throw POSIXError(.init(rawValue: errno) ?? .EIO) }
        let (readEnd, writeEnd) = (fds[0], fds[1])
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, writeEnd, 1)
        posix_spawn_file_actions_adddup2(&actions, writeEnd, 2)
        posix_spawn_file_actions_addclose(&actions, readEnd)
        posix_spawn_file_actions_addclose(&actions, writeEnd)
        closeInheritedDescriptors(of: &actions)
        if let directory { _ = systemAddChdir(&actions, directory) }
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        resetSignals(of: &attributes, flags: Int32(POSIX_SPAWN_SETPGROUP))
        posix_spawnattr_setpgroup(&attributes, 0)

        let argv: [UnsafeMutablePointer<CChar>?] = ([executable] + arguments).map { strdup($0) } + [nil]
        let envp: [UnsafeMutablePointer<CChar>?] = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { (argv + envp).forEach { free($0) } }
        var pid: pid_t = 0
        let spawned = posix_spawn(&pid, executable, &actions, &attributes, argv, envp)
        close(writeEnd)
        guard spawned == 0 else {
            close(readEnd)
            throw POSIXError(.init(rawValue: spawned) ?? .ENOENT)
        }

        // Output on a thread of its own (reads block); lines are handed over as they complete.
        // Once the child has exited the reader drains what is there and stops, even if some
        // grandchild still holds the pipe open.
        let exited = ExitFlag()
        let reader = Thread {
            var pending = Data()
            var buffer = [UInt8](repeating: 0, count: 64 * 1024)
            while true {
                var poller = pollfd(fd: readEnd, events: Int16(POLLIN), revents: 0)
                let ready = poll(&poller, 1, 100)
                if ready == 0 {
                    if exited.isSet { break }
                    continue
                }
                if ready < 0 && errno == EINTR { continue }
                let count = buffer.withUnsafeMutableBytes { read(readEnd, $0.baseAddress, $0.count) }
                if count <= 0 { break }
                pending.append(contentsOf: buffer[0..<count])
                while let newline = pending.firstIndex(of: 10) {
                    onLine(String(decoding: pending[pending.startIndex..<newline], as: UTF8.self))
                    pending.removeSubrange(pending.startIndex...newline)
                }
            }
            if !pending.isEmpty { onLine(String(decoding: pending, as: UTF8.self)) }
            close(readEnd)
        }
        reader.start()

        let deadline = ContinuousClock.now + timeout
        var timedOut = false
        var status: Int32 = 0
        while true {
            let result = waitpid(pid, &status, WNOHANG)
            if result == pid { break }
            if result < 0 && errno != EINTR { break }
            if ContinuousClock.now >= deadline && !timedOut {
                timedOut = true
                kill(-pid, SIGKILL)
            }
            if Task.isCancelled && !timedOut {
                kill(-pid, SIGKILL)
            }
            try? await Task.sleep(for: .milliseconds(20))
        }
        // Children of the group that outlived the leader go too.
        if !leavesDaemon || timedOut { kill(-pid, SIGKILL) }
        exited.set()
        while !reader.isFinished { try? await Task.sleep(for: .milliseconds(5)) }
        let exitCode: Int32 = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        return Outcome(status: exitCode, timedOut: timedOut)
    }
}
