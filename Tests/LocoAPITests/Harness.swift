import AsyncHTTPClient
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import LocoAPI
import LocoCore
import LocoQueue
import LocoTestSupport
import Logging
import NIOCore
import NIOHTTP1
import Testing

/// Queue and domain migrations, as `locod migrate` applies them.
let allMigrations: [(component: String, migrations: [Migration])] = [
    (QueueSchema.component, QueueSchema.migrations), (CoreSchema.component, CoreSchema.migrations),
]

/// A response, with its body parsed as JSON when it is JSON.
struct Reply {
    var status: Int
    var headers: HTTPFields
    var text: String
    var json: JSONValue? { JSONValue.parse(text) }
    var errorCode: String? { json?["error"]?["code"]?.stringValue }
}

/// One API over one fresh database, with a temp context folder, driven through Hummingbird's test client.
struct Harness {
    let database: TestDatabase
    let api: API
    let store: CoreStore
    let contextRoot: URL
    let client: any TestClientProtocol

    static func with<T: Sendable>(_ setup: TestingSetup = .router, contextLimit: Int64 = 1024 * 1024, registry: RegistryTokenIssuer? = nil,
                                  _ body: @escaping @Sendable (Harness) async throws -> T) async throws -> T {
        try await TestDatabase.with(migrations: allMigrations) { database in
            let root = FileManager.default.temporaryDirectory.appending(path: "loco-contexts-\(UUID().uuidString)")
            defer { try? FileManager.default.removeItem(at: root) }
            let api = API(database: database.client, contexts: ContextStore(root: root, limit: contextLimit), registry: registry,
                          logger: database.logger, eventPollInterval: .milliseconds(20))
            let app = Application(router: api.router(), server: API.server, configuration: .init(address: .hostname("127.0.0.1", port: 0)), logger: database.logger)
            return try await app.test(setup) { client in
                try await body(Harness(database: database, api: api, store: CoreStore(logger: database.logger), contextRoot: root, client: client))
            }
        }
    }

    func call(_ method: HTTPRequest.Method, _ path: String, token: String? = nil, headers: HTTPFields = [:],
              json: String? = nil, body: ByteBuffer? = nil) async throws -> Reply {
        var fields = headers
        if let token { fields[.authorization] = "Bearer \(token)" }
        var payload = body
        if let json {
            if fields[.contentType] == nil { fields[.contentType] = "application/json" }
            payload = ByteBuffer(string: json)
        }
        let response = try await client.executeRequest(uri: path, method: method, headers: fields, body: payload)
        return Reply(status: Int(response.status.code), headers: response.headers, text: String(buffer: response.body))
    }

    // MARK: fixtures

    func user(_ email: String) async throws -> User {
        try await store.createUser(email: email, name: "", on: database.client)
    }

    func token(for user: User, kind: TokenKind = .personal, app: App? = nil, lifetime: Duration? = nil) async throws -> String {
        try await store.createToken(kind: kind, name: "test", userID: user.id, appID: app?.id, lifetime: lifetime, on: database.client).secret
    }

    func team(_ name: String, owner: User) async throws -> Team {
        try await store.createTeam(name: name, ownerID: owner.id, on: database.client)
    }

    func add(_ user: User, to team: Team, as role: Role) async throws {
        try await store.setMember(teamID: team.id, teamName: team.name, userID: user.id, role: role, on: database.client)
    }

    func app(_ name: String, in team: Team, owner: User, type: AppType = .service) async throws -> App {
        try await store.createApp(teamID: team.id, name: name, type: type, ownerID: owner.id, on: database.client)
    }

    /// A deployment submitted straight through the store, with a real stored context.
    func deployment(of app: App, queueBehind: Bool = false) async throws -> Deployment {
        let upload = try api.contexts.begin()
        try upload.write(Array(try await TarGz.sample()))
        let staged = try upload.finish()
        defer { staged.discard() }
        return try await store.submit(DeploymentRequest(app: app, config: .object(["name": .string(app.name)]), context: staged,
                                                        createdBy: nil, queueBehind: queueBehind), on: database.client)
    }

    /// A multipart deployment body.
    static func deployBody(config: String = #"{"name":"web"}"#, context: Data?, boundary: String = "loco-boundary-7f3a") -> (HTTPFields, ByteBuffer) {
        var body = Data()
        body.append(Data("--\(boundary)\r\nContent-Disposition: form-data; name=\"config\"\r\nContent-Type: application/json\r\n\r\n\(config)\r\n".utf8))
        if let context {
            body.append(Data("--\(boundary)\r\nContent-Disposition: form-data; name=\"context\"; filename=\"context.tar.gz\"\r\nContent-Type: application/gzip\r\n\r\n".utf8))
            body.append(context)
            body.append(Data("\r\n".utf8))
        }
        body.append(Data("--\(boundary)--\r\n".utf8))
        return ([.contentType: "multipart/form-data; boundary=\(boundary)"], ByteBuffer(bytes: body))
    }
}

/// Real gzip'd tars, made by the system's tar and gzip.
enum TarGz {
    static func sample(files: [String: String] = ["Dockerfile": "FROM scratch\n", "index.html": "hello\n"]) async throws -> Data {
        let folder = FileManager.default.temporaryDirectory.appending(path: "loco-tar-\(UUID().uuidString)")
        try? FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        for (name, content) in files { try? content.write(to: folder.appending(path: name), atomically: true, encoding: .utf8) }
        let output = folder.path + ".tar.gz"
        defer { try? FileManager.default.removeItem(atPath: output) }
        let result = try await runCommand(URL(fileURLWithPath: "/bin/tar"), ["czf", output, "-C", folder.path, "."])
        guard result.status == 0 else { throw TestSetupError("tar failed: \(result.output)") }
        return try Data(contentsOf: URL(fileURLWithPath: output))
    }
}

/// A request over a real connection of its own (AsyncHTTPClient), for concurrency and streaming.
func liveCall(port: Int, _ method: HTTPRequest.Method, _ path: String, token: String? = nil, headers: HTTPFields = [:],
              body: ByteBuffer? = nil) async throws -> Reply {
    var request = HTTPClientRequest(url: "http://127.0.0.1:\(port)\(path)")
    request.method = .init(rawValue: method.rawValue)
    for field in headers { request.headers.add(name: field.name.rawName, value: field.value) }
    if let token { request.headers.add(name: "Authorization", value: "Bearer \(token)") }
    if let body { request.body = .bytes(body) }
    let response = try await HTTPClient.shared.execute(request, timeout: .seconds(30))
    let bytes = try await response.body.collect(upTo: 10 << 20)
    return Reply(status: Int(response.status.code), headers: [:], text: String(buffer: bytes))
}
