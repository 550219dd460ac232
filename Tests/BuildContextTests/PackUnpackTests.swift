import BuildContext
import Foundation
import LocoTestSupport
import Testing

/// A temporary folder, removed afterwards.
func withFolder<T>(_ body: (URL) async throws -> T) async throws -> T {
    let folder = FileManager.default.temporaryDirectory.appending(path: "loco-ctx-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: folder) }
    return try await body(folder)
}

func write(_ text: String, to path: String, in folder: URL) throws {
    let url = folder.appending(path: path)
    try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
    try text.write(to: url, atomically: true, encoding: .utf8)
}

/// What GNU tar lists in an archive.
func tarList(_ archive: URL) async throws -> [String] {
    let result = try await runCommand(URL(fileURLWithPath: "/bin/tar"), ["tzf", archive.path])
    #expect(result.status == 0, "\(result.output)")
    return result.output.split(separator: "\n").map { String($0.hasSuffix("/") ? $0.dropLast() : $0) }.sorted()
}

/// Crafts hostile archives with Python's tarfile (what an attacker's client could send).
func craft(_ archive: URL, _ members: String) async throws {
    let script = """
        import io, tarfile, sys
        t = tarfile.open(sys.argv[1], "w:gz")
        def add(name, data=b"x", type=tarfile.REGTYPE, link=""):
            info = tarfile.TarInfo(name); info.type = type; info.linkname = link
            info.size = len(data) if type == tarfile.REGTYPE else 0
            t.addfile(info, io.BytesIO(data) if type == tarfile.REGTYPE else None)
        \(members)
        t.close()
        """
    let result = try await runCommand(URL(fileURLWithPath: "/usr/bin/python3"), ["-c", script, archive.path])
    #expect(result.status == 0, "\(result.output)")
}

@Suite("build context pack and unpack")
struct PackUnpackTests {
    @Test("packing honours .dockerignore (with ! and **), always sends the Dockerfile, and is reproducible")
    func pack() async throws {
        try await withFolder { folder in
            let source = folder.appending(path: "app")
            for (path, text) in [("Dockerfile", "FROM scratch\n"), ("main.go", "package main\n"), ("README.md", "hi\n"), ("CHANGES.md", "x\n"),
                                 ("node_modules/pkg/index.js", "x\n"), ("src/app.js", "x\n"), ("src/debug.log", "x\n"),
                                 ("logs/a/b/c.log", "x\n"), ("docs/keep.txt", "x\n"), ("docs/drop.txt", "x\n"), (".git/HEAD", "ref\n")] {
                try write(text, to: path, in: source)
            }
            try write("node_modules\n**/*.log\n*.md\n!README.md\ndocs\n!docs/keep.txt\nDockerfile\n", to: ".dockerignore", in: source)
            try FileManager.default.createSymbolicLink(atPath: source.appending(path: "link").path, withDestinationPath: "src/app.js")
            let packer = ContextPacker(folder: source)
            let first = try packer.pack(to: folder.appending(path: "one.tar.gz"))
            let listed = try await tarList(folder.appending(path: "one.tar.gz"))
            // Folders stay even when every file in them is excluded, as with Docker.
            #expect(listed == [".dockerignore", ".git", ".git/HEAD", "Dockerfile", "README.md", "docs", "docs/keep.txt", "link",
                               "logs", "logs/a", "logs/a/b", "main.go", "src", "src/app.js"], "\(listed)")
            #expect(first.files == 7)
            // Same folder, new mtimes: the same bytes.
            try write("package main\n", to: "main.go", in: source)
            let second = try packer.pack(to: folder.appending(path: "two.tar.gz"))
            #expect(first.digest == second.digest)
            try write("package main // changed\n", to: "main.go", in: source)
            #expect(try packer.pack(to: folder.appending(path: "three.tar.gz")).digest != first.digest)

            // Without a .dockerignore, .git stays home.
            try FileManager.default.removeItem(at: source.appending(path: ".dockerignore"))
            try packer.pack(to: folder.appending(path: "four.tar.gz"))
            let plain = try await tarList(folder.appending(path: "four.tar.gz"))
            #expect(!plain.contains(".git") && !plain.contains(".git/HEAD") && plain.contains("node_modules/pkg/index.js"))

            #expect(throws: BuildContextError.folderNotFound(path: folder.appending(path: "nope").path)) {
                try ContextPacker(folder: folder.appending(path: "nope")).pack(to: folder.appending(path: "x.tar.gz"))
            }
        }
    }

    @Test("a packed context unpacks to the same files")
    func roundTrip() async throws {
        try await withFolder { folder in
            let source = folder.appending(path: "app")
            try write("FROM scratch\n", to: "Dockerfile", in: source)
            try write(String(repeating: "data ", count: 100_000), to: "big/file.txt", in: source)
            try FileManager.default.createSymbolicLink(atPath: source.appending(path: "big/alias").path, withDestinationPath: "file.txt")
            try ContextPacker(folder: source).pack(to: folder.appending(path: "c.tar.gz"))
            let out = folder.appending(path: "out")
            let summary = try ContextUnpacker().unpack(folder.appending(path: "c.tar.gz"), into: out)
            #expect(summary.files >= 3)
            #expect(try String(contentsOf: out.appending(path: "big/file.txt"), encoding: .utf8) == String(repeating: "data ", count: 100_000))
            #expect(try FileManager.default.destinationOfSymbolicLink(atPath: out.appending(path: "big/alias").path) == "file.txt")
        }
    }

    static let hostile: [(String, String, String)] = [
        ("add('../evil')", "../evil", "climbs out"),
        ("add('ok/../../evil')", "ok/../../evil", "climbs out"),
        ("add('/tmp/loco-evil-abs')", "/tmp/loco-evil-abs", "absolute path"),
        ("add('link', type=tarfile.SYMTYPE, link='../../etc/passwd')", "link", "outside the context"),
        ("add('link', type=tarfile.SYMTYPE, link='/etc/passwd')", "link", "outside the context"),
        ("add('a/link', type=tarfile.SYMTYPE, link='../../x')", "a/link", "outside the context"),
        ("add('hard', type=tarfile.LNKTYPE, link='../outside')", "hard", "outside the context"),
        ("add('hard', type=tarfile.LNKTYPE, link='/etc/passwd')", "hard", "outside the context"),
        ("add('dev', type=tarfile.CHRTYPE)", "dev", "character device"),
        ("add('blk', type=tarfile.BLKTYPE)", "blk", "block device"),
        ("add('fifo', type=tarfile.FIFOTYPE)", "fifo", "FIFO"),
        ("add('a/' * 2100 + 'f')", "a/a/a/", "longer than"),
    ]

    @Test("hostile archives are refused, naming the entry, and nothing is written anywhere", arguments: hostile)
    func hostileEntry(members: String, entry: String, reason: String) async throws {
        try await withFolder { folder in
            let archive = folder.appending(path: "bad.tar.gz")
            try await craft(archive, "add('fine.txt')\n" + members)
            let out = folder.appending(path: "build/ctx")
            do {
                try ContextUnpacker().unpack(archive, into: out)
                Issue.record("unpacked a hostile archive: \(members)")
            } catch let error as BuildContextError {
                #expect(error.code == "BUILD_CONTEXT_INVALID")
                #expect(error.message.contains(entry) && error.message.contains(reason), "\(error.message)")
                #expect(!error.hint.isEmpty)
            }
            #expect(!FileManager.default.fileExists(atPath: out.path), "the half-unpacked folder is removed")
            #expect(!FileManager.default.fileExists(atPath: folder.appending(path: "build/evil").path))
            #expect(!FileManager.default.fileExists(atPath: folder.appending(path: "evil").path))
            #expect(!FileManager.default.fileExists(atPath: "/tmp/loco-evil-abs"))
        }
    }

    @Test("caps on files and bytes, and archives that are not gzip'd tars")
    func capsAndGarbage() async throws {
        try await withFolder { folder in
            let many = folder.appending(path: "many.tar.gz")
            try await craft(many, "for i in range(50): add('f%d' % i)")
            #expect(throws: BuildContextError.tooLarge(what: "files", limit: 20)) {
                try ContextUnpacker(maxFiles: 20).unpack(many, into: folder.appending(path: "o1"))
            }
            let big = folder.appending(path: "big.tar.gz")
            try await craft(big, "add('big', data=b'x' * 100000)")
            #expect(throws: BuildContextError.tooLarge(what: "bytes", limit: 1000)) {
                try ContextUnpacker(maxBytes: 1000).unpack(big, into: folder.appending(path: "o2"))
            }
            let text = folder.appending(path: "plain.tar.gz")
            try "not an archive".write(to: text, atomically: true, encoding: .utf8)
            do {
                try ContextUnpacker().unpack(text, into: folder.appending(path: "o3"))
                Issue.record("unpacked plain text")
            } catch let error as BuildContextError {
                #expect(error.code == "BUILD_CONTEXT_INVALID")
            }
            // A truncated archive fails and leaves nothing.
            let good = folder.appending(path: "good.tar.gz")
            try await craft(good, "add('big', data=b'y' * 200000)")
            let bytes = try Data(contentsOf: good)
            let cut = folder.appending(path: "cut.tar.gz")
            try bytes.prefix(bytes.count / 2).write(to: cut)
            #expect(throws: BuildContextError.self) { try ContextUnpacker().unpack(cut, into: folder.appending(path: "o4")) }
            #expect(!FileManager.default.fileExists(atPath: folder.appending(path: "o4").path))
        }
    }
}
