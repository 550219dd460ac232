import CZlib
import Crypto
import Foundation

/// Build contexts on the filesystem, content-addressed: `ROOT/sha256/<hex>.tar.gz`. An upload is
/// written to `ROOT/incoming/` while it is hashed and checked, and moved into place only whole.
public struct ContextStore: Sendable {
    public let root: URL
    /// The most compressed bytes one context may have.
    public let limit: Int64

    public init(root: URL, limit: Int64 = 200 * 1024 * 1024) {
        self.root = root
        self.limit = limit
    }

    public func path(digest: String) -> URL? {
        guard digest.hasPrefix("sha256:"), digest.count == 71,
              digest.dropFirst(7).allSatisfy({ $0.isHexDigit && !$0.isUppercase }) else { return nil }
        return root.appending(path: "sha256").appending(path: "\(digest.dropFirst(7)).tar.gz")
    }

    /// Starts an upload.
    public func begin() throws -> ContextUpload {
        let incoming = root.appending(path: "incoming")
        try FileManager.default.createDirectory(at: incoming, withIntermediateDirectories: true)
        try FileManager.default.createDirectory(at: root.appending(path: "sha256"), withIntermediateDirectories: true)
        return try ContextUpload(store: self, temporary: incoming.appending(path: UUID().uuidString))
    }

    /// Deletes stored contexts. Only `CoreStore.removeContexts` calls it, under the digests' locks:
    /// a file is deleted only once no unfinished deployment names it.
    func remove(digests: [String]) {
        for digest in digests {
            if let path = path(digest: digest) { try? FileManager.default.removeItem(at: path) }
        }
    }

    /// Whether the context's file is here.
    public func contains(digest: String) -> Bool {
        path(digest: digest).map { FileManager.default.fileExists(atPath: $0.path) } ?? false
    }

    /// Stored contexts last touched more than `minimumAge` ago: candidates for the sweep, which
    /// deletes those no unfinished deployment names (uploads that lost their deployment to a crash).
    public func storedDigests(olderThan minimumAge: TimeInterval) -> [String] {
        files(in: "sha256", olderThan: minimumAge).map { "sha256:" + $0.lastPathComponent.replacingOccurrences(of: ".tar.gz", with: "") }
    }

    /// Deletes uploads abandoned half-way (a crashed API), and returns how many.
    public func sweepIncoming(minimumAge: TimeInterval = 3600) -> Int {
        files(in: "incoming", olderThan: minimumAge).count { (try? FileManager.default.removeItem(at: $0)) != nil }
    }

    private func files(in folder: String, olderThan minimumAge: TimeInterval) -> [URL] {
        let directory = root.appending(path: folder)
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: directory.path) else { return [] }
        let now = Date()
        return names.map { directory.appending(path: $0) }.filter { file in
            let modified = (try? FileManager.default.attributesOfItem(atPath: file.path)[.modificationDate] as? Date) ?? now
            return now.timeIntervalSince(modified) >= minimumAge
        }
    }
}

/// A checked upload, waiting in `incoming/` until the deployment that names it is written. It is
/// placed only then, under its digest's lock (`CoreStore.submit`): a removal that read its list
/// before that deployment existed (an earlier deployment of the same context ended) cannot take
/// the file from under it.
public struct StagedContext: Sendable {
    public let digest: String
    public let bytes: Int64
    let store: ContextStore
    let file: URL

    /// Moves the upload into place. rename(2) replaces a file of the same context atomically:
    /// the bytes are the same, a reader keeps the one it opened, and the new file's time tells a
    /// sweep it is in use again.
    public func place() throws {
        let target = store.path(digest: digest)!
        guard rename(file.path, target.path) == 0 else {
            throw CocoaError(.fileWriteUnknown, userInfo: [NSFilePathErrorKey: target.path,
                                                          NSLocalizedDescriptionKey: "could not place the build context: \(String(cString: strerror(errno)))"])
        }
    }

    /// Deletes the upload if it was never placed.
    public func discard() {
        try? FileManager.default.removeItem(at: file)
    }
}

/// One upload in progress: hashes, counts and inflates what it is given, so a body that is not a
/// gzip'd tar, or too large, is refused while it streams, before it fills the disk.
public final class ContextUpload {
    let store: ContextStore
    let temporary: URL
    let file: FileHandle
    var hasher = SHA256()
    var bytes: Int64 = 0
    var inflater: GzipChecker

    init(store: ContextStore, temporary: URL) throws {
        self.store = store
        self.temporary = temporary
        _ = FileManager.default.createFile(atPath: temporary.path, contents: nil)
        self.file = try FileHandle(forWritingTo: temporary)
        self.inflater = GzipChecker(maximumInflated: store.limit * 20)
    }

    public func write(_ chunk: some Collection<UInt8>) throws {
        bytes += Int64(chunk.count)
        if bytes > store.limit { throw CoreError.payloadTooLarge(limit: store.limit) }
        let data = Data(chunk)
        hasher.update(data: data)
        try inflater.feed(data)
        try file.write(contentsOf: data)
    }

