import AsyncHTTPClient
import Foundation
import LocoCore
import LocoShared
import Logging
import NIOCore
import NIOHTTP1

/// The local runtime: each service of each version is a podman container (runc, cgroupfs,
/// lowered ulimits — what works on these hosts), published on a 127.0.0.1 port, labelled with
/// its team, app, deployment and service so every later step finds it again.
public struct PodmanRuntime: Runtime {
    public let stateFolder: URL
    public let insecureRegistries: [String]
    let podman: String
    let logger: Logger

    let environment: [String: String]
    /// Each app's stable address, routed by path prefix to its serving containers.
    public let entryPoint: LocalEntryPoint

    /// `configure: false` for processes that only look at what the workers run (the API's logs,
    /// tests): the workers own the configuration files.
    public init(stateFolder: URL, insecureRegistries: [String] = [], podman: String = "/usr/bin/podman", configure: Bool = true, logger: Logger) throws {
        self.stateFolder = stateFolder
        self.entryPoint = LocalEntryPoint(folder: stateFolder.appending(path: "entry"))
        self.insecureRegistries = insecureRegistries
        self.podman = podman
        self.logger = logger
        self.environment = try ContainersConfig.write(stateFolder: stateFolder, insecureRegistries: insecureRegistries, engine: true, write: configure)
    }

    /// Where podman runs. The container monitor it starts (conmon 2.1) marks an out-of-memory
    /// kill with an empty file named `oom` in its working directory, so that directory is the
    /// state folder rather than wherever the worker was started (a repository, once).
    var workingDirectory: String? {
        FileManager.default.fileExists(atPath: stateFolder.path) ? stateFolder.path : nil
    }

    /// Runs podman; returns its exit status and output.
    func run(_ arguments: [String], extraEnvironment: [String: String] = [:], timeout: Duration = .seconds(300)) async throws -> (Int32, String) {
        let output = LineBuffer()
        let outcome = try await ProcessRunner.run(podman, arguments, environment: environment.merging(extraEnvironment) { _, new in new },
                                                  timeout: timeout, directory: workingDirectory) { output.add($0) }
        return (outcome.timedOut ? -1 : outcome.status, output.text)
    }

    /// Replicas after the first get `.rN`: a dot cannot be part of a service's name, so no
    /// service's first container can be named like another's second.
    static func containerName(team: String, app: String, deploymentID: Int64, service: String, replica: Int = 1) -> String {
        "loco-\(team)-\(app)-d\(deploymentID)-\(service)" + (replica == 1 ? "" : ".r\(replica)")
    }

    public func apply(_ desired: DesiredState) async throws -> AppliedVersion {
        guard FileManager.default.isExecutableFile(atPath: podman) else {
            throw RolloutFailure(code: "RUNTIME_UNAVAILABLE", message: "podman is not installed at \(podman)",
                                 hint: "Install it on the apply workers: apt-get install -y podman runc slirp4netns", service: nil, exitCode: nil, logTail: [])
        }
        var endpoints: [String: String] = [:]
        for service in desired.services {
            try await pull(service.image, credentials: desired.pullCredentials)
            for replica in 1...service.replicas {
                let name = Self.containerName(team: desired.team, app: desired.app, deploymentID: desired.deploymentID, service: service.name, replica: replica)
                let published = try await start(service, named: name, replica: replica, desired)
                if replica == 1 { endpoints[service.name] = published }
            }
        }
        return AppliedVersion(deploymentID: desired.deploymentID, endpoints: endpoints)
    }

