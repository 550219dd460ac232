import BuildContext
import Foundation
import LocoTestSupport
import Logging
import LocoShared
import Testing
@testable import Workers

/// A folder for one test, removed afterwards.
func withScratch<T>(_ body: (URL) async throws -> T) async throws -> T {
    let folder = FileManager.default.temporaryDirectory.appending(path: "loco-build-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: folder) }
    return try await body(folder)
}

func put(_ files: [String: String], in folder: URL) throws {
    for (path, text) in files {
        let url = folder.appending(path: path)
        try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        try text.write(to: url, atomically: true, encoding: .utf8)
    }
}

enum BuildTools {
    static let installHint = "apt-get install -y buildah busybox-static (scripts/test installs them)"

    static func builder(_ state: URL, timeout: Duration = .seconds(120), maxImageBytes: Int64 = 1 << 30, format: String = "oci",
                        memory: Int64? = 4 << 30) throws -> Builder {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/buildah") else { throw TestSetupError("buildah is not installed: \(installHint)") }
        var logger = Logger(label: "test")
        logger.logLevel = .error
        return try Builder(configuration: BuilderConfiguration(stateFolder: state, timeout: timeout, maxImageBytes: maxImageBytes, format: format,
                                                               memoryLimitBytes: memory), logger: logger)
    }

    /// A busybox base image as an OCI archive, made with buildah from the busybox-static binary
    /// (no network: nothing is pulled). Built once per test run.
    static func busyboxBase(state: URL) async throws -> URL {
        let archive = FileManager.default.temporaryDirectory.appending(path: "loco-busybox-base.tar")
        if FileManager.default.fileExists(atPath: archive.path) { return archive }
        guard FileManager.default.isExecutableFile(atPath: "/bin/busybox") else { throw TestSetupError("busybox is not installed: \(installHint)") }
        let env = ["CONTAINERS_STORAGE_CONF": state.appending(path: "storage.conf").path,
                   "CONTAINERS_REGISTRIES_CONF": state.appending(path: "registries.conf").path]
        let script = """
            set -e
            c=$(buildah from --storage-driver vfs scratch)
            buildah copy "$c" /bin/busybox /bin/busybox >/dev/null
            buildah run --isolation chroot "$c" -- /bin/busybox --install -s /bin
            buildah commit --timestamp 0 "$c" oci-archive:\(archive.path).tmp >/dev/null
            buildah rm "$c" >/dev/null
            mv \(archive.path).tmp \(archive.path)
            """
        let result = try await runCommand(URL(fileURLWithPath: "/bin/bash"), ["-c", script], environment: env, timeout: .seconds(120))
        guard result.status == 0 else { throw TestSetupError("making the busybox base failed: \(result.output)") }
        return archive
    }

    /// The paths inside an image's layers (via GNU tar on each layer blob).
    static func files(in layout: OCILayout) async throws -> Set<String> {
        var files = Set<String>()
        for layer in layout.layers {
            let listed = try await runCommand(URL(fileURLWithPath: "/bin/tar"), ["tf", layout.blobURL(layer.digest).path])
            for line in listed.output.split(separator: "\n") { files.insert(String(line.hasPrefix("./") ? line.dropFirst(2) : line[...])) }
        }
        return files
    }
}

final class Lines: @unchecked Sendable {
    private let lock = NSLock()
    private var storage: [String] = []
    func add(_ line: String) { lock.lock(); storage.append(line); lock.unlock() }
    var all: [String] { lock.lock(); defer { lock.unlock() }; return storage }
}

@Suite("Builder (real buildah)", .serialized)
struct BuilderTests {
    @Test("a FROM scratch build gives an OCI layout; the same context builds to the same digest; .dockerignore keeps files out")
    func success() async throws {
        try await withScratch { folder in
            let builder = try BuildTools.builder(folder.appending(path: "state"))
            let source = folder.appending(path: "app")
            try put(["Dockerfile": "FROM scratch\nCOPY . /app/\n", "index.html": "hello\n", "secret.env": "TOKEN=x\n",
                     ".dockerignore": "secret.env\n"], in: source)
            // Through the real path: pack as the CLI does, unpack as the worker does.
            try ContextPacker(folder: source).pack(to: folder.appending(path: "ctx.tar.gz"))
            try ContextUnpacker().unpack(folder.appending(path: "ctx.tar.gz"), into: folder.appending(path: "unpacked"))
            let lines = Lines()
            let first = try await builder.build(BuildRequest(contextFolder: folder.appending(path: "unpacked"), output: folder.appending(path: "out1")),
                                                onLine: lines.add)
            #expect(lines.all.contains { $0.hasPrefix("STEP 2/2: COPY") }, "\(lines.all)")
            let files = try await BuildTools.files(in: first.layout)
            #expect(files.contains("app/index.html"))
            #expect(!files.contains("app/secret.env"), "excluded by .dockerignore: \(files)")
            #expect(first.layout.mediaType == "application/vnd.oci.image.manifest.v1+json")
            // Again from a fresh unpack: the very same image.
            try ContextUnpacker().unpack(folder.appending(path: "ctx.tar.gz"), into: folder.appending(path: "unpacked2"))
            let second = try await builder.build(BuildRequest(contextFolder: folder.appending(path: "unpacked2"), output: folder.appending(path: "out2")))
            #expect(second.layout.manifestDescriptor.digest == first.layout.manifestDescriptor.digest)
        }
    }

    @Test("multi-stage with build args, and the docker image format")
    func multiStage() async throws {
        try await withScratch { folder in
            let state = folder.appending(path: "state")
            let builder = try BuildTools.builder(state, format: "docker")
            let base = try await BuildTools.busyboxBase(state: state)
            let source = folder.appending(path: "app")
            try put(["Dockerfile": """
                FROM oci-archive:\(base.path) AS build
                ARG GREETING=hello
                RUN mkdir /out && echo "$GREETING from stage one" > /out/greeting.txt
                FROM scratch
                COPY --from=build /out/greeting.txt /greeting.txt
                """], in: source)
            let result = try await builder.build(BuildRequest(contextFolder: source, buildArgs: ["GREETING": "bonjour"], output: folder.appending(path: "out")))
            #expect(result.layout.mediaType == "application/vnd.docker.distribution.manifest.v2+json")
            #expect(result.layout.layers.count == 1, "only the final stage ships")
            let layer = result.layout.blobURL(result.layout.layers[0].digest)
            let content = try await runCommand(URL(fileURLWithPath: "/bin/tar"), ["xOf", layer.path, "greeting.txt"])
            #expect(content.output == "bonjour from stage one\n", "\(content.output)")
        }
    }

    @Test("failures: missing Dockerfile, failing RUN, unavailable base, timeout, too large — each with its code, evidence and hint")
    func failures() async throws {
        try await withScratch { folder in
            let state = folder.appending(path: "state")
            let base = try await BuildTools.busyboxBase(state: state)
            let source = folder.appending(path: "app")
            try put(["hello.txt": "hi\n",
                     "Dockerfile.run": "FROM oci-archive:\(base.path)\nCOPY hello.txt /\nRUN echo compiling; echo 'error: missing semicolon' >&2; exit 3\n",
                     "Dockerfile.remote": "FROM docker.io/library/alpine:3.20\nRUN true\n",
                     "Dockerfile.slow": "FROM oci-archive:\(base.path)\nRUN sleep 30\n",
                     "Dockerfile.big": "FROM scratch\nCOPY hello.txt /\n",
                     "Dockerfile.typo": "FORM scratch\nCOPY hello.txt /\n",
                     "Dockerfile.hungry": "FROM oci-archive:\(base.path)\nRUN dd if=/dev/zero of=/dev/null bs=300M count=1\n"], in: source)
            func failure(_ dockerfile: String, timeout: Duration = .seconds(120), maxImageBytes: Int64 = 1 << 30, memory: Int64? = 4 << 30) async throws -> BuildFailure {
                let builder = try BuildTools.builder(state, timeout: timeout, maxImageBytes: maxImageBytes, memory: memory)
                do {
                    _ = try await builder.build(BuildRequest(contextFolder: source, dockerfile: dockerfile, output: folder.appending(path: "out-\(UUID().uuidString)")))
                } catch let error as BuildFailure {
                    #expect(!error.hint.isEmpty)
                    return error
                }
                throw TestSetupError("\(dockerfile) built")
            }
            let missing = try await failure("deploy/Dockerfile")
            #expect(missing.code == "DOCKERFILE_NOT_FOUND" && missing.message.contains("deploy/Dockerfile"))

            let run = try await failure("Dockerfile.run")
            #expect(run.code == "BUILD_FAILED" && !run.isTransient)
            #expect(run.step == "3/3", "\(run)")
            #expect(run.instruction?.contains("exit 3") == true && run.exitCode == 3, "\(run)")
            #expect(run.logTail.contains { $0.contains("missing semicolon") })
            #expect(run.message.contains("step 3/3"))

            let remote = try await failure("Dockerfile.remote")
            #expect(remote.code == "BASE_IMAGE_UNAVAILABLE" && remote.message.contains("alpine:3.20"), "\(remote)")

            let slow = try await failure("Dockerfile.slow", timeout: .seconds(2))
            #expect(slow.code == "BUILD_TIMEOUT")

            let big = try await failure("Dockerfile.big", maxImageBytes: 100)
            #expect(big.code == "IMAGE_TOO_LARGE" && big.message.contains("100"))

            let typo = try await failure("Dockerfile.typo")
            #expect(typo.code == "BUILD_FAILED" && typo.message.contains("no FROM statement"), "\(typo)")

            let hungry = try await failure("Dockerfile.hungry", memory: 64 << 20)
            #expect(hungry.code == "BUILD_FAILED" && hungry.message.contains("ran out of memory") && hungry.message.contains("64 MiB"), "\(hungry)")
        }
    }

    /// buildah's own last lines, as seen when two build workers stored the same base image at
    /// once (a containers/storage race; the deployment failed for good before this was known).
    @Test("builds racing on the shared image storage are retried; a failing step is not")
    func storageRace() {
        let from = "STEP 1/4: FROM oci-archive:/tmp/stack/base.tar"
        let raced = [
            [from, "Getting image source signatures", "Copying blob sha256:8252…", "Writing manifest to image destination", "Storing signatures",
             #"time="2026-11-27T09:11:23Z" level=error msg="Updating image \"54acdb86f60c\" (old names []) failed, deleting it""#,
             #"time="2026-11-27T09:11:23Z" level=error msg="Error deleting incomplete image \"54acdb86f60c\": identifier is not an image""#,
             #"Error: creating build container: committing the finished image: saving metadata for image "54acdb86f60c": identifier is not a layer, image, or container"#],
            [from, "STEP 2/4: RUN echo hi", #"Error: checking if cached image exists from a previous build: getting top layer info: layer not known"#],
            // Seen in a CI run of 20 apps deployed at once with 2 build workers (2026-12-03).
            [from, "Getting image source signatures", "Copying blob sha256:8252…", "Copying config sha256:54acdb86…",
             "Writing manifest to image destination", "Storing signatures",
             #"Error: creating build container: locating pulled image "sha256:54acdb86f60cd00f09d9d47dfe5be634bf7d0735e443a84266cf6f4fbf82ed47" name in containers storage: parsing named reference "54acdb86f60cd00f09d9d47dfe5be634bf7d0735e443a84266cf6f4fbf82ed47": invalid repository name (54acdb86f60cd00f09d9d47dfe5be634bf7d0735e443a84266cf6f4fbf82ed47), cannot specify 64-byte hexadecimal strings"#],
        ]
        for tail in raced {
            let failure = Builder.diagnose(tail: tail, exitStatus: 125)
            #expect(failure.code == "BUILDER_UNAVAILABLE" && failure.isTransient, "\(failure)")
            #expect(failure.message.contains("storage busy") && failure.hint.contains("concurrency"), "\(failure)")
        }
        let full = Builder.diagnose(tail: [from, "Error: writing blob: storing blob to file: write /var/lib/containers/storage/vfs/dir/x: no space left on device"], exitStatus: 125)
        #expect(full.code == "BUILDER_UNAVAILABLE" && full.isTransient && full.message.contains("disk full") && full.hint.contains("disk space"), "\(full)")
        let step = Builder.diagnose(tail: [from, "STEP 2/4: RUN make", #"Error: building at STEP "RUN make": while running runtime: exit status 2"#], exitStatus: 2)
        #expect(step.code == "BUILD_FAILED" && !step.isTransient && step.step == "2/4" && step.exitCode == 2, "\(step)")
    }

    @Test("long output is bounded: the head live, the middle counted, the tail kept")
    func boundedOutput() {
        let log = BoundedLog(headLimit: 5, tailLimit: 3)
        var live: [String] = []
        for index in 1...20 { if let line = log.append("line \(index)") { live.append(line) } }
        #expect(live == (1...5).map { "line \($0)" })
        #expect(log.heldBack() == ["[… 12 lines of output omitted …]", "line 18", "line 19", "line 20"])
        #expect(log.last(2) == ["line 19", "line 20"])
        #expect(log.totalLines == 20)
    }
}

@Suite("Build spec from a deployed config")
struct BuildSpecTests {
    @Test("build args: strings, whole and fractional numbers, numbers past Int64 (no crash) and booleans")
    func args() {
        let config: JSONValue = .object(["build": .object(["args": .object([
            "NAME": .string("web"), "WORKERS": .number(4), "RATIO": .number(0.5), "HUGE": .number(1e300), "DEBUG": .bool(true),
        ]), "target": .string("runtime")])])
        let spec = BuildSpec.from(config: config, service: nil)
        #expect(spec.args == ["NAME": "web", "WORKERS": "4", "RATIO": "0.5", "HUGE": "1e+300", "DEBUG": "true"])
        #expect(spec.dockerfile == "Dockerfile" && spec.context == "." && spec.target == "runtime")
    }
}
