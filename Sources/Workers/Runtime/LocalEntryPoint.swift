import AsyncHTTPClient
import Foundation
import LocoShared
import NIOCore
import NIOHTTP1

/// One stable local address per app, routed by path prefix to the serving version's containers,
/// the way the Gateway's HTTPRoute does on Kubernetes. It is nginx (Debian's nginx-light) run by
/// Loco with its own configuration: a server per app on a 127.0.0.1 port kept across deploys, a
/// `location` per service prefix. A switch to a new version is a graceful `nginx -s reload`.
public struct LocalEntryPoint: Sendable {
    public let folder: URL
    let nginx: String

    public init(folder: URL, nginx: String = "/usr/sbin/nginx") {
        self.folder = folder
        self.nginx = nginx
    }

    public struct Route: Sendable, Equatable {
        public var prefix: String
        /// `http://127.0.0.1:PORT` of each replica; requests go round robin.
        public var upstreams: [String]
        public init(prefix: String, upstreams: [String]) {
            self.prefix = prefix
            self.upstreams = upstreams
        }
        public init(prefix: String, upstream: String) { self.init(prefix: prefix, upstreams: [upstream]) }
    }

    var appsFolder: URL { folder.appending(path: "apps") }
    var pidFile: URL { folder.appending(path: "nginx.pid") }

    /// Points the app's address at `routes` (the version `generation`) and returns the address
    /// once it answers with them: nginx reloads asynchronously, so the switch is confirmed by the
    /// `X-Loco-Version` header every answer carries.
    public func publish(team: String, app: String, generation: Int64, routes: [Route]) async throws -> String {
        try await locked {
            try prepare()
            let port = try port(team: team, app: app)
            let file = appsFolder.appending(path: "\(team)--\(app).conf")
            let previous = try? String(contentsOf: file, encoding: .utf8)
            try Self.server(port: port, generation: generation, routes: routes).write(to: file, atomically: true, encoding: .utf8)
            do {
                return try await switchOver(to: generation, at: "http://127.0.0.1:\(port)")
            } catch {
                // A configuration nginx cannot take would fail every later reload, for every app:
                // put back what served before.
                if let previous { try? previous.write(to: file, atomically: true, encoding: .utf8) } else { try? FileManager.default.removeItem(at: file) }
                if runningPID() != nil { try? await apply() }
                throw error
            }
        }
    }

    /// Applies the configuration and returns `address` once it serves `generation`.
    private func switchOver(to generation: Int64, at address: String) async throws -> String {
        let oldWorkers = runningPID().map(Self.children(of:)) ?? []
        let logStart = errorLogSize()
        try await apply()
        let deadline = ContinuousClock.now + .seconds(10)
        var seen = await Self.answer(at: address)
        while seen.version != generation {
            guard ContinuousClock.now < deadline else {
                throw EntryPointError(message: "nginx did not switch \(address) to version \(generation) within 10 s: \(seen.description)"
                                      + (errorLogTail(from: logStart).map { "; nginx logged: \($0)" } ?? ""))
            }
            try await Task.sleep(for: .milliseconds(25))
            seen = await Self.answer(at: address)
        }
        // An old worker still accepts until it gets round to closing its listening socket (seen
        // on a busy machine after the new version had answered): wait until the old ones are
        // gone, or a while if one is still finishing a long request.
        let settled = ContinuousClock.now + .seconds(3)
        while oldWorkers.contains(where: Self.isRunning), ContinuousClock.now < settled {
            try await Task.sleep(for: .milliseconds(25))
        }
        return address
    }

    /// The version the address routes to now, from its `X-Loco-Version` header.
    static func version(at address: String) async -> Int64? {
        await answer(at: address).version
    }

    /// What the address answered, for the version it routes to and, when a switch fails, why.
    struct Answer {
        var version: Int64?
        var description: String
    }

    static func answer(at address: String) async -> Answer {
        var request = HTTPClientRequest(url: address + "/")
        request.method = .HEAD
        // A new connection each time, as a new visitor gets: a kept-alive one may still be
        // served by an old worker of nginx after a reload.
        request.headers.add(name: "Connection", value: "close")
        do {
            let response = try await RegistryClient.sharedHTTP.execute(request, timeout: .seconds(2))
            guard let header = response.headers.first(name: "X-Loco-Version") else {
                return Answer(description: "it answered \(response.status.code) without an X-Loco-Version header")
            }
            return Answer(version: Int64(header), description: "it still answers as version \(header)")
        } catch {
            return Answer(description: "it does not answer (\(error))")
        }
    }

    var errorLog: URL { folder.appending(path: "error.log") }

