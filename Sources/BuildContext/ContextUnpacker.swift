import CArchive
import Foundation

/// Unpacks an uploaded build context into a fresh folder, refusing anything that could reach
/// outside it or that a build has no business with: absolute paths, `..`, links that point
/// outside, device files and FIFOs; and capping total size, file count and path length.
/// The first bad entry fails the whole unpack, naming the entry.
public struct ContextUnpacker: Sendable {
    public var maxBytes: Int64
    public var maxFiles: Int
    public var maxPathLength: Int

    public init(maxBytes: Int64 = 2 * 1024 * 1024 * 1024, maxFiles: Int = 100_000, maxPathLength: Int = 4096) {
        self.maxBytes = maxBytes
        self.maxFiles = maxFiles
        self.maxPathLength = maxPathLength
    }

    public struct Summary: Sendable, Equatable {
        public var files: Int
        public var bytes: Int64
    }

    /// Unpacks `archive` into `destination`, which must not exist yet (it is created).
    @discardableResult
    public func unpack(_ archivePath: URL, into destination: URL) throws -> Summary {
        guard !FileManager.default.fileExists(atPath: destination.path) else {
            throw BuildContextError.io(path: destination.path, reason: "the build folder already exists")
        }
        try FileManager.default.createDirectory(at: destination, withIntermediateDirectories: true)
        do {
            return try extract(archivePath, into: destination.standardizedFileURL.path)
        } catch {
            // Nothing half-unpacked stays behind.
            try? FileManager.default.removeItem(at: destination)
            throw error
        }
    }

    private func extract(_ archivePath: URL, into root: String) throws -> Summary {
        guard let reader = archive_read_new() else { throw BuildContextError.unreadable(reason: "libarchive is out of memory") }
        defer { archive_read_free(reader) }
        archive_read_support_filter_gzip(reader)
        archive_read_support_format_tar(reader)
        guard archive_read_open_filename(reader, archivePath.path, 256 * 1024) == ARCHIVE_OK else {
            throw BuildContextError.unreadable(reason: ContextPacker.message(reader))
        }
        guard let writer = archive_write_disk_new() else { throw BuildContextError.unreadable(reason: "libarchive is out of memory") }
        defer { archive_write_free(writer) }
        // libarchive's own guards as a second line behind the checks below (absolute paths are
        // refused there; the paths handed to the writer are the root-joined, checked ones).
        let flags = ARCHIVE_EXTRACT_SECURE_SYMLINKS | ARCHIVE_EXTRACT_SECURE_NODOTDOT | ARCHIVE_EXTRACT_PERM | ARCHIVE_EXTRACT_TIME
        archive_write_disk_set_options(writer, flags)

        var files = 0
        var bytes: Int64 = 0
        var entry: OpaquePointer?
        while true {
            let status = archive_read_next_header(reader, &entry)
            if status == ARCHIVE_EOF { break }
            guard status == ARCHIVE_OK || status == ARCHIVE_WARN else {
                throw BuildContextError.unreadable(reason: ContextPacker.message(reader))
            }
            let name = archive_entry_pathname(entry).map { String(cString: $0) } ?? ""
            let relative = try checkedPath(name)
            files += 1
            if files > maxFiles { throw BuildContextError.tooLarge(what: "files", limit: Int64(maxFiles)) }
            let type = Int32(archive_entry_filetype(entry))
            let hardlink = archive_entry_hardlink(entry).map { String(cString: $0) }
            if let hardlink {
                // A hard link must name a file inside the context.
                let target = try checkedPath(hardlink, entry: name, what: "is a hard link to")
                archive_entry_set_hardlink(entry, root + "/" + target)
            }
            switch hardlink == nil ? type : Int32(EntryType.regular) {
            case Int32(EntryType.regular), Int32(EntryType.directory):
                break
            case Int32(EntryType.symlink):
                let target = archive_entry_symlink(entry).map { String(cString: $0) } ?? ""
                try checkLink(entry: name, from: relative, to: target)
            default:
                throw BuildContextError.invalidEntry(entry: name, reason: "is a \(Self.describe(type)); only files, folders and links can be built from")
            }
            bytes += archive_entry_size(entry)
            if bytes > maxBytes { throw BuildContextError.tooLarge(what: "bytes", limit: maxBytes) }
            archive_entry_set_pathname(entry, root + "/" + relative)
            // Owners from the archive mean nothing on the build machine.
            archive_entry_set_uid(entry, Int64(getuid()))
            archive_entry_set_gid(entry, Int64(getgid()))
            guard archive_write_header(writer, entry) >= ARCHIVE_WARN else {
                throw BuildContextError.invalidEntry(entry: name, reason: "could not be written: \(ContextPacker.message(writer))")
            }
            if type == Int32(EntryType.regular) && archive_entry_size(entry) > 0 {
                var buffer: UnsafeRawPointer?
                var size = 0
                var offset: Int64 = 0
                while true {
                    let read = archive_read_data_block(reader, &buffer, &size, &offset)
                    if read == ARCHIVE_EOF { break }
                    guard read == ARCHIVE_OK else { throw BuildContextError.unreadable(reason: "\(name): \(ContextPacker.message(reader))") }
                    guard archive_write_data_block(writer, buffer, size, offset) == ARCHIVE_OK else {
                        throw BuildContextError.io(path: name, reason: ContextPacker.message(writer))
                    }
                }
            }
            guard archive_write_finish_entry(writer) >= ARCHIVE_WARN else {
                throw BuildContextError.io(path: name, reason: ContextPacker.message(writer))
            }
        }
        return Summary(files: files, bytes: bytes)
    }

