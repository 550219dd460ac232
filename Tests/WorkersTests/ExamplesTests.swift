import BuildContext
import Foundation
import LocoTestSupport
import Testing
import Workers

@Suite("examples/ build as documented", .serialized)
struct ExamplesTests {
    /// The examples' base image, made by scripts/base-image (once per test run).
    static func base() async throws -> URL {
        let archive = FileManager.default.temporaryDirectory.appending(path: "loco-examples-base.tar")
        if FileManager.default.fileExists(atPath: archive.path) { return archive }
        let made = try await runCommand(URL(fileURLWithPath: "/bin/bash"), [Repo.root.appending(path: "scripts/base-image").path, "--archive", archive.path],
                                        timeout: .seconds(180))
        guard made.status == 0 else { throw TestSetupError("scripts/base-image failed (\(BuildTools.installHint)):\n\(made.output)") }
        return archive
    }

    /// Packs the example as `loco deploy` will, unpacks it as the build worker does, builds it.
    static func build(_ example: String, in folder: URL, args: [String: String] = [:], maxImageBytes: Int64 = 1 << 30) async throws -> (BuildResult?, BuildFailure?, [String]) {
        let base = try await Self.base()
        let source = Repo.root.appending(path: "examples/\(example)")
        let packer = ContextPacker(folder: source)
        let sent = try packer.entries().included
        let archive = folder.appending(path: "\(example).tar.gz")
        try packer.pack(to: archive)
        let unpacked = folder.appending(path: "\(example)-context")
        try ContextUnpacker().unpack(archive, into: unpacked)
        let builder = try BuildTools.builder(folder.appending(path: "state"), maxImageBytes: maxImageBytes)
        // As the build stage does: a transient failure (storage busy while other suites build) is tried again.
        var attempt = 1
        while true {
            do {
                let result = try await builder.build(BuildRequest(contextFolder: unpacked, buildArgs: args.merging(["BASE": "oci-archive:\(base.path)"]) { a, _ in a },
                                                                  output: folder.appending(path: "\(example)-image")))
                return (result, nil, sent)
            } catch let failure as BuildFailure {
                if failure.isTransient && attempt < 3 {
                    attempt += 1
                    try await Task.sleep(for: .seconds(1))
                    continue
                }
                return (nil, failure, sent)
            }
        }
    }

    @Test("hello builds, serves from /www, and its .dockerignore keeps notes and markdown home")
    func hello() async throws {
        try await withScratch { folder in
            let (result, failure, sent) = try await Self.build("hello", in: folder)
            #expect(failure == nil, "\(String(describing: failure))")
            #expect(sent.contains("public/index.html") && !sent.contains("notes/todo.txt") && !sent.contains("README.md"), "\(sent)")
            let files = try await BuildTools.files(in: try #require(result).layout)
            #expect(files.contains("www/index.html"), "\(files.sorted().suffix(20))")
        }
    }

    @Test("multi-stage ships only the generated page, with the build arg in it")
    func multiStage() async throws {
        try await withScratch { folder in
            let (result, failure, _) = try await Self.build("multi-stage", in: folder, args: ["GREETING": "bonjour"])
            #expect(failure == nil, "\(String(describing: failure))")
            let layout = try #require(result).layout
            let last = layout.blobURL(try #require(layout.layers.last).digest)
            let page = try await runCommand(URL(fileURLWithPath: "/bin/tar"), ["xOf", last.path, "www/index.html"])
            #expect(page.output.contains("bonjour from a multi-stage build"), "\(page.output)")
        }
    }

    @Test("the examples that fail once started (crash, never ready, out of memory) build cleanly: their failure is the runtime's to report")
    func failAtStart() async throws {
        try await withScratch { folder in
            for example in ["crash-on-start", "never-ready", "out-of-memory"] {
                let (result, failure, _) = try await Self.build(example, in: folder)
                #expect(failure == nil && result != nil, "\(example): \(String(describing: failure))")
            }
        }
    }

    @Test("the failing examples fail with their report codes")
    func failing() async throws {
        try await withScratch { folder in
            let broken = try await Self.build("broken-dockerfile", in: folder).1
            #expect(broken?.code == "BUILD_FAILED" && broken?.message.contains("unknown instruction RUNN") == true, "\(String(describing: broken))")
            let run = try await Self.build("failing-run", in: folder).1
            #expect(run?.code == "BUILD_FAILED" && run?.step == "3/3" && run?.exitCode == 2, "\(String(describing: run))")
            #expect(run?.logTail.contains { $0.contains("expected ';'") } == true)
            let large = try await Self.build("too-large", in: folder, maxImageBytes: 16 << 20).1
            #expect(large?.code == "IMAGE_TOO_LARGE", "\(String(describing: large))")
        }
    }
}
