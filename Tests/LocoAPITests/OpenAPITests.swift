import Foundation
import HTTPTypes
import LocoAPI
import LocoCore
import LocoTestSupport
import Testing

@Suite("OpenAPI document")
struct OpenAPITests {
    static func document() throws -> [String: Any] {
        let data = try Data(contentsOf: Repo.root.appending(path: "openapi.json"))
        return try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
    }

    @Test("openapi.json describes exactly the routes the router serves")
    func routesMatch() throws {
        let document = try Self.document()
        #expect((document["openapi"] as? String)?.hasPrefix("3.") == true)
        let paths = try #require(document["paths"] as? [String: [String: Any]])
        let documented = Set(paths.flatMap { path, operations in operations.keys.map { "\($0.uppercased()) \(path)" } })
        let served = Set(APIRoutes.all.map { "\($0.method.rawValue) \($0.path)" })
        #expect(documented == served, "served but not documented: \(served.subtracting(documented).sorted()); documented but not served: \(documented.subtracting(served).sorted())")

        for route in APIRoutes.all {
            let operation = try #require(paths[route.path]?[route.method.rawValue.lowercased()] as? [String: Any])
            let security = operation["security"] as? [[String: Any]] ?? []
            #expect(security.isEmpty == !route.authenticated, "\(route.method) \(route.path): security does not match whether it needs a token")
            // Every path parameter of the route is declared.
            let declared = Set((operation["parameters"] as? [[String: Any]] ?? []).filter { $0["in"] as? String == "path" }.compactMap { $0["name"] as? String })
            let inPath = Set(route.path.split(separator: "/").filter { $0.hasPrefix("{") }.map { String($0.dropFirst().dropLast()) })
            #expect(declared == inPath, "\(route.method) \(route.path): path parameters \(declared) vs \(inPath)")
            let responses = try #require(operation["responses"] as? [String: Any])
            #expect(responses.keys.contains { $0.hasPrefix("2") }, "\(route.method) \(route.path) documents no success")
            if route.authenticated { #expect(responses["401"] != nil, "\(route.method) \(route.path) does not document 401") }
        }
    }

    @Test("the error codes in openapi.json and README.md are the closed list the code uses")
    func errorCodes() throws {
        let document = try Self.document()
        let components = try #require(document["components"] as? [String: Any])
        let schemas = try #require(components["schemas"] as? [String: Any])
        let error = try #require((schemas["Error"] as? [String: Any])?["properties"] as? [String: Any])
        let detail = try #require((error["error"] as? [String: Any])?["properties"] as? [String: Any])
        let codes = try #require((detail["code"] as? [String: Any])?["enum"] as? [String])
        #expect(Set(codes) == Set(CoreError.allCodes))
        let readme = try String(contentsOf: Repo.root.appending(path: "README.md"), encoding: .utf8)
        for code in CoreError.allCodes {
            #expect(readme.contains("`\(code)`"), "README.md does not document the API error code \(code)")
        }
    }

    @Test("README.md's permission table is the matrix the code enforces")
    func permissionTable() throws {
        let readme = try String(contentsOf: Repo.root.appending(path: "README.md"), encoding: .utf8)
        for action in Action.allCases {
            let rule = Permissions.rule(for: action)
            let cells = Role.allCases.map { role in Permissions.allows(action, role: role) ? "yes" : "no" }
            let row = "| \(action.rawValue) | " + cells.joined(separator: " | ") + " | \(rule.appOwner ? "yes" : "no") |"
            #expect(readme.contains(row), "README.md lacks the row: \(row)")
        }
    }
}
