import BuildContext
import Foundation
import Logging

/// How builds run on this worker.
public struct BuilderConfiguration: Sendable {
    /// Where buildah keeps its storage and this worker its config files.
    public var stateFolder: URL
    /// Registries reached over plain HTTP (e.g. `localhost:5000`).
    public var insecureRegistries: [String]
    public var timeout: Duration
    /// The largest image (compressed layers + config) accepted.
    public var maxImageBytes: Int64
    /// `oci` or `docker` (buildah's `--format`).
    public var format: String
    public var buildahPath: String
    /// Memory for one build, its RUN steps included (a cgroup v1 memory group per build);
    /// `nil` for no limit.
    public var memoryLimitBytes: Int64?
    /// Credentials for pulling base images (`FROM`) from these registries (host:port): Loco's own
    /// registry, where teams keep their bases. Written to an auth file per build, never a command line.
    public var baseImageCredentials: RegistryCredentials?
    public var baseImageRegistries: [String]

    public init(stateFolder: URL, insecureRegistries: [String] = [], timeout: Duration = .seconds(1800),
                maxImageBytes: Int64 = 2 * 1024 * 1024 * 1024, format: String = "oci", buildahPath: String = "/usr/bin/buildah",
                memoryLimitBytes: Int64? = 4 * 1024 * 1024 * 1024, baseImageCredentials: RegistryCredentials? = nil, baseImageRegistries: [String] = []) {
        self.baseImageCredentials = baseImageCredentials
        self.baseImageRegistries = baseImageRegistries
        self.stateFolder = stateFolder
        self.insecureRegistries = insecureRegistries
        self.timeout = timeout
        self.maxImageBytes = maxImageBytes
        self.format = format
        self.buildahPath = buildahPath
        self.memoryLimitBytes = memoryLimitBytes
    }
}

/// One build: an unpacked context, its Dockerfile, build args, where the image goes.
public struct BuildRequest: Sendable {
    public var contextFolder: URL
    public var dockerfile: String
    public var buildArgs: [String: String]
    public var target: String?
    /// An OCI image layout folder the push stage reads (must not exist yet).
    public var output: URL

    public init(contextFolder: URL, dockerfile: String = "Dockerfile", buildArgs: [String: String] = [:], target: String? = nil, output: URL) {
        self.contextFolder = contextFolder
        self.dockerfile = dockerfile
        self.buildArgs = buildArgs
        self.target = target
        self.output = output
    }
}

public struct BuildResult: Sendable {
    public var layout: OCILayout
    public var imageBytes: Int64
    public var outputLines: Int
}

/// Builds images with buildah (chroot isolation, vfs storage, project-owned config files) into
/// an OCI layout. Builds are reproducible (`--timestamp 0`): an unchanged context gives the same
/// image digest, so a re-push uploads nothing.
public struct Builder: Sendable {
    public let configuration: BuilderConfiguration
    let logger: Logger

    /// The tools' environment: the project's config files, chroot isolation, a temp folder of its own.
    let environment: [String: String]

    public init(configuration: BuilderConfiguration, logger: Logger) throws {
        self.configuration = configuration
        self.logger = logger
        var environment = try ContainersConfig.write(stateFolder: configuration.stateFolder,
                                                     insecureRegistries: configuration.insecureRegistries, engine: false)
        environment["BUILDAH_ISOLATION"] = "chroot"
        environment["TMPDIR"] = configuration.stateFolder.appending(path: "tmp").path
        self.environment = environment
    }

