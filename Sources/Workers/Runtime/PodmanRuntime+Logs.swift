import Foundation
import LocoCore
import NIOConcurrencyHelpers

extension PodmanRuntime {
    public func logStream(team: String, app: String, options: LogOptions) -> AsyncThrowingStream<LogLine, any Error> {
        AsyncThrowingStream { continuation in
            let task = Task {
                do {
                    if options.follow {
                        try await follow(team: team, app: app, options: options) { continuation.yield($0) }
                    } else {
                        for line in try await collect(team: team, app: app, options: options) { continuation.yield(line) }
                    }
                    continuation.finish()
                } catch {
                    continuation.finish(throwing: error)
                }
            }
            continuation.onTermination = { _ in task.cancel() }
        }
    }

    /// Without follow: the lines of every container of the app and Loco's own about them, merged by time.
    func collect(team: String, app: String, options: LogOptions) async throws -> [LogLine] {
        let found = try await containers(team: team, app: app).filter { options.service == nil || $0.Config.Labels?["loco.service"] == options.service }
        let deployments = Set(found.compactMap { $0.Config.Labels?["loco.deployment"].flatMap { Int64($0) } })
        var collected = Array(platformLines(platformLog.lines(team: team, app: app).lines, of: deployments, options).suffix(options.tail ?? Int.max))
        try await withThrowingTaskGroup(of: [LogLine].self) { group in
            for container in found {
                let labels = container.Config.Labels ?? [:]
                var arguments = ["logs", "--timestamps"]
                if let since = options.since { arguments += ["--since", "\(Int64(since.timeIntervalSince1970))"] }
                if let tail = options.tail { arguments += ["--tail", "\(tail)"] }
                arguments.append(container.Name)
                group.addTask {
                    let lines = LineBuffer()
                    _ = try await ProcessRunner.run(podman, arguments, environment: environment, timeout: .seconds(60)) { lines.add($0) }
                    return lines.take().map { Self.logLine($0, labels: labels, name: container.Name) }
                }
            }
            for try await lines in group { collected += lines }
        }
        return collected.sorted { ($0.at ?? .distantPast) < ($1.at ?? .distantPast) }
    }

    /// With follow: the app's lines as they come, from every container it runs now or later (one
    /// started again after a crash, a new version's), and Loco's own, until the stream is
    /// cancelled, as `fly logs` and `heroku logs --tail` do. `podman logs --follow` ends when its
    /// container exits, so a container that runs again is followed again from its new start.
    func follow(team: String, app: String, options: LogOptions, yield: @escaping @Sendable (LogLine) -> Void) async throws {
        struct Followed {
            var active: Bool
            /// The time of the last line shown: a follow that starts again skips up to it.
            var lastAt: Date?
        }
        let followed = NIOLockedValueBox<[String: Followed]>([:])
        var platformOffset: UInt64 = 0
        var first = true
        try await withThrowingDiscardingTaskGroup { group in
            while !Task.isCancelled {
                let containers = try await listed(team: team, app: app).filter { options.service == nil || $0.Labels?["loco.service"] == options.service }
                let deployments = Set(containers.compactMap { $0.Labels?["loco.deployment"].flatMap { Int64($0) } })
                let (written, end) = platformLog.lines(team: team, app: app, from: platformOffset)
                platformOffset = end
                let said = platformLines(written, of: deployments, options)
                for line in first ? Array(said.suffix(options.tail ?? Int.max)) : said { yield(line) }
                for container in containers {
                    let seen = followed.withLockedValue { $0[container.Id] }
                    // Followed now; or its run ended and it has not started again (yet).
                    if seen?.active == true || (seen != nil && container.State != "running") { continue }
                    var arguments = ["logs", "--timestamps", "--follow"]
                    if seen != nil {
                        arguments += ["--since", "\(container.StartedAt)"]
                    } else {
                        if let since = options.since { arguments += ["--since", "\(Int64(since.timeIntervalSince1970))"] }
                        if first, let tail = options.tail { arguments += ["--tail", "\(tail)"] }
                    }
                    arguments.append(container.name)
                    let skipUntil = seen?.lastAt
                    followed.withLockedValue { $0[container.Id] = Followed(active: true, lastAt: skipUntil) }
                    let labels = container.Labels ?? [:]
                    group.addTask { [podman, environment] in
                        // A podman that fails (the container just went) is tried again at the next look.
                        _ = try? await ProcessRunner.run(podman, arguments, environment: environment, timeout: .seconds(86_400)) { text in
                            let line = Self.logLine(text, labels: labels, name: container.name)
                            if let skipUntil, let at = line.at, at <= skipUntil { return }
                            followed.withLockedValue { if let at = line.at { $0[container.Id]?.lastAt = at } }
                            yield(line)
                        }
                        followed.withLockedValue { $0[container.Id]?.active = false }
                    }
                }
                first = false
                try await Task.sleep(for: .seconds(1))
            }
        }
    }

    /// Loco's own lines about the containers of these deployments, by the request's service and time.
    func platformLines(_ lines: [LogLine], of deployments: Set<Int64>, _ options: LogOptions) -> [LogLine] {
        lines.filter { line in
            (line.deploymentID.map(deployments.contains) ?? false) && (options.service == nil || line.service == options.service)
                && (options.since.map { (line.at ?? .distantPast) >= $0 } ?? true)
        }
    }

    /// A line of `podman logs --timestamps`, with what the container's labels say.
    static func logLine(_ text: String, labels: [String: String], name: String) -> LogLine {
        logLine(text, service: labels["loco.service"] ?? name, deploymentID: labels["loco.deployment"].flatMap { Int64($0) },
                replica: labels["loco.replica"].flatMap { Int($0) } ?? 1)
    }
}