    /// Checks the archive ended properly. The file stays in `incoming/` until `StagedContext.place`.
    public func finish() throws -> StagedContext {
        do {
            try inflater.finish()
            try file.close()
        } catch {
            abandon()
            throw error
        }
        let digest = "sha256:" + hasher.finalize().map { String(format: "%02x", $0) }.joined()
        return StagedContext(digest: digest, bytes: bytes, store: store, file: temporary)
    }

    public func abandon() {
        try? file.close()
        try? FileManager.default.removeItem(at: temporary)
    }
}

/// Inflates a gzip stream without keeping the output, to prove it is whole and holds a tar.
/// zlib keeps a pointer to its `z_stream`, so the stream lives at one fixed address.
final class GzipChecker {
    private let streamPointer = UnsafeMutablePointer<z_stream>.allocate(capacity: 1)
    private var started = false
    private var ended = false
    private var inflated: Int64 = 0
    private var header: [UInt8] = []
    private let maximumInflated: Int64

    init(maximumInflated: Int64) {
        self.maximumInflated = maximumInflated
        streamPointer.initialize(to: z_stream())
    }

    deinit {
        if started { inflateEnd(streamPointer) }
        streamPointer.deallocate()
    }

    func feed(_ data: Data) throws {
        if data.isEmpty { return }
        if !started {
            guard data.count < 2 || (data[data.startIndex] == 0x1f && data[data.startIndex + 1] == 0x8b) else {
                throw CoreError.invalidContext(reason: "the body does not start with the gzip magic bytes 1f 8b")
            }
            // 15 window bits + 16: expect a gzip header and trailer.
            let status = inflateInit2_(streamPointer, 15 + 16, zlibVersion(), Int32(MemoryLayout<z_stream>.size))
            guard status == Z_OK else { throw CoreError.invalidContext(reason: "zlib could not start (\(status))") }
            started = true
        }
        if ended {
            // Concatenated gzip members are legal; anything else after the end is not.
            if data.allSatisfy({ $0 == 0 }) { return }
            inflateReset(streamPointer)
            ended = false
        }
        var output = [UInt8](repeating: 0, count: 64 * 1024)
        var input = [UInt8](data)
        try input.withUnsafeMutableBufferPointer { inputBuffer in
            streamPointer.pointee.next_in = inputBuffer.baseAddress
            streamPointer.pointee.avail_in = uInt(inputBuffer.count)
            repeat {
                let produced: Int = try output.withUnsafeMutableBufferPointer { outputBuffer in
                    streamPointer.pointee.next_out = outputBuffer.baseAddress
                    streamPointer.pointee.avail_out = uInt(outputBuffer.count)
                    let status = inflate(streamPointer, Z_NO_FLUSH)
                    switch status {
                    case Z_OK, Z_BUF_ERROR: break
                    case Z_STREAM_END: ended = true
                    default:
                        let reason = streamPointer.pointee.msg.map { String(cString: $0) } ?? "code \(status)"
                        throw CoreError.invalidContext(reason: "the gzip stream is corrupt (\(reason))")
                    }
                    return outputBuffer.count - Int(streamPointer.pointee.avail_out)
                }
                inflated += Int64(produced)
                if header.count < 512 { header += output.prefix(min(produced, 512 - header.count)) }
                if inflated > maximumInflated {
                    throw CoreError.invalidContext(reason: "it inflates to more than \(maximumInflated) bytes")
                }
                if ended && streamPointer.pointee.avail_in > 0 {
                    // Another gzip member follows in this chunk.
                    let rest = Array(UnsafeBufferPointer(start: streamPointer.pointee.next_in, count: Int(streamPointer.pointee.avail_in)))
                    if rest.allSatisfy({ $0 == 0 }) { streamPointer.pointee.avail_in = 0 } else { inflateReset(streamPointer); ended = false }
                }
            } while streamPointer.pointee.avail_in > 0 || streamPointer.pointee.avail_out == 0
        }
    }

    func finish() throws {
        guard started else { throw CoreError.invalidContext(reason: "the body is empty") }
        guard ended else { throw CoreError.invalidContext(reason: "the gzip stream ends early (truncated upload?)") }
        try Self.checkTarHeader(header)
    }

    /// The first 512 bytes must be a tar header with a correct checksum, or all zero (an empty archive).
    static func checkTarHeader(_ block: [UInt8]) throws {
        guard block.count == 512 else { throw CoreError.invalidContext(reason: "it holds \(block.count) bytes, less than one tar block") }
        if block.allSatisfy({ $0 == 0 }) { return }
        let field = block[148..<156].prefix { $0 != 0 && $0 != 32 }
        guard let stored = Int(String(decoding: field.drop { $0 == 32 }, as: UTF8.self), radix: 8) else {
            throw CoreError.invalidContext(reason: "the first block is not a tar header")
        }
        var sum = 0
        for (index, byte) in block.enumerated() { sum += (148..<156).contains(index) ? 32 : Int(byte) }
        guard sum == stored else { throw CoreError.invalidContext(reason: "the first tar header's checksum does not match") }
    }
}
