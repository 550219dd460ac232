import Foundation
import Hummingbird
import LocoCore
import NIOCore

/// Request bodies are checked strictly: JSON objects only, no unknown fields, every required
/// field present, each one the right type — with an error that names the field.
protocol StrictBody: Decodable {
    static var fields: [String] { get }
    static var required: [String] { get }
}

extension StrictBody {
    static var required: [String] { [] }
}

enum RequestReader {
    static let maxJSONBytes = 256 * 1024

    static func json<T: StrictBody>(_ type: T.Type, from request: Request) async throws -> T {
        let contentType = request.headers[.contentType] ?? ""
        guard contentType.lowercased().hasPrefix("application/json") else {
            throw CoreError.unsupportedMediaType(got: contentType.isEmpty ? "(none)" : contentType, expected: "application/json")
        }
        let buffer: ByteBuffer
        do {
            buffer = try await request.body.collect(upTo: maxJSONBytes)
        } catch {
            throw CoreError.payloadTooLarge(limit: Int64(maxJSONBytes))
        }
        return try decode(type, from: Data(buffer.readableBytesView))
    }

    static func decode<T: StrictBody>(_ type: T.Type, from data: Data) throws -> T {
        let object: Any
        do {
            object = try JSONSerialization.jsonObject(with: data)
        } catch {
            throw CoreError.invalidJSON(reason: data.isEmpty ? "the body is empty" : "it does not parse")
        }
        guard let dictionary = object as? [String: Any] else { throw CoreError.invalidJSON(reason: "expected a JSON object") }
        if StorableText.mayHoldNUL(data) { try StorableText.check(dictionary) }
        for key in dictionary.keys.sorted() where !T.fields.contains(key) {
            throw CoreError.unknownField(field: String(key.prefix(100)), allowed: T.fields)
        }
        for key in T.required where dictionary[key] == nil || dictionary[key] is NSNull {
            throw CoreError.missingField(field: key)
        }
        do {
            return try CoreJSON.decoder.decode(T.self, from: data)
        } catch let DecodingError.typeMismatch(expected, context), let DecodingError.valueNotFound(expected, context) {
            let field = context.codingPath.map(\.stringValue).joined(separator: ".")
            throw CoreError.invalidField(field: field, reason: "expected \(describe(expected))", hint: "See the request schema in openapi.json.")
        } catch let DecodingError.dataCorrupted(context) {
            let field = context.codingPath.map(\.stringValue).joined(separator: ".")
            throw CoreError.invalidField(field: field.isEmpty ? "body" : field, reason: context.debugDescription, hint: "See the request schema in openapi.json.")
        } catch {
            throw CoreError.invalidJSON(reason: "\(error)".prefix(200).description)
        }
    }

    private static func describe(_ type: Any.Type) -> String {
        switch type {
        case is String.Type: "a string"
        case is Int.Type, is Int64.Type: "an integer"
        case is Bool.Type: "true or false"
        default: "a value of type \(type)"
        }
    }
}

/// JSON responses in the API's one style.
func jsonResponse<T: Encodable>(_ value: T, status: HTTPResponse.Status = .ok) -> Response {
    let data = (try? CoreJSON.encoder.encode(value)) ?? Data("null".utf8)
    return Response(status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: data)))
}

func emptyResponse(_ status: HTTPResponse.Status = .noContent) -> Response {
    Response(status: status)
}
