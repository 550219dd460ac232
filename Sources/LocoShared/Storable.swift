/// PostgreSQL's `text` and `jsonb` cannot hold U+0000 ("invalid byte sequence for encoding
/// UTF8: 0x00", "unsupported Unicode escape sequence"). What Loco stores from outside — a build's
/// output, an app's last log lines, a handler's error — may carry one; it is stored with U+FFFD
/// (�) in its place, so one binary byte never keeps a job's outcome or a deployment's failure
/// report from being written.
public enum Storable {
    /// `text` with every U+0000 replaced by U+FFFD.
    public static func text(_ text: String) -> String {
        guard text.utf8.contains(0) else { return text }
        return String(String.UnicodeScalarView(text.unicodeScalars.map { $0 == "\u{0}" ? "\u{FFFD}" : $0 }))
    }

    /// JSON text (an encoder's output) with every `\u0000` escape replaced by `\uFFFD`. A
    /// backslash in JSON text only ever starts an escape, so stepping over each escape whole
    /// never mistakes an escaped backslash followed by `u0000` for one.
    public static func json(_ json: String) -> String {
        let bytes = Array(json.utf8)
        guard bytes.contains(UInt8(ascii: "\\")) else { return json }
        let nul = Array(#"\u0000"#.utf8)
        let replacement = Array(#"\uFFFD"#.utf8)
        var output: [UInt8] = []
        output.reserveCapacity(bytes.count)
        var index = 0
        var changed = false
        while index < bytes.count {
            guard bytes[index] == UInt8(ascii: "\\") else {
                output.append(bytes[index])
                index += 1
                continue
            }
            if bytes[index...].starts(with: nul) {
                output.append(contentsOf: replacement)
                index += nul.count
                changed = true
            } else {
                output.append(contentsOf: bytes[index..<min(index + 2, bytes.count)])
                index += 2
            }
        }
        return changed ? String(decoding: output, as: UTF8.self) : json
    }
}

extension JSONValue {
    /// `jsonText` as PostgreSQL's jsonb can hold it (see `Storable`).
    public var storableText: String { Storable.json(jsonText) }
}