    /// The entry's path, normalized; refused if absolute, escaping, or too long.
    func checkedPath(_ name: String, entry: String? = nil, what: String? = nil) throws -> String {
        let owner = entry ?? name
        guard !name.isEmpty else { throw BuildContextError.invalidEntry(entry: owner, reason: "has an empty name") }
        guard name.utf8.count <= maxPathLength else {
            throw BuildContextError.invalidEntry(entry: String(name.prefix(200)) + "…", reason: "has a path longer than \(maxPathLength) bytes")
        }
        guard !name.hasPrefix("/") else {
            throw BuildContextError.invalidEntry(entry: owner, reason: what.map { "\($0) an absolute path (\(name)), outside the context" } ?? "has an absolute path")
        }
        var parts: [Substring] = []
        for part in name.split(separator: "/") where part != "." {
            if part == ".." {
                throw BuildContextError.invalidEntry(entry: owner, reason: what.map { "\($0) '\(name)', outside the context" } ?? "climbs out of the context with '..'")
            }
            if part.utf8.count > 255 { throw BuildContextError.invalidEntry(entry: owner, reason: "has a name longer than 255 bytes") }
            parts.append(part)
        }
        guard !parts.isEmpty else { return "." }
        return parts.joined(separator: "/")
    }

    /// A symlink must resolve inside the context.
    func checkLink(entry: String, from relative: String, to target: String) throws {
        guard !target.hasPrefix("/") else {
            throw BuildContextError.invalidEntry(entry: entry, reason: "is a link to \(target), outside the context")
        }
        var depth = relative.split(separator: "/").count - 1
        for part in target.split(separator: "/") where part != "." {
            depth += part == ".." ? -1 : 1
            if depth < 0 { throw BuildContextError.invalidEntry(entry: entry, reason: "is a link to \(target), outside the context") }
        }
    }

    static func describe(_ type: Int32) -> String {
        switch type {
        case Int32(EntryType.characterDevice): "character device"
        case Int32(EntryType.blockDevice): "block device"
        case Int32(EntryType.fifo): "FIFO"
        case Int32(EntryType.socket): "socket"
        default: "special file (type \(type))"
        }
    }
}