    /// Starts one container of a service; returns where it is published.
    func start(_ service: ServiceSpec, named name: String, replica: Int, _ desired: DesiredState) async throws -> String? {
        // Re-applying converges: the same name is replaced.
        _ = try await run(["rm", "-f", "-t", "0", name])
        // slirp4netns, not the default CNI bridge: a user-space process listens on the published
        // port, where the bridge's iptables forwarding once refused every connection to a running
        // container for 10 s in a full test run (podman 4.3, CNI).
        // No podman restart policy: `ContainerSupervisor` starts the serving version's containers
        // again, with a back-off (podman 4.3 has none), on the same published port.
        var arguments = ["run", "-d", "--name", name, "--network", "slirp4netns",
                         "--label", "loco.app=\(desired.team)/\(desired.app)", "--label", "loco.deployment=\(desired.deploymentID)",
                         "--label", "loco.service=\(service.name)", "--label", "loco.replica=\(replica)", "-p", "127.0.0.1::\(service.port)"]
        if let memory = service.memoryBytes { arguments += ["--memory", "\(memory)", "--memory-swap", "\(memory)"] }
        if let cpus = service.cpus { arguments += ["--cpus", "\(cpus)"] }
        // Values travel in podman's environment, never on its command line (ps shows that).
        for key in service.env.keys.sorted() { arguments += ["--env", key] }
        arguments.append(service.image)
        let (status, output) = try await run(arguments, extraEnvironment: service.env)
        guard status == 0 else {
            throw RolloutFailure(code: "CRASH_LOOP", message: "podman could not start \(service.name): \(output.suffix(300))",
                                 hint: "Check the image's CMD/ENTRYPOINT and the run settings in loco.toml.", service: service.name, exitCode: status,
                                 logTail: Array(output.split(separator: "\n").suffix(30).map(String.init)))
        }
        let (_, port) = try await run(["port", name, "\(service.port)"])
        return port.split(separator: "\n").first.map { "http://\($0)" }
    }

