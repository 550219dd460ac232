import Foundation
import LocoCore
import Logging

/// Starts the serving version's containers again after they exit, as the kubelet does for a
/// pod's: at once the first time, then with `RestartBackoff`'s growing waits. podman 4.3's own
/// restart policy has no back-off (a container that exited right after start was restarted 32
/// times in 10 s). Only the version the app's address routes to is started again: one still
/// rolling out must fail its rollout (`CRASH_LOOP`), and an older one is on its way out.
/// `locod api` runs it on the local runtime; several running at once take turns (a file lock).
public struct ContainerSupervisor: Sendable {
    public let runtime: PodmanRuntime
    public let backoff: RestartBackoff
    let logger: Logger

    public init(runtime: PodmanRuntime, backoff: RestartBackoff = RestartBackoff(), logger: Logger) {
        self.runtime = runtime
        self.backoff = backoff
        self.logger = logger
    }

    /// A container started again.
    public struct Restart: Sendable, Equatable {
        public var name: String
        public var exitCode: Int32
        public var restarts: Int
        /// team/app, and the service, from the container's labels.
        public var app: String
        public var service: String
    }

    /// One look at every app container: starts those due, records when the others are.
    @discardableResult
    public func pass(now: Date = Date()) async throws -> [Restart] {
        // Nothing was ever run on this storage (an API started before any worker).
        guard FileManager.default.fileExists(atPath: runtime.stateFolder.appending(path: "containers.conf").path) else { return [] }
        let book = runtime.restartBook
        return try await book.lock.withLock {
            let listed = try await runtime.listed()
            let recorded = book.read()
            var records = recorded.filter { id, _ in listed.contains { $0.Id == id } }
            var serving: [String: Int64?] = [:]
            var restarted: [Restart] = []
            for container in listed where container.hasEnded {
                guard let owner = container.owner, let deployment = container.Labels?["loco.deployment"].flatMap(Int64.init) else { continue }
                let app = "\(owner.team)/\(owner.app)"
                if serving[app] == nil { serving[app] = runtime.entryPoint.servingGeneration(team: owner.team, app: owner.app) }
                guard serving[app] == .some(deployment) else { continue }
                var record = records[container.Id] ?? RestartRecord()
                let exitedAt = Date(timeIntervalSince1970: TimeInterval(container.ExitedAt))
                let ranFor = TimeInterval(container.ExitedAt - container.StartedAt)
                let (streak, due) = backoff.nextStart(exitedAt: exitedAt, ranFor: ranFor, record: record)
                guard now >= due else {
                    if record.nextStartAt == nil {
                        let wait = Int(due.timeIntervalSince(now).rounded(.up))
                        say("\(try await exitDescription(container)); starts again in \(wait) s (crash-loop back-off)", about: container, at: now)
                    }
                    record.nextStartAt = due
                    records[container.Id] = record
                    continue
                }
                let (status, output) = try await runtime.run(["start", container.Id])
                record.streak = streak + 1
                record.lastAttemptAt = now
                if status == 0 {
                    record.restarts += 1
                    record.lastExitCode = container.ExitCode
                    record.lastError = nil
                    restarted.append(Restart(name: container.name, exitCode: container.ExitCode, restarts: record.restarts, app: app,
                                             service: container.Labels?["loco.service"] ?? container.name))
                    // A wait was announced with its exit code; an immediate restart says it now.
                    say(record.nextStartAt == nil ? "\(try await exitDescription(container)); started again (restart \(record.restarts))"
                                                  : "started again after its back-off (restart \(record.restarts))", about: container, at: now)
                    logger.info("started a serving container again", metadata: ["container": "\(container.name)", "exit_code": "\(container.ExitCode)",
                                                                                "restarts": "\(record.restarts)"])
                    record.nextStartAt = nil
                } else {
                    let reason = Self.startFailure(output)
                    record.lastError = reason
                    // The failed start counts as a try (`nextStart` waits from it).
                    let retry = backoff.nextStart(exitedAt: exitedAt, ranFor: ranFor, record: record).at
                    record.nextStartAt = retry
                    say("could not be started again (\(reason)); tries again in \(Int(retry.timeIntervalSince(now).rounded(.up))) s", about: container, at: now)
                    logger.warning("could not start a serving container again", metadata: ["container": "\(container.name)", "podman": "\(reason)"])
                }
                records[container.Id] = record
            }
            // Most passes find every container running: nothing to write.
            if records != recorded { try book.write(records) }
            return restarted
        }
    }

    /// podman's reason, to the point: its last line, without `Error: ` and `unable to start
    /// container "<64 hex digits>": ` (the instance already says which), at most 300 characters.
    static func startFailure(_ output: String) -> String {
        let last = output.split(separator: "\n").last { !$0.trimmingCharacters(in: .whitespaces).isEmpty }
            .map { $0.trimmingCharacters(in: .whitespaces) } ?? "podman start failed without a message"
        var reason = Substring(last)
        if reason.hasPrefix("Error: ") { reason = reason.dropFirst("Error: ".count) }
        if reason.hasPrefix("unable to start container \""), let end = reason.range(of: "\": ") { reason = reason[end.upperBound...] }
        return String(reason.prefix(300))
    }

    /// "exited with code 1", or for a kill the kernel logged as out of memory, says so.
    private func exitDescription(_ container: PodmanRuntime.Listed) async throws -> String {
        let killedForMemory = container.ExitCode == 137 ? try await runtime.killedForMemory(container.Id) : false
        return "exited with code \(container.ExitCode)" + (killedForMemory ? " (killed for using more than its memory limit)" : "")
    }

    /// One line of the app's platform log (`loco logs` shows it as `loco[web]`).
    private func say(_ text: String, about container: PodmanRuntime.Listed, at: Date) {
        guard let owner = container.owner else { return }
        let labels = container.Labels ?? [:]
        let line = LogLine(at: at, service: labels["loco.service"] ?? container.name, deploymentID: labels["loco.deployment"].flatMap(Int64.init),
                           replica: labels["loco.replica"].flatMap(Int.init) ?? 1, line: text, source: "loco")
        do { try runtime.platformLog.append(line, team: owner.team, app: owner.app) } catch {
            logger.warning("could not write the platform log", metadata: ["error": "\(error)"])
        }
    }

    /// Passes every `interval` until the task is cancelled; `restarted` hears of each restart.
    public func run(every interval: Duration, restarted: @Sendable (Restart) -> Void = { _ in }) async {
        while !Task.isCancelled {
            do { try await pass().forEach(restarted) } catch is CancellationError { return } catch {
                logger.warning("container supervision failed", metadata: ["error": "\(error)"])
            }
            try? await Task.sleep(for: interval)
        }
    }
}
