import CArchive
import Crypto
import Foundation

/// Packs a folder into a gzip'd tar for `loco deploy`, honouring `.dockerignore` (or, without
/// one, leaving out `.git/`). The archive is reproducible: entries sorted, owners 0, times
/// fixed, no gzip timestamp — an unchanged folder packs to the same bytes, so the same digest,
/// and a rebuild from it gives the same layers.
public struct ContextPacker: Sendable {
    public let folder: URL
    /// The Dockerfile, relative to the folder; always sent, as Docker does, even if excluded.
    public let dockerfile: String

    public init(folder: URL, dockerfile: String = "Dockerfile") {
        self.folder = folder
        self.dockerfile = dockerfile
    }

    /// What was packed.
    public struct Summary: Sendable, Equatable {
        public var files: Int
        public var bytes: Int64
        public var compressedBytes: Int64
        public var digest: String
        public var excluded: Int
    }

    /// The rules in force: `.dockerignore` if the folder has one, else `.git/` left out.
    public func rules() throws -> DockerIgnore {
        let file = folder.appending(path: ".dockerignore")
        if FileManager.default.fileExists(atPath: file.path) {
            guard let text = try? String(contentsOf: file, encoding: .utf8) else {
                throw BuildContextError.io(path: file.path, reason: "not readable as UTF-8 text")
            }
            return try DockerIgnore(parsing: text)
        }
        return try DockerIgnore(parsing: ".git")
    }

    /// The entries to send, sorted, relative to the folder.
    public func entries() throws -> (included: [String], excluded: Int) {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: folder.path, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw BuildContextError.folderNotFound(path: folder.path)
        }
        let rules = try rules()
        let alwaysSent: Set<String> = [DockerIgnore.clean(dockerfile), ".dockerignore"]
        var included: [String] = []
        var excluded = 0
        // Walk without following symlinks; links are sent as links.
        func walk(_ relative: String) throws {
            let absolute = relative.isEmpty ? folder.path : folder.path + "/" + relative
            let names: [String]
            do { names = try FileManager.default.contentsOfDirectory(atPath: absolute).sorted() } catch {
                throw BuildContextError.io(path: absolute, reason: "\(error.localizedDescription)")
            }
            for name in names {
                let path = relative.isEmpty ? name : relative + "/" + name
                let isExcluded = rules.excludes(path) && !alwaysSent.contains(path)
                var info = stat()
                guard lstat(folder.path + "/" + path, &info) == 0 else { continue }
                let isFolder = (info.st_mode & S_IFMT) == S_IFDIR
                if isExcluded {
                    excluded += 1
                    // Docker descends into an excluded folder only when a '!' rule may re-include something.
                    if isFolder && rules.hasExceptions { try walk(path) }
                    continue
                }
                included.append(path)
                if isFolder { try walk(path) }
            }
        }
        try walk("")
        // Parents of re-included files must be in the archive too.
        var all = Set(included)
        for path in included {
            for parent in DockerIgnore.selfAndParents(path).dropFirst() where !all.contains(parent) { all.insert(parent) }
        }
        return (all.sorted(), excluded)
    }

    /// Writes the archive to `output`.
    @discardableResult
    public func pack(to output: URL) throws -> Summary {
        let (paths, excluded) = try entries()
        guard let archive = archive_write_new() else { throw BuildContextError.io(path: output.path, reason: "libarchive is out of memory") }
        defer { archive_write_free(archive) }
        archive_write_add_filter_gzip(archive)
        archive_write_set_filter_option(archive, "gzip", "timestamp", nil)
        archive_write_set_format_pax_restricted(archive)
        guard archive_write_open_filename(archive, output.path) == ARCHIVE_OK else {
            throw BuildContextError.io(path: output.path, reason: Self.message(archive))
        }
        var files = 0
        var bytes: Int64 = 0
        var buffer = [UInt8](repeating: 0, count: 256 * 1024)
        for path in paths {
            let absolute = folder.path + "/" + path
            var info = stat()
            guard lstat(absolute, &info) == 0 else { throw BuildContextError.io(path: absolute, reason: String(cString: strerror(errno))) }
            let entry = archive_entry_new()
            defer { archive_entry_free(entry) }
            archive_entry_set_pathname(entry, path)
            archive_entry_set_perm(entry, info.st_mode & 0o7777)
            archive_entry_set_mtime(entry, 0, 0)
            archive_entry_set_uid(entry, 0)
            archive_entry_set_gid(entry, 0)
            switch info.st_mode & S_IFMT {
            case S_IFDIR:
                archive_entry_set_filetype(entry, EntryType.directory)
            case S_IFLNK:
                var target = [CChar](repeating: 0, count: 4097)
                let count = readlink(absolute, &target, 4096)
                guard count >= 0 else { throw BuildContextError.io(path: absolute, reason: String(cString: strerror(errno))) }
                archive_entry_set_filetype(entry, EntryType.symlink)
                archive_entry_set_symlink(entry, String(decoding: target.prefix(count).map { UInt8(bitPattern: $0) }, as: UTF8.self))
            case S_IFREG:
                archive_entry_set_filetype(entry, EntryType.regular)
                archive_entry_set_size(entry, Int64(info.st_size))
            default:
                // Sockets, devices, FIFOs cannot be built from; Docker skips them too.
                continue
            }
            guard archive_write_header(archive, entry) == ARCHIVE_OK else {
                throw BuildContextError.io(path: path, reason: Self.message(archive))
            }
            if (info.st_mode & S_IFMT) == S_IFREG {
                files += 1
                let descriptor = open(absolute, O_RDONLY)
                guard descriptor >= 0 else { throw BuildContextError.io(path: absolute, reason: String(cString: strerror(errno))) }
                defer { close(descriptor) }
                while true {
                    let count = buffer.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
                    if count < 0 { throw BuildContextError.io(path: absolute, reason: String(cString: strerror(errno))) }
                    if count == 0 { break }
                    let written = buffer.withUnsafeBytes { archive_write_data(archive, $0.baseAddress, count) }
                    guard written == count else { throw BuildContextError.io(path: path, reason: Self.message(archive)) }
                    bytes += Int64(count)
                }
            }
        }
        guard archive_write_close(archive) == ARCHIVE_OK else { throw BuildContextError.io(path: output.path, reason: Self.message(archive)) }
        let data = try Data(contentsOf: output)
        let digest = "sha256:" + SHA256.hash(data: data).map { String(format: "%02x", $0) }.joined()
        return Summary(files: files, bytes: bytes, compressedBytes: Int64(data.count), digest: digest, excluded: excluded)
    }

    static func message(_ archive: OpaquePointer?) -> String {
        archive_error_string(archive).map { String(cString: $0) } ?? "libarchive error \(archive_errno(archive))"
    }
}