    /// Pulls with an auth file written for the one call (credentials never on a command line).
    func pull(_ image: String, credentials: RegistryCredentials?) async throws {
        var arguments = ["pull", "--quiet"]
        var authFile: URL?
        if let credentials, let host = image.split(separator: "/").first {
            let file = stateFolder.appending(path: "auth-\(UUID().uuidString).json")
            let auth = Data("\(credentials.username):\(credentials.password)".utf8).base64EncodedString()
            try Data(#"{"auths":{"\#(host)":{"auth":"\#(auth)"}}}"#.utf8).write(to: file)
            chmod(file.path, 0o600)
            authFile = file
            arguments += ["--authfile", file.path]
        }
        defer { if let authFile { try? FileManager.default.removeItem(at: authFile) } }
        let (status, output) = try await run(arguments + [image])
        guard status == 0 else { throw RolloutFailure.imagePull(image, reason: output.split(separator: "\n").last.map(String.init) ?? "podman pull failed") }
    }

    struct Container: Decodable {
        struct State: Decodable {
            var Status: String
            var ExitCode: Int32
            var OOMKilled: Bool
            var StartedAt: String?
        }
        var Id: String
        var Name: String
        /// How often podman started it again after it exited (its restart policy).
        var RestartCount: Int?
        var State: State
        var Config: ContainerConfig
        struct ContainerConfig: Decodable { var Labels: [String: String]? }
    }

    /// One line of `podman ps --format json`: enough to decide about restarts in one call.
    struct Listed: Decodable {
        var Id: String
        var Names: [String]
        var State: String
        var ExitCode: Int32
        /// Unix seconds.
        var ExitedAt: Int64
        var StartedAt: Int64
        var Labels: [String: String]?

        var name: String { Names.first ?? Id }
        var hasEnded: Bool { ["exited", "stopped"].contains(State) }
        /// Its `loco.app` label, `team/app`, split.
        var owner: (team: String, app: String)? {
            let parts = (Labels?["loco.app"] ?? "").split(separator: "/", maxSplits: 1).map(String.init)
            return parts.count == 2 ? (parts[0], parts[1]) : nil
        }
    }

    /// Every app container on this storage, or one app's.
    func listed(team: String? = nil, app: String? = nil) async throws -> [Listed] {
        let label = team.flatMap { team in app.map { "label=loco.app=\(team)/\($0)" } } ?? "label=loco.app"
        let (status, json) = try await run(["ps", "-a", "--filter", label, "--format", "json"])
        guard status == 0 else { throw PodmanListError(output: String(json.suffix(300))) }
        guard let data = json.data(using: .utf8), !json.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty else { return [] }
        return try JSONDecoder().decode([Listed].self, from: data)
    }

    /// What `ContainerSupervisor` recorded of the containers it started again.
    var restartBook: RestartBook { RestartBook(file: stateFolder.appending(path: "restarts.json")) }
    /// What `ContainerSupervisor` said about each app's containers.
    var platformLog: PlatformLog { PlatformLog(folder: stateFolder.appending(path: "platform-logs")) }

    func containers(team: String, app: String, deploymentID: Int64? = nil) async throws -> [Container] {
        var filters = ["--filter", "label=loco.app=\(team)/\(app)"]
        if let deploymentID { filters += ["--filter", "label=loco.deployment=\(deploymentID)"] }
        let (_, names) = try await run(["ps", "-a", "--format", "{{.Names}}"] + filters)
        let list = names.split(separator: "\n").map(String.init).filter { !$0.isEmpty }
        guard !list.isEmpty else { return [] }
        let (status, json) = try await run(["inspect"] + list)
        if status == 0, let data = json.data(using: .utf8), let found = try? JSONDecoder().decode([Container].self, from: data) { return found }
        // One of them went away between the listing and the look (a cleanup removing an old
        // version): look at each on its own and keep those still there.
        var found: [Container] = []
        for name in list {
            let (status, json) = try await run(["inspect", name])
            if status == 0, let data = json.data(using: .utf8), let one = try? JSONDecoder().decode([Container].self, from: data) { found += one }
        }
        return found
    }

    public func endpoints(deploymentID: Int64, team: String, app: String) async throws -> [String: String] {
        try await replicaEndpoints(deploymentID: deploymentID, team: team, app: app).compactMapValues(\.first)
    }

    /// Each service's published addresses, one per running container, the first replica first.
    func replicaEndpoints(deploymentID: Int64, team: String, app: String) async throws -> [String: [String]] {
        try await replicaEndpoints(of: containers(team: team, app: app, deploymentID: deploymentID))
    }

    func replicaEndpoints(of containers: [Container]) async throws -> [String: [String]] {
        var found: [String: [(replica: Int, address: String)]] = [:]
        for container in containers {
            guard let service = container.Config.Labels?["loco.service"] else { continue }
            let (_, ports) = try await run(["port", container.Name])
            if let line = ports.split(separator: "\n").first, let address = line.split(separator: " ").last {
                found[service, default: []].append((Int(container.Config.Labels?["loco.replica"] ?? "1") ?? 1, "http://\(address)"))
            }
        }
        return found.mapValues { $0.sorted { $0.replica < $1.replica }.map(\.address) }
    }

    public func status(deploymentID: Int64, team: String, app: String, services: [ServiceSpec]) async throws -> RolloutState {
        let running = try await containers(team: team, app: app, deploymentID: deploymentID)
        let endpoints = try await replicaEndpoints(of: running)
        var waiting: [String] = []
        for service in services {
            // Every replica must run and answer: one that crashes fails the rollout, as on Kubernetes.
            let containers = running.filter { $0.Config.Labels?["loco.service"] == service.name }
            guard !containers.isEmpty else { return .progressing("\(service.name) has no container yet") }
            // Nothing starts a version that does not serve yet again: an exit is a crash.
            for container in containers where ["exited", "stopped", "dead"].contains(container.State.Status) {
                let tail = try await logTail(container.Name, lines: 30)
                let exitCode = container.State.ExitCode
                let killedForMemory = exitCode == 137 ? try await killedForMemory(container.Id) : false
                if container.State.OOMKilled || killedForMemory {
                    return .failed(.oomKilled(service: service.name, limit: service.memoryBytes, tail: tail))
                }
                return .failed(.crashLoop(service: service.name, exitCode: exitCode, tail: tail))
            }
            guard containers.count >= service.replicas else { return .progressing("\(service.name) has \(containers.count) of \(service.replicas) containers") }
            let addresses = endpoints[service.name] ?? []
            guard addresses.count >= service.replicas else { return .progressing("\(service.name) has no published port yet") }
            for (index, address) in addresses.enumerated() {
                let probe = await Self.probe(address + service.healthPath)
                if probe.ok { continue }
                waiting.append("\(service.name)\(addresses.count > 1 ? " (replica \(index + 1))" : ""): GET \(service.healthPath) \(probe.detail)")
            }
        }
        return waiting.isEmpty ? .ready : .progressing(waiting.joined(separator: "; "))
    }

    /// One readiness probe: 2xx or 3xx within 2 s.
    static func probe(_ url: String) async -> (ok: Bool, detail: String) {
        var request = HTTPClientRequest(url: url)
        request.method = .GET
        do {
            let response = try await RegistryClient.sharedHTTP.execute(request, timeout: .seconds(2))
            _ = try? await response.body.collect(upTo: 1 << 20)
            return ((200..<400).contains(Int(response.status.code)), "answered \(response.status.code)")
        } catch {
            return (false, "no answer (\(String(describing: error).prefix(80)))")
        }
    }

    /// podman here does not set OOMKilled; the kernel log names the container's memory cgroup.
    func killedForMemory(_ containerID: String) async throws -> Bool {
        let output = LineBuffer()
        _ = try? await ProcessRunner.run("/bin/dmesg", [], environment: environment, timeout: .seconds(10)) { output.add($0) }
        return output.text.split(separator: "\n").contains { $0.contains(containerID.prefix(12)) && $0.lowercased().contains("oom") }
    }

    public func instances(team: String, app: String) async throws -> [AppInstance] {
        let records = restartBook.read()
        var found: [AppInstance] = []
        for container in try await containers(team: team, app: app) {
            let labels = container.Config.Labels ?? [:]
            let record = records[container.Id]
            let ended = !["running", "created", "configured", "initialized"].contains(container.State.Status)
            found.append(AppInstance(service: labels["loco.service"] ?? container.Name, replica: labels["loco.replica"].flatMap { Int($0) } ?? 1,
                                     deploymentID: labels["loco.deployment"].flatMap { Int64($0) }, name: container.Name, state: container.State.Status,
                                     // One made before the supervisor existed may have restarts by podman's own policy.
                                     restarts: (record?.restarts ?? 0) + (container.RestartCount ?? 0),
                                     lastExitCode: ended ? container.State.ExitCode : record?.lastExitCode,
                                     startedAt: container.State.StartedAt.flatMap(Self.parseTimestamp),
                                     nextStartAt: ended ? record?.nextStartAt : nil, startError: ended ? record?.lastError : nil))
        }
        // The newest version first; in it, by service and replica.
        return found.sorted { a, b in
            a.deploymentID != b.deploymentID ? (a.deploymentID ?? 0) > (b.deploymentID ?? 0) : (a.service, a.replica) < (b.service, b.replica)
        }
    }

    func logTail(_ name: String, lines: Int) async throws -> [String] {
        let (_, output) = try await run(["logs", "--tail", "\(lines)", name])
        return output.split(separator: "\n", omittingEmptySubsequences: false).map(String.init).filter { !$0.isEmpty }
    }

    public func promote(deploymentID: Int64, team: String, app: String, services: [ServiceSpec]) async throws -> String {
        let endpoints = try await replicaEndpoints(deploymentID: deploymentID, team: team, app: app)
        let routes = services.compactMap { service in endpoints[service.name].map { LocalEntryPoint.Route(prefix: service.pathPrefix, upstreams: $0) } }
        let address: String
        do { address = try await entryPoint.publish(team: team, app: app, generation: deploymentID, routes: routes) } catch {
            throw RolloutFailure(code: "ENTRY_POINT_FAILED", message: "the app's local address could not be switched: \(error)",
                                 hint: "Install nginx on the wait workers (apt-get install -y nginx-light) and check \(entryPoint.folder.path)/error.log.",
                                 service: nil, exitCode: nil, logTail: [])
        }
        return address
    }

    public func retire(keeping deploymentID: Int64, team: String, app: String) async throws -> Int {
        var removed = 0
        // A graceful stop: SIGTERM, then SIGKILL after 5 s, as Kubernetes' grace period does.
        // Only older versions: a cleanup that runs late (retried, or held up) must not stop a
        // newer version that serves or rolls out meanwhile.
        for container in try await containers(team: team, app: app)
            where (container.Config.Labels?["loco.deployment"].flatMap { Int64($0) } ?? 0) < deploymentID {
            _ = try await run(["rm", "-f", "-t", "5", container.Name])
            removed += 1
        }
        return removed
    }

    public func remove(deploymentID: Int64, team: String, app: String) async throws {
        for container in try await containers(team: team, app: app, deploymentID: deploymentID) {
            _ = try await run(["rm", "-f", "-t", "0", container.Name])
        }
    }

    /// Removes every app container this runtime's storage holds, then podman's runtime state
    /// under /run (tests, whose storage goes with them).
    public func removeEverything() async throws {
        let (_, names) = try await run(["ps", "-a", "--format", "{{.Names}}", "--filter", "label=loco.app"])
        for name in names.split(separator: "\n") where !name.isEmpty { _ = try await run(["rm", "-f", "-t", "0", String(name)]) }
        Self.removeRunroot(stateFolder: stateFolder)
    }

    /// podman's runtime state of a storage about to go (see `ContainersConfig.podmanRunroot`).
    public static func removeRunroot(stateFolder: URL) { ContainersConfig.removePodmanRunroot(stateFolder) }

    public func removeApp(team: String, app: String) async throws {
        // The address goes first, under the supervisor's lock: from then on the app serves
        // nothing, so no supervisor pass starts a container again while it is being removed
        // (a start racing a removal left a container monitor running once).
        try await restartBook.lock.withLock { try await entryPoint.unpublish(team: team, app: app) }
        for container in try await containers(team: team, app: app) {
            _ = try await run(["rm", "-f", "-t", "0", container.Name])
        }
        try await restartBook.lock.withLock { platformLog.remove(team: team, app: app) }
    }

    /// `2026-11-26T23:59:01.123456789+00:00 text` (podman logs --timestamps) → a log line.
    static func logLine(_ text: String, service: String, deploymentID: Int64?, replica: Int = 1) -> LogLine {
        guard let space = text.firstIndex(of: " ") else { return LogLine(at: nil, service: service, deploymentID: deploymentID, replica: replica, line: text) }
        let stamp = String(text[..<space])
        let date = parseTimestamp(stamp)
        return LogLine(at: date, service: service, deploymentID: deploymentID, replica: replica,
                       line: date == nil ? text : String(text[text.index(after: space)...]))
    }

    static func parseTimestamp(_ stamp: String) -> Date? {
        // Nanoseconds are more than ISO8601DateFormatter reads: keep milliseconds.
        guard let dot = stamp.firstIndex(of: "."), let zone = stamp[dot...].firstIndex(where: { $0 == "+" || $0 == "-" || $0 == "Z" }) else {
            return try? Date(stamp, strategy: .iso8601)
        }
        let fraction = stamp[stamp.index(after: dot)..<zone].prefix(3)
        let trimmed = String(stamp[..<dot]) + "." + fraction.padding(toLength: 3, withPad: "0", startingAt: 0) + String(stamp[zone...])
        return try? Date(trimmed, strategy: Date.ISO8601FormatStyle(includingFractionalSeconds: true))
    }
}

/// `podman ps` failed: the storage cannot be read (its settings or runroot are gone).
struct PodmanListError: CodedError {
    var output: String
    var code: String { "runtime_unavailable" }
    var message: String { "podman could not list the app containers: \(output)" }
    var hint: String { "Check the workers' podman storage (LOCO_WORK_DIR/podman) and run 'podman ps' with its settings." }
}
