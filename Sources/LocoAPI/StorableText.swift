import Foundation
import Hummingbird
import LocoCore

/// PostgreSQL's text and jsonb cannot hold U+0000 ("invalid byte sequence for encoding UTF8:
/// 0x00"), so a request whose JSON carries one anywhere is refused up front with the field's
/// path, instead of failing as an internal error at the insert.
enum StorableText {
    static let reason = "contains a NUL character (\\u0000), which cannot be stored"

    /// Whether JSON text may hold U+0000: it can only be written as the escape `\u0000` (a raw
    /// one is refused by the parsers as a control character), so text without one is not walked.
    static func mayHoldNUL(_ json: some Collection<UInt8>) -> Bool {
        json.firstRange(of: Array(#"\u0000"#.utf8)) != nil
    }

    /// `name` as an error message can show it: U+0000 written as `\u0000`.
    static func shown(_ name: some StringProtocol) -> String {
        String(name).replacingOccurrences(of: "\u{0}", with: "\\u0000")
    }

    static func holdsNUL(_ text: some StringProtocol) -> Bool {
        text.unicodeScalars.contains("\u{0}")
    }

    /// The path (`vars.A`, `services[0].command`) of the first string or key in a parsed JSON
    /// value (JSONSerialization's) that holds U+0000; nil when there is none.
    static func pathOfNUL(in value: Any, at path: String = "") -> String? {
        switch value {
        case let text as String:
            return holdsNUL(text) ? (path.isEmpty ? "body" : path) : nil
        case let object as [String: Any]:
            for key in object.keys.sorted() {
                let inner = path.isEmpty ? shown(key) : "\(path).\(shown(key))"
                if holdsNUL(key) { return inner }
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
        throw CoreError.invalidField(field: String(path.prefix(200)), reason: reason, hint: "Remove the NUL character: text fields hold text only.")
    }
}

/// Refuses a query parameter that holds U+0000 (sent as `%00`), which would reach PostgreSQL
/// as text it cannot hold: `GET /v1/apps?team=%00` answered 500.
struct StorableQueryMiddleware: RouterMiddleware {
    typealias Context = BasicRequestContext

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        // Most requests carry no %00 at all; only those are decoded and looked at.
        if let query = request.uri.query, query.contains("%00") {
            for (name, value) in request.uri.queryParameters where StorableText.holdsNUL(name) || StorableText.holdsNUL(value) {
                throw CoreError.invalidField(field: StorableText.shown(name.prefix(100)), reason: StorableText.reason, hint: "Remove the %00 from the query.")
            }
        }
        return try await next(request, context)
    }
}
