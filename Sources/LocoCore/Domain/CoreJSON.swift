import Foundation
import LocoQueue

/// JSON as the API and the database write it: timestamps are RFC 3339 UTC with milliseconds,
/// output is stable (sorted keys). Models spell their snake_case keys out in CodingKeys, so map
/// keys (env var names, config keys) are never rewritten.
public enum CoreJSON {
    public static var encoder: JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        encoder.dateEncodingStrategy = .custom { date, encoder in
            var container = encoder.singleValueContainer()
            try container.encode(formatTimestamp(date))
        }
        return encoder
    }

    public static var decoder: JSONDecoder {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .custom { decoder in
            let text = try decoder.singleValueContainer().decode(String.self)
            if let date = parseTimestamp(text) { return date }
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "not an RFC 3339 timestamp: \(text)"))
        }
        return decoder
    }

    /// The queue's format, so job rows and domain rows read the same.
    public static func formatTimestamp(_ date: Date) -> String { JSONCoding.formatTimestamp(date) }

    public static func parseTimestamp(_ text: String) -> Date? { JSONCoding.parseTimestamp(text) }

    public static func encode<T: Encodable>(_ value: T) -> String {
        String(decoding: (try? encoder.encode(value)) ?? Data("null".utf8), as: UTF8.self)
    }
}
