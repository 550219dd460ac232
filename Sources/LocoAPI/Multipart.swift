import Foundation
import LocoCore

/// A streaming `multipart/form-data` reader: parts are handed on as their bytes arrive, so a
/// build context goes to disk without ever being held in memory.
struct MultipartReader {
    enum Event {
        case begin(name: String, contentType: String?)
        case data([UInt8])
        case end
    }

    private enum State { case preamble, headers, body, done }

    private let delimiter: [UInt8]       // "\r\n--" + boundary
    private var pending: [UInt8] = Array("\r\n".utf8)  // so a boundary on the first line matches too
    private var state = State.preamble
    private var headerBytes = 0
    static let maxHeaderBytes = 16 * 1024

    var finished: Bool { state == .done }

    /// The boundary from a `Content-Type: multipart/form-data; boundary=…` header.
    static func boundary(contentType: String) -> String? {
        let parts = contentType.split(separator: ";").map { $0.trimmingCharacters(in: .whitespaces) }
        guard parts.first?.lowercased() == "multipart/form-data" else { return nil }
        for part in parts.dropFirst() where part.lowercased().hasPrefix("boundary=") {
            var value = String(part.dropFirst("boundary=".count))
            if value.hasPrefix("\""), value.hasSuffix("\""), value.count >= 2 { value = String(value.dropFirst().dropLast()) }
            return (1...70).contains(value.utf8.count) ? value : nil
        }
        return nil
    }

    init(boundary: String) {
        delimiter = Array("\r\n--\(boundary)".utf8)
    }

    /// Feeds bytes; returns the events they complete.
    mutating func feed(_ bytes: some Sequence<UInt8>) throws -> [Event] {
        pending.append(contentsOf: bytes)
        var events: [Event] = []
        while true {
            switch state {
            case .done:
                pending.removeAll()
                return events
            case .preamble:
                guard let found = find(delimiter, in: pending) else {
                    if pending.count > Self.maxHeaderBytes { throw CoreError.invalidUpload(reason: "no multipart boundary found where the body starts") }
                    return events
                }
                guard let next = try afterDelimiter(found) else { return events }
                pending.removeFirst(next)
            case .headers:
                guard let end = find(Array("\r\n\r\n".utf8), in: pending) else {
                    if pending.count > Self.maxHeaderBytes { throw CoreError.invalidUpload(reason: "a part's headers are larger than 16 KiB") }
                    return events
                }
                let text = String(decoding: pending[..<end], as: UTF8.self)
                pending.removeFirst(end + 4)
                events.append(try Self.parseHeaders(text))
                state = .body
            case .body:
                if let found = find(delimiter, in: pending) {
                    if found > 0 { events.append(.data(Array(pending[..<found]))) }
                    guard let next = try afterDelimiter(found) else {
                        // Keep the delimiter until we know what follows it.
                        if found > 0 { pending.removeFirst(found) }
                        return events
                    }
                    events.append(.end)
                    pending.removeFirst(next)
                } else {
                    let keep = delimiter.count - 1
                    if pending.count > keep {
                        events.append(.data(Array(pending[..<(pending.count - keep)])))
                        pending.removeFirst(pending.count - keep)
                    }
                    return events
                }
            }
        }
    }

    /// After a delimiter at `index`: `--` ends the body, CRLF starts a part. `nil`: need more bytes.
    private mutating func afterDelimiter(_ index: Int) throws -> Int? {
        let after = index + delimiter.count
        // Transport padding (spaces, tabs) may follow a delimiter.
        var cursor = after
        while cursor < pending.count, pending[cursor] == 32 || pending[cursor] == 9 { cursor += 1 }
        guard cursor + 2 <= pending.count else { return nil }
        if pending[cursor] == 45 && pending[cursor + 1] == 45 {
            state = .done
            return cursor + 2
        }
        guard pending[cursor] == 13 && pending[cursor + 1] == 10 else {
            throw CoreError.invalidUpload(reason: "a multipart boundary is not followed by a line break")
        }
        state = .headers
        return cursor + 2
    }

    private func find(_ needle: [UInt8], in haystack: [UInt8]) -> Int? {
        guard haystack.count >= needle.count, let first = needle.first else { return nil }
        var index = 0
        let last = haystack.count - needle.count
        while index <= last {
            if haystack[index] == first {
                var matched = true
                for offset in 1..<needle.count where haystack[index + offset] != needle[offset] {
                    matched = false
                    break
                }
                if matched { return index }
            }
            index += 1
        }
        return nil
    }

    static func parseHeaders(_ text: String) throws -> Event {
        var name: String?
        var contentType: String?
        for line in text.split(separator: "\r\n") {
            guard let colon = line.firstIndex(of: ":") else { continue }
            let key = line[..<colon].trimmingCharacters(in: .whitespaces).lowercased()
            let value = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            if key == "content-disposition" {
                for piece in value.split(separator: ";").map({ $0.trimmingCharacters(in: .whitespaces) }) where piece.lowercased().hasPrefix("name=") {
                    name = String(piece.dropFirst(5)).trimmingCharacters(in: CharacterSet(charactersIn: "\""))
                }
            } else if key == "content-type" {
                contentType = value
            }
        }
        guard let name else { throw CoreError.invalidUpload(reason: "a part has no Content-Disposition name") }
        return .begin(name: name, contentType: contentType)
    }
}
