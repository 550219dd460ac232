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

    /// Deletes contexts no deployment needs any more.
    public func remove(digests: [String]) {
        for digest in digests {
            if let path = path(digest: digest) { try? FileManager.default.removeItem(at: path) }
        }
    }

    /// Deletes stored contexts that are not in `keep` and older than `minimumAge` (uploads that
    /// lost their deployment to a crash), and abandoned incoming files.
    public func sweep(keep: Set<String>, minimumAge: TimeInterval = 3600) -> Int {
        var removed = 0
        let now = Date()
        for folder in ["sha256", "incoming"] {
            let directory = root.appending(path: folder)
            guard let names = try? FileManager.default.contentsOfDirectory(atPath: directory.path) else { continue }
            for name in names {
                let file = directory.appending(path: name)
                let digest = "sha256:" + name.replacingOccurrences(of: ".tar.gz", with: "")
                if folder == "sha256", keep.contains(digest) { continue }
                let modified = (try? FileManager.default.attributesOfItem(atPath: file.path)[.modificationDate] as? Date) ?? now
                if now.timeIntervalSince(modified) >= minimumAge, (try? FileManager.default.removeItem(at: file)) != nil { removed += 1 }
            }
        }
        return removed
    }
}

/// A context as it was stored.
public struct StoredContext: Sendable, Equatable {
    public var digest: String
    public var bytes: Int64
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

    /// Checks the archive ended properly and moves it into place.
    public func finish() throws -> StoredContext {
        do {
            try inflater.finish()
            try file.close()
        } catch {
            abandon()
            throw error
        }
        let digest = "sha256:" + hasher.finalize().map { String(format: "%02x", $0) }.joined()
        let target = store.path(digest: digest)!
        if FileManager.default.fileExists(atPath: target.path) {
            try? FileManager.default.removeItem(at: temporary)
            // Touch it, so a sweep does not take it from under the new deployment.
            try? FileManager.default.setAttributes([.modificationDate: Date()], ofItemAtPath: target.path)
        } else {
            try FileManager.default.moveItem(at: temporary, to: target)
        }
        return StoredContext(digest: digest, bytes: bytes)
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