    func errorLogSize() -> UInt64 {
        ((try? FileManager.default.attributesOfItem(atPath: errorLog.path))?[.size] as? NSNumber)?.uint64Value ?? 0
    }

    /// The last of nginx's `emerg` lines written after byte `offset` (this switch's), which say
    /// why a start or reload did not take. Only those: lower levels quote requests, whose URLs
    /// may carry secrets.
    func errorLogTail(from offset: UInt64, lines: Int = 3) -> String? {
        guard let handle = try? FileHandle(forReadingFrom: errorLog) else { return nil }
        defer { try? handle.close() }
        guard (try? handle.seek(toOffset: offset)) != nil, let data = try? handle.readToEnd() else { return nil }
        let tail = String(decoding: data, as: UTF8.self).split(separator: "\n").filter { $0.contains("[emerg]") }
            .suffix(lines).joined(separator: " | ")
        return tail.isEmpty ? nil : String(tail.suffix(1200))
    }

    /// The app's address, if it has one.
    public func address(team: String, app: String) -> String? {
        guard let text = try? String(contentsOf: folder.appending(path: "ports/\(team)--\(app)"), encoding: .utf8), let port = Int(text) else { return nil }
        return "http://127.0.0.1:\(port)"
    }

    /// The version (deployment) the app's address routes to, from its configuration; nil when
    /// the app has no address.
    public func servingGeneration(team: String, app: String) -> Int64? {
        guard let text = try? String(contentsOf: appsFolder.appending(path: "\(team)--\(app).conf"), encoding: .utf8),
              let header = text.range(of: "add_header X-Loco-Version ") else { return nil }
        return Int64(text[header.upperBound...].prefix { $0.isNumber })
    }

