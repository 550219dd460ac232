import Foundation
import LocoQueue
import LocoShared

/// Paths of the repository and of the binaries `swift build` made.
public enum Repo {
    public static let root: URL = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// A built executable (`locod`, `loco`), next to the test bundle.
    public static func binary(_ name: String) throws -> URL {
        let candidates = [
            URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent(name),
            root.appendingPathComponent(".build/debug/\(name)"),
        ]
        guard let found = candidates.first(where: { FileManager.default.isExecutableFile(atPath: $0.path) }) else {
            throw TestSetupError("\(name) is not built; run `swift build` (scripts/test does) before the tests")
        }
        return found
    }
}

/// A child process whose output goes to a file (a pipe could fill up and block it).
///
/// Spawned with posix_spawn and reaped with waitpid: Foundation's Process on Linux can miss a
/// child's exit and leave it a zombie that still counts as running.
public final class ChildProcess: @unchecked Sendable {
    public let pid: pid_t
    let outputPath: String
    private let lock = NSLock()
    private var exitStatus: Int32?

    public init(_ executable: URL, _ arguments: [String], environment: [String: String] = [:]) throws {
        outputPath = FileManager.default.temporaryDirectory.appendingPathComponent("loco-child-\(UUID().uuidString).log").path
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, outputPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        // A binary a test starts must not hold other tests' database connections open.
        closeInheritedDescriptors(of: &actions)
        let env = ProcessInfo.processInfo.environment.merging(environment) { $1 }.map { "\($0.key)=\($0.value)" }
        let argv = [executable.path] + arguments
        var cArgs = argv.map { strdup($0) } + [nil]
        var cEnv = env.map { strdup($0) } + [nil]
        defer {
            cArgs.forEach { free($0) }
            cEnv.forEach { free($0) }
        }
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        resetSignals(of: &attributes)
        var pid: pid_t = 0
        let result = posix_spawn(&pid, executable.path, &actions, &attributes, &cArgs, &cEnv)
        guard result == 0 else { throw TestSetupError("cannot start \(executable.path): errno \(result)") }
        self.pid = pid
    }

    public var output: String { (try? String(contentsOfFile: outputPath, encoding: .utf8)) ?? "" }

    public func signal(_ signal: Int32) {
        if exitStatusIfExited() == nil { kill(pid, signal) }
    }

    /// The exit status (128+N for a signal), or nil while it runs.
    public func exitStatusIfExited() -> Int32? {
        lock.lock()
        defer { lock.unlock() }
        if let exitStatus { return exitStatus }
        var status: Int32 = 0
        guard waitpid(pid, &status, WNOHANG) == pid else { return nil }
        let signalled = status & 0x7f
        exitStatus = signalled == 0 ? (status >> 8) & 0xff : 128 + signalled
        return exitStatus
    }

    /// Waits for the exit status; nil if still running after `timeout`.
    public func waitForExit(timeout: Duration = .seconds(30)) async -> Int32? {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if let status = exitStatusIfExited() { return status }
            try? await Task.sleep(for: .milliseconds(20))
        }
        return exitStatusIfExited()
    }

    /// Kills it if it is still running and removes its output file; for cleanup paths.
    public func stop() {
        if exitStatusIfExited() == nil {
            kill(pid, SIGKILL)
            while exitStatusIfExited() == nil { usleep(10_000) }
        }
        try? FileManager.default.removeItem(atPath: outputPath)
    }
}

/// Runs a command to completion: (exit status, stdout + stderr).
public func runCommand(_ executable: URL, _ arguments: [String], environment: [String: String] = [:],
                       timeout: Duration = .seconds(60)) async throws -> (status: Int32, output: String) {
    let child = try ChildProcess(executable, arguments, environment: environment)
    defer { child.stop() }
    guard let status = await child.waitForExit(timeout: timeout) else {
        throw TestSetupError("\(executable.lastPathComponent) \(arguments.joined(separator: " ")) did not finish within \(timeout):\n\(child.output)")
    }
    return (status, child.output)
}

/// A port on 127.0.0.1 for a server a test starts: free now and outside the kernel's ephemeral
/// range, so that no outgoing connection takes it before the server binds (`LocalPorts`).
public func freePort() throws -> Int {
    guard let port = LocalPorts.free() else { throw TestSetupError("no free port on 127.0.0.1 outside the ephemeral range \(LocalPorts.ephemeral())") }
    return port
}

/// A PostgreSQL cluster of the test's own (via scripts/services), for tests that stop or
/// restart the server and so must not disturb the shared one.
public struct PrivatePostgres: Sendable {
    public let name: String
    public let url: DatabaseURL
    /// With `tls`: the folder of its CA (`ca.crt`, `ca.key`) and server certificate.
    public let tlsFolder: URL?
    static var script: URL { Repo.root.appendingPathComponent("scripts/services") }

    /// `tls`: TLS on, with a certificate for localhost and 127.0.0.1 from a CA of its own.
    public static func start(tls: Bool = false) async throws -> PrivatePostgres {
        let name = "test-\(UInt32.random(in: 0...UInt32.max))"
        let (status, output) = try await runCommand(URL(fileURLWithPath: "/bin/bash"), [script.path, "start", "--name", name] + (tls ? ["--tls"] : []))
        let lines = output.split(separator: "\n")
        func value(_ key: String) -> String? {
            lines.first(where: { $0.hasPrefix("\(key)=") }).map { String($0.dropFirst(key.count + 1)) }
        }
        guard status == 0, let url = value("LOCO_DATABASE_URL"), !tls || value("LOCO_DATABASE_TLS_URL") != nil else {
            throw TestSetupError("scripts/services start --name \(name)\(tls ? " --tls" : "") failed (it needs root, the postgres user, postgresql-15 and openssl):\n\(output)")
        }
        let tlsFolder = tls ? try DatabaseURL(value("LOCO_DATABASE_TLS_URL")!).tls.rootCertificate.map { URL(fileURLWithPath: $0).deletingLastPathComponent() } : nil
        return PrivatePostgres(name: name, url: try DatabaseURL(url), tlsFolder: tlsFolder)
    }

    /// Runs `body` with a cluster of its own (`tls`: see `start`), destroyed afterwards.
    public static func with(tls: Bool = false, _ body: (PrivatePostgres) async throws -> Void) async throws {
        let postgres = try await start(tls: tls)
        do {
            try await body(postgres)
        } catch {
            await postgres.destroy()
            throw error
        }
        await postgres.destroy()
    }

    public func stop() async throws { try await services("stop") }
    public func start() async throws { try await services("start") }
    public func destroy() async { try? await services("destroy") }

    private func services(_ verb: String) async throws {
        let (status, output) = try await runCommand(URL(fileURLWithPath: "/bin/bash"), [Self.script.path, verb, "--name", name])
        guard status == 0 else { throw TestSetupError("scripts/services \(verb) --name \(name) failed:\n\(output)") }
    }
}
