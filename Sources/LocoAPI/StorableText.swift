import Foundation
import Hummingbird
import LocoCore

/// PostgreSQL's text and jsonb cannot hold U+0000 ("invalid byte sequence for encoding UTF8:
/// 0x00"), so a request whose JSON carries one anywhere is refused up front with the field's
/// path, instead of failing as an internal error at the insert.
enum StorableText {
    /// The path (`vars.A`, `services[0].command`) of the first string or key in a parsed JSON
    /// value (JSONSerialization's) that holds U+0000; nil when there is none.
    static func pathOfNUL(in value: Any, at path: String = "") -> String? {
        switch value {
        case let text as String:
            return text.unicodeScalars.contains("\u{0}") ? (path.isEmpty ? "body" : path) : nil
        case let object as [String: Any]:
            for key in object.keys.sorted() {
                // Shown escaped: a key is part of the path in the error message.
                let shown = key.replacingOccurrences(of: "\u{0}", with: "\\u0000")
                let inner = path.isEmpty ? shown : "\(path).\(shown)"
                if key.unicodeScalars.contains("\u{0}") { return inner }
                if let found = pathOfNUL(in: object[key]!, at: inner) { return found }
            }
            return nil
        case let array as [Any]:
            for (index, element) in array.enumerated() {
                if let found = pathOfNUL(in: element, at: "\(path)[\(index)]") { return found }
            }
            return nil
        default:
            return nil
        }
    }

    /// Throws `invalid_field` naming where `value` (under `prefix`) holds U+0000.
    static func check(_ value: Any, under prefix: String = "") throws {
        guard let path = pathOfNUL(in: value, at: prefix) else { return }
        throw CoreError.invalidField(field: String(path.prefix(200)), reason: "contains a NUL character (\\u0000), which cannot be stored",
                                     hint: "Remove the NUL character: text fields hold text only.")
    }
}

/// Refuses a query parameter that holds U+0000 (sent as `%00`), which would reach PostgreSQL
/// as text it cannot hold: `GET /v1/apps?team=%00` answered 500.
struct StorableQueryMiddleware: RouterMiddleware {
    typealias Context = BasicRequestContext

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        // Most requests carry no %00 at all; only those are decoded and looked at.
        if let query = request.uri.query, query.contains("%00") {
            for (name, value) in request.uri.queryParameters {
                let parameter = [String(name), String(value)]
                guard parameter.contains(where: { $0.unicodeScalars.contains("\u{0}") }) else { continue }
                throw CoreError.invalidField(field: String(name.prefix(100)).replacingOccurrences(of: "\u{0}", with: "\\u0000"),
                                             reason: "contains a NUL character (\\u0000), which cannot be stored",
                                             hint: "Remove the %00 from the query.")
            }
        }
        return try await next(request, context)
    }
}