    /// Runs the build; every output line goes to `onLine` as it comes.
    public func build(_ request: BuildRequest, onLine: @escaping @Sendable (String) -> Void = { _ in }) async throws -> BuildResult {
        let dockerfile = request.contextFolder.appending(path: request.dockerfile).standardizedFileURL
        guard dockerfile.path.hasPrefix(request.contextFolder.standardizedFileURL.path + "/"),
              FileManager.default.fileExists(atPath: dockerfile.path) else {
            throw BuildFailure.dockerfileNotFound(request.dockerfile)
        }
        guard FileManager.default.isExecutableFile(atPath: configuration.buildahPath) else {
            throw BuildFailure(code: "BUILDER_UNAVAILABLE", message: "buildah is not installed at \(configuration.buildahPath)",
                               hint: "Install it on the build workers: apt-get install -y buildah", logTail: [], isTransient: true)
        }
        try FileManager.default.createDirectory(at: configuration.stateFolder.appending(path: "tmp"), withIntermediateDirectories: true)
        // Built into the worker's storage under a name of its own, then written out as an OCI layout
        // with gzip'd layers (deterministic), then untagged: each build is isolated.
        let name = "localhost/loco-build-\(UUID().uuidString.lowercased())"
        var arguments = ["bud", "--storage-driver", "vfs", "--isolation", "chroot", "--layers", "--timestamp", "0",
                         "--format", configuration.format, "-f", dockerfile.path, "-t", name]
        for (name, value) in request.buildArgs.sorted(by: { $0.key < $1.key }) { arguments += ["--build-arg", "\(name)=\(value)"] }
        if let target = request.target { arguments += ["--target", target] }
        var authFile: URL?
        if let credentials = configuration.baseImageCredentials, !configuration.baseImageRegistries.isEmpty {
            let file = configuration.stateFolder.appending(path: "auth-\(UUID().uuidString).json")
            let auth = Data("\(credentials.username):\(credentials.password)".utf8).base64EncodedString()
            let entries = configuration.baseImageRegistries.map { #""\#($0)":{"auth":"\#(auth)"}"# }.joined(separator: ",")
            guard FileManager.default.createFile(atPath: file.path, contents: Data(#"{"auths":{\#(entries)}}"#.utf8),
                                                 attributes: [.posixPermissions: 0o600]) else {
                throw BuildFailure(code: "BUILDER_UNAVAILABLE", message: "the base image registry's credentials could not be written to \(file.path)",
                                   hint: "Retried automatically; if it keeps failing, check that the build workers' state folder is writable and its disk not full.",
                                   logTail: [], isTransient: true)
            }
            authFile = file
            arguments += ["--authfile", file.path]
        }
        defer { if let authFile { try? FileManager.default.removeItem(at: authFile) } }
        arguments.append(request.contextFolder.path)

        let log = BoundedLog()
        let memory = MemoryGroup.make(limit: configuration.memoryLimitBytes, logger: logger)
        defer { memory?.remove() }
        // With a memory group, a shell joins it and then becomes buildah, so every process of the
        // build is inside before it starts.
        let (executable, commandLine) = memory.map { group in
            ("/bin/sh", ["-c", "echo $$ > \"$0\" && exec \"$@\"", group.procsFile, configuration.buildahPath] + arguments)
        } ?? (configuration.buildahPath, arguments)
        let outcome = try await ProcessRunner.run(executable, commandLine, environment: environment, timeout: configuration.timeout) { line in
            if let shown = log.append(line) { onLine(shown) }
        }
        for line in log.heldBack() { onLine(line) }
        let tail = log.last(30)
        if outcome.timedOut { throw BuildFailure.timeout(configuration.timeout.components.seconds, tail: tail) }
        if outcome.status != 0, let memory, memory.outOfMemory, let limit = configuration.memoryLimitBytes {
            throw BuildFailure(code: "BUILD_FAILED", message: "the build ran out of memory (the limit is \(limit / 1024 / 1024) MiB per build)",
                               hint: "Make the build use less memory (fewer parallel compile jobs, e.g. make -j1), or ask your operator for a higher build memory limit.",
                               step: Self.diagnose(tail: tail, exitStatus: outcome.status).step, logTail: tail, isTransient: false)
        }
        guard outcome.status == 0 else { throw Self.diagnose(tail: tail, exitStatus: outcome.status) }
        defer { Task { _ = try? await ProcessRunner.run(configuration.buildahPath, ["rmi", "--storage-driver", "vfs", name], environment: environment, timeout: .seconds(60)) { _ in } } }
        let pushLog = BoundedLog(headLimit: 0, tailLimit: 30)
        let written = try await ProcessRunner.run(
            configuration.buildahPath,
            ["push", "--storage-driver", "vfs", "--format", configuration.format == "docker" ? "v2s2" : "oci", "--compression-format", "gzip",
             "--quiet", name, "oci:\(request.output.path):latest"],
            environment: environment, timeout: configuration.timeout) { pushLog.append($0) }
        guard written.status == 0, !written.timedOut else {
            throw BuildFailure(code: "BUILDER_UNAVAILABLE", message: "the built image could not be written out for the push stage",
                               hint: "Retried automatically; if it keeps failing, check the build workers' disk.", logTail: pushLog.last(30), isTransient: true)
        }
        let layout = try OCILayout(folder: request.output, reference: "latest")
        let size = layout.totalSize
        if size > configuration.maxImageBytes { throw BuildFailure.tooLarge(size, limit: configuration.maxImageBytes) }
        return BuildResult(layout: layout, imageBytes: size, outputLines: log.totalLines)
    }

    /// Turns buildah's last words into a report.
    static func diagnose(tail: [String], exitStatus: Int32) -> BuildFailure {
        let text = tail.joined(separator: "\n")
        if let match = text.firstMatch(of: #/creating build container: initializing source (?:docker://)?([^:\s]+(?::[^:\s]+)?): (.*)/#) {
            let image = String(match.1)
            return BuildFailure(
                code: "BASE_IMAGE_UNAVAILABLE",
                message: "the base image \(image) could not be pulled: \(String(match.2).prefix(300))",
                hint: "This installation cannot reach public registries: use a base image from the local registry (FROM localhost:5000/…) or FROM scratch with a static binary.",
                logTail: tail, isTransient: false)
        }
        let lower = text.lowercased()
        // Concurrent builds share the worker's image storage; two pulling the same base at once can
        // race ("layer not known", "image not known", or containers/storage's "identifier is not a
        // layer, image, or container" when both store the same image, or "locating pulled image …
        // name in containers storage" when the other renamed it under this one). A retry finds the
        // base stored.
        let storageRace = ["layer not known", "image not known", "identifier is not a", "locating item named",
                           "locating pulled image"].contains { lower.contains($0) }
        if lower.contains("no space left on device") {
            return BuildFailure(code: "BUILDER_UNAVAILABLE", message: "the builder's storage failed (disk full)",
                                hint: "Retried automatically; if it keeps failing, the operator should free disk space on the build workers.",
                                logTail: tail, isTransient: true)
        }
        if lower.contains("storage lock") || lower.contains("database is locked") || storageRace {
            return BuildFailure(code: "BUILDER_UNAVAILABLE", message: "the builder's storage failed (storage busy)",
                                hint: "Concurrent builds on one worker collided in its image storage; retried automatically. If it keeps failing, the operator should lower the build pool's concurrency on that worker.",
                                logTail: tail, isTransient: true)
        }
        var step: String?
        var instruction: String?
        for line in tail {
            if let match = line.firstMatch(of: #/^STEP (\d+/\d+): (.*)$/#) {
                step = String(match.1)
                instruction = String(match.2)
            }
        }
        if let match = text.firstMatch(of: #/Unknown instruction: "?([A-Za-z]+)"?/#) {
            return BuildFailure(code: "BUILD_FAILED",
                                message: "the Dockerfile has an unknown instruction \(match.1)\(step.map { " at step \($0)" } ?? "")",
                                hint: "Fix the typo: instructions are FROM, RUN, COPY, ADD, ENV, ARG, WORKDIR, EXPOSE, USER, CMD, ENTRYPOINT, LABEL, HEALTHCHECK, SHELL, VOLUME, STOPSIGNAL, ONBUILD.",
                                step: step, instruction: instruction, logTail: tail, isTransient: false)
        }
        var exitCode: Int32? = nil
        if let match = text.firstMatch(of: #/building at STEP "(.*)": (?:.*)exit status (\d+)/#) {
            instruction = String(match.1)
            exitCode = Int32(match.2)
        }
        guard step != nil || instruction != nil else {
            // Failed before any step ran: the Dockerfile itself (syntax, no FROM).
            let said = tail.last { $0.hasPrefix("Error: ") }.map { String($0.dropFirst(7)) } ?? "buildah exited with status \(exitStatus)"
            return BuildFailure(code: "BUILD_FAILED", message: "the Dockerfile could not be used: \(said)",
                                hint: "Fix the Dockerfile: every build starts with FROM, and instructions are FROM, RUN, COPY, ADD, ENV, ARG, WORKDIR, EXPOSE, USER, CMD, ENTRYPOINT, LABEL.",
                                logTail: tail, isTransient: false)
        }
        let stepText = step.map { "step \($0)" } ?? "a step"
        return BuildFailure(
            code: "BUILD_FAILED",
            message: "the build failed at \(stepText)\(instruction.map { " (\($0))" } ?? "")\(exitCode.map { " with exit code \($0)" } ?? "")",
            hint: "Fix that step of the Dockerfile; run it locally with 'buildah bud' or 'docker build' to iterate. The last lines of output are in the report.",
            step: step, instruction: instruction, exitCode: exitCode ?? exitStatus, logTail: tail, isTransient: false)
    }
}