    /// Removes the app's address (the app was deleted).
    public func unpublish(team: String, app: String) async throws {
        try await locked {
            try? FileManager.default.removeItem(at: appsFolder.appending(path: "\(team)--\(app).conf"))
            let address = self.address(team: team, app: app)
            try? FileManager.default.removeItem(at: folder.appending(path: "ports/\(team)--\(app)"))
            if runningPID() != nil { try await apply() }
            // The reload is asynchronous: wait until the address stops answering.
            if let address {
                let deadline = ContinuousClock.now + .seconds(10)
                while await Self.version(at: address) != nil, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(25)) }
            }
        }
    }

    /// Stops nginx (for `scripts/demo stop` and tests); the addresses stay reserved for the next start.
    public func stop() {
        guard let pid = runningPID() else { return }
        kill(pid, SIGQUIT)
        for _ in 0..<50 where kill(pid, 0) == 0 { usleep(100_000) }
    }

    static func server(port: Int, generation: Int64, routes: [Route]) -> String {
        // Several replicas: an upstream group each (named by the app's port, unique on this
        // machine), round robin; a replica that refuses a connection is skipped for 10 s, so a
        // crashed one does not fail requests the others can answer.
        var groups = ""
        var targets: [String: String] = [:]
        for (index, route) in routes.enumerated() {
            guard route.upstreams.count > 1 else { targets[route.prefix] = route.upstreams.first ?? "http://127.0.0.1:9"; continue }
            let name = "loco_\(port)_\(generation)_\(index)"
            let servers = route.upstreams.map { "    server \($0.replacingOccurrences(of: "http://", with: "")) max_fails=1 fail_timeout=10s;\n" }.joined()
            groups += "upstream \(name) {\n\(servers)}\n"
            targets[route.prefix] = "http://\(name)"
        }
        // Longest prefix first, as nginx picks it anyway; '/' catches the rest.
        let locations = routes.sorted { $0.prefix.count > $1.prefix.count }.map { route in
            """
                location \(route.prefix) {
                    proxy_pass \(targets[route.prefix] ?? "http://127.0.0.1:9");
                    proxy_set_header Host $http_host;
                    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
                    proxy_set_header X-Forwarded-Prefix \(route.prefix);
                }
            """
        }
        let fallback = routes.contains { $0.prefix == "/" } ? "" : "    location / { return 404; }\n"
        return groups + "server {\n    listen 127.0.0.1:\(port);\n    add_header X-Loco-Version \(generation) always;\n\(locations.joined(separator: "\n"))\n\(fallback)}\n"
    }

    func prepare() throws {
        for sub in ["apps", "ports", "tmp"] { try FileManager.default.createDirectory(at: folder.appending(path: sub), withIntermediateDirectories: true) }
        let root = geteuid() == 0 ? "user root;\n" : ""
        let temp = folder.appending(path: "tmp").path
        let main = """
            \(root)worker_processes 1;
            pid \(pidFile.path);
            error_log \(errorLog.path) warn;
            events { worker_connections 1024; }
            http {
                access_log off;
                proxy_buffering off;
                proxy_http_version 1.1;
                client_max_body_size 100m;
                client_body_temp_path \(temp)/body;
                proxy_temp_path \(temp)/proxy;
                fastcgi_temp_path \(temp)/fastcgi;
                uwsgi_temp_path \(temp)/uwsgi;
                scgi_temp_path \(temp)/scgi;
                include \(appsFolder.path)/*.conf;
            }

            """
        try main.write(to: folder.appending(path: "nginx.conf"), atomically: true, encoding: .utf8)
    }

    /// The port the app keeps: chosen free once, then remembered.
    func port(team: String, app: String) throws -> Int {
        let file = folder.appending(path: "ports/\(team)--\(app)")
        if let text = try? String(contentsOf: file, encoding: .utf8), let port = Int(text) { return port }
        let port = try Self.freePort()
        try String(port).write(to: file, atomically: true, encoding: .utf8)
        return port
    }

    /// A port free now and outside the kernel's ephemeral range (see `LocalPorts`): nginx binds
    /// it later, at a reload, which fails if the port was taken meanwhile.
    static func freePort() throws -> Int {
        guard let port = LocalPorts.free() else {
            throw EntryPointError(message: "no free port on 127.0.0.1 outside the ephemeral range \(LocalPorts.ephemeral())")
        }
        return port
    }

    /// Checks the configuration, then starts nginx or reloads it.
    func apply() async throws {
        guard FileManager.default.isExecutableFile(atPath: nginx) else {
            throw EntryPointError(message: "nginx is not installed at \(nginx); install it: apt-get install -y nginx-light")
        }
        let base = ["-p", folder.path, "-c", folder.appending(path: "nginx.conf").path, "-e", errorLog.path]
        let (tested, testOutput) = try await run(base + ["-t"])
        guard tested == 0 else { throw EntryPointError(message: "the entry point's nginx configuration is invalid: \(testOutput.suffix(400))") }
        if runningPID() != nil {
            let (status, output) = try await run(base + ["-s", "reload"])
            guard status == 0 else { throw EntryPointError(message: "nginx did not reload: \(output.suffix(400))") }
        } else {
            // nginx forks its master and exits; killing the group behind it could take the master
            // down before it leaves the group (seen on a busy machine: the address never answered).
            let (status, output) = try await run(base, leavesDaemon: true)
            guard status == 0 else { throw EntryPointError(message: "nginx did not start: \(output.suffix(400))") }
        }
    }

    /// The processes whose parent is `pid` (nginx's workers, when `pid` is its master).
    static func children(of pid: pid_t) -> [pid_t] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.compactMap { pid_t($0) }.filter { parent(of: $0) == pid }
    }

    /// Whether `pid` is still a live process (not a zombie awaiting its parent).
    static func isRunning(_ pid: pid_t) -> Bool {
        guard let state = statFields(of: pid)?.first else { return false }
        return state != "Z"
    }

    static func parent(of pid: pid_t) -> pid_t? {
        guard let fields = statFields(of: pid), fields.count > 1 else { return nil }
        return pid_t(fields[1])
    }

    /// The fields of /proc/PID/stat after the command name: state, parent, …. The name may hold
    /// spaces and parentheses, so they are read after its last ')'.
    static func statFields(of pid: pid_t) -> [Substring]? {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return nil }
        return stat[stat.index(after: close)...].split(separator: " ")
    }

    func runningPID() -> pid_t? {
        guard let text = try? String(contentsOf: pidFile, encoding: .utf8),
              let pid = pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines)), pid > 0, kill(pid, 0) == 0 else { return nil }
        return pid
    }

    func run(_ arguments: [String], leavesDaemon: Bool = false) async throws -> (Int32, String) {
        let output = LineBuffer()
        let outcome = try await ProcessRunner.run(nginx, arguments, environment: ProcessInfo.processInfo.environment, timeout: .seconds(30),
                                                  leavesDaemon: leavesDaemon) { output.add($0) }
        return (outcome.timedOut ? -1 : outcome.status, output.text)
    }

    /// Worker processes on one machine share the folder; one of them changes it at a time.
    func locked<T>(_ body: () async throws -> T) async throws -> T {
        do {
            return try await FileLock(file: folder.appending(path: "lock")).withLock(body)
        } catch let error as FileLockError {
            throw EntryPointError(message: "cannot lock the entry point's folder: \(error)")
        }
    }
}

public struct EntryPointError: Error, CustomStringConvertible, Sendable {
    public var message: String
    public var description: String { message }
}
