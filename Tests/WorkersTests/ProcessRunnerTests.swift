import Dispatch
import Foundation
import LocoTestSupport
import Testing
@testable import Workers

@Suite("Child processes")
struct ProcessRunnerTests {
    @Test("a child starts with default signal handling, whatever its parent ignores or blocks")
    func defaultSignals() async throws {
        // A signal source (as ServiceLifecycle makes for SIGTERM) and an ignored signal in this process.
        let source = DispatchSource.makeSignalSource(signal: SIGUSR2, queue: .global())
        source.setEventHandler {}
        source.resume()
        let previous = signal(SIGHUP, SIG_IGN)
        defer {
            signal(SIGHUP, previous)
            source.cancel()
        }
        let output = LineBuffer()
        let outcome = try await ProcessRunner.run("/bin/grep", ["-E", "^Sig(Blk|Ign)", "/proc/self/status"], environment: [:],
                                                  timeout: .seconds(10)) { output.add($0) }
        #expect(outcome.status == 0)
        let lines = output.take()
        // Masks of signals 1…64; signals 1…31 are the standard ones (32 and up belong to glibc and to real-time use).
        let masks = Dictionary(uniqueKeysWithValues: lines.compactMap { line -> (String, UInt64)? in
            let parts = line.split(separator: ":")
            guard parts.count == 2, let mask = UInt64(parts[1].trimmingCharacters(in: .whitespaces), radix: 16) else { return nil }
            return (String(parts[0]), mask)
        })
        #expect(masks["SigBlk"].map { $0 & 0x7fff_ffff } == 0, "blocked: \(lines)")
        #expect(masks["SigIgn"].map { $0 & 0x7fff_ffff } == 0, "ignored: \(lines)")
    }

    @Test("a child inherits only stdin, stdout and stderr: not this process's sockets or files")
    func onlyStandardDescriptors() async throws {
        // A socket, as NIO opens them: without close-on-exec.
        let socket = Glibc.socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        let file = open("/dev/null", O_RDONLY)
        #expect(socket >= 3 && file >= 3)
        defer {
            close(socket)
            close(file)
        }
        let output = LineBuffer()
        // `ls` lists its own descriptors: 0, 1, 2 and the one it reads the folder through.
        let outcome = try await ProcessRunner.run("/bin/ls", ["/proc/self/fd"], environment: [:], timeout: .seconds(10)) { output.add($0) }
        #expect(outcome.status == 0)
        let inherited = Set(output.take().compactMap { Int32($0) })
        #expect(!inherited.contains(socket) && !inherited.contains(file), "the child holds \(inherited.sorted())")
        #expect(inherited.isSuperset(of: [0, 1, 2]))
        #expect(inherited.count <= 4, "the child holds \(inherited.sorted())")
    }

    @Test("what a command leaves behind is killed with it, unless the command starts a daemon")
    func leftBehind() async throws {
        for leavesDaemon in [false, true] {
            let output = LineBuffer()
            // The background sleep stays in the command's process group, as a daemon does until setsid.
            let outcome = try await ProcessRunner.run("/bin/sh", ["-c", "sleep 30 >/dev/null 2>&1 & echo $!"], environment: [:],
                                                      timeout: .seconds(10), leavesDaemon: leavesDaemon) { output.add($0) }
            #expect(outcome.status == 0)
            let pid = try #require(output.take().first.flatMap { pid_t($0) })
            try await Task.sleep(for: .milliseconds(100))
            let alive = LocalEntryPoint.isRunning(pid)
            #expect(alive == leavesDaemon, "leavesDaemon: \(leavesDaemon)")
            if alive { kill(pid, SIGKILL) }
        }
    }
}
