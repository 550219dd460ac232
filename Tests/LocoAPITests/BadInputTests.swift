import Foundation
import HTTPTypes
import HummingbirdTesting
import LocoAPI
import LocoCore
import LocoQueue
import LocoTestSupport
import NIOCore
import PostgresNIO
import Testing

@Suite("Bad input")
struct BadInputTests {
    /// A team `acme` with owner `ann` and app `web`; returns ann's token.
    static func setUp(_ harness: Harness) async throws -> (token: String, app: App) {
        let ann = try await harness.user("ann@example.com")
        let team = try await harness.team("acme", owner: ann)
        let app = try await harness.app("web", in: team, owner: ann)
        return (try await harness.token(for: ann), app)
    }

    @Test("malformed, unknown, missing and mistyped JSON fields get 4xx with a code and a hint")
    func jsonErrors() async throws {
        try await Harness.with { harness in
            let (token, _) = try await Self.setUp(harness)
            let cases: [(String, Int, String)] = [
                (#"{"name": "x""#, 400, "invalid_json"),
                ("", 400, "invalid_json"),
                ("[1,2]", 400, "invalid_json"),
                (#"{"name":"ok","colour":"red"}"#, 400, "unknown_field"),
                (#"{"team":"acme"}"#, 400, "missing_field"),
                (#"{"name":42,"team":"acme"}"#, 422, "invalid_field"),
                (#"{"name":"ok","team":"acme","type":"lambda"}"#, 422, "invalid_field"),
                (#"{"name":"Web","team":"acme"}"#, 422, "invalid_name"),
                (#"{"name":"-web","team":"acme"}"#, 422, "invalid_name"),
                (#"{"name":"web-","team":"acme"}"#, 422, "invalid_name"),
                (#"{"name":"a_b","team":"acme"}"#, 422, "invalid_name"),
                (#"{"name":"\#(String(repeating: "a", count: 64))","team":"acme"}"#, 422, "invalid_name"),
                (#"{"name":"web","team":"acme"}"#, 409, "already_exists"),
                (#"{"name":"ok","team":"nope"}"#, 404, "not_found"),
            ]
            for (body, status, code) in cases {
                let reply = try await harness.call(.post, "/v1/apps", token: token, json: body)
                #expect(reply.status == status && reply.errorCode == code, "\(body): \(reply.status) \(reply.text)")
                #expect(reply.json?["error"]?["hint"]?.stringValue?.isEmpty == false)
            }
            let apps = try await harness.database.scalar("SELECT count(*) FROM loco_apps", as: Int64.self)
            #expect(apps == 1, "only the fixture app exists")

            let wrongType = try await harness.call(.post, "/v1/apps", token: token, headers: [.contentType: "text/plain"], body: ByteBuffer(string: #"{"name":"ok"}"#))
            #expect(wrongType.status == 415 && wrongType.errorCode == "unsupported_media_type")
            let huge = try await harness.call(.post, "/v1/apps", token: token, json: #"{"name":"\#(String(repeating: "x", count: 300_000))"}"#)
            #expect(huge.status == 413 && huge.errorCode == "payload_too_large")
            let badEnv = try await harness.call(.put, "/v1/apps/web/env", token: token, json: #"{"vars":{"1BAD":"x"}}"#)
            #expect(badEnv.status == 422 && badEnv.errorCode == "invalid_field", "\(badEnv.text)")
            // PostgreSQL's text cannot hold U+0000: a token named with one was a 500 at the insert.
            let nulCases: [(HTTPRequest.Method, String, String, String)] = [
                (.post, "/v1/tokens", #"{"name":"lap\u0000top"}"#, "name"),
                (.put, "/v1/apps/web/env", #"{"vars":{"A":"x\u0000y"}}"#, "vars.A"),
                (.post, "/v1/apps", #"{"name":"ok","team":"acme","type":"service","x\u0000":1}"#, "x\\u0000"),
            ]
            for (method, path, body, field) in nulCases {
                let reply = try await harness.call(method, path, token: token, json: body)
                #expect(reply.status == 422 && reply.errorCode == "invalid_field", "\(body): \(reply.status) \(reply.text)")
                #expect(reply.json?["error"]?["message"]?.stringValue == "\(field): contains a NUL character (\\u0000), which cannot be stored", "\(reply.text)")
            }
            // Percent-encoded in a query, too (GET /v1/apps?team=%00 answered 500).
            let nulQuery = try await harness.call(.get, "/v1/apps?team=%00", token: token)
            #expect(nulQuery.status == 422 && nulQuery.json?["error"]?["message"]?.stringValue == "team: contains a NUL character (\\u0000), which cannot be stored", "\(nulQuery.text)")
            let lineBreak = try await harness.call(.post, "/v1/tokens", token: token, json: #"{"name":"lap\ntop"}"#)
            #expect(lineBreak.status == 422 && lineBreak.json?["error"]?["message"]?.stringValue == "name: must be 1 to 100 characters, none of them control characters", "\(lineBreak.text)")
            #expect(try await harness.database.scalar("SELECT count(*) FROM loco_tokens WHERE name LIKE 'lap%'", as: Int64.self) == 0)
            let scaleCases: [(String, Int, String)] = [
                (#"{"replicas":0}"#, 422, "invalid_field"), (#"{"replicas":101}"#, 422, "invalid_field"),
                (#"{"replicas":"two"}"#, 422, "invalid_field"), (#"{"replicas":2,"service":"Not_A_Name"}"#, 422, "invalid_field"),
                ("{}", 400, "missing_field"), (#"{"replicas":2,"count":3}"#, 400, "unknown_field"),
            ]
            for (body, status, code) in scaleCases {
                let reply = try await harness.call(.put, "/v1/apps/web/scale", token: token, json: body)
                #expect(reply.status == status && reply.errorCode == code && reply.json?["error"]?["hint"]?.stringValue?.isEmpty == false,
                        "\(body): \(reply.status) \(reply.text)")
            }
            #expect(try await harness.database.scalar("SELECT count(*) FROM loco_app_scale", as: Int64.self) == 0, "no bad count was written")
            // Log parameters are checked before the runtime is asked (this harness has none: 503).
            for query in ["tail=many", "tail=-1", "since=yesterday", "since=5w"] {
                let badLogs = try await harness.call(.get, "/v1/apps/web/logs?\(query)", token: token)
                #expect(badLogs.status == 422 && badLogs.errorCode == "invalid_field", "\(query): \(badLogs.text)")
            }
            let noRuntime = try await harness.call(.get, "/v1/apps/web/logs?tail=10&since=10m", token: token)
            #expect(noRuntime.status == 503 && noRuntime.errorCode == "runtime_unavailable")
            let noRoute = try await harness.call(.get, "/v1/nothing", token: token)
            #expect(noRoute.status == 404 && noRoute.errorCode == "route_not_found")
            let wrongMethod = try await harness.call(.patch, "/v1/apps/web", token: token)
            #expect(wrongMethod.status == 405 && wrongMethod.errorCode == "method_not_allowed")
            let badToken = try await harness.call(.get, "/v1/apps", token: "loco_pat_nonsense")
            #expect(badToken.status == 401 && badToken.errorCode == "token_invalid")
            let basic = try await harness.call(.get, "/v1/apps", headers: [.authorization: "Basic Zm9vOmJhcg=="])
            #expect(basic.status == 401 && basic.errorCode == "unauthenticated")
        }
    }

    @Test("bad uploads are refused and leave nothing behind: no rows, no jobs, no files")
    func uploads() async throws {
        try await Harness.with(contextLimit: 64 * 1024) { harness in
            let (token, _) = try await Self.setUp(harness)
            let good = try await TarGz.sample()
            let notTar = try await Self.gzip(Data("just some text, not a tar archive\n".utf8))
            let big = try await TarGz.sample(files: ["noise.bin": (0..<200_000).map { _ in String(UnicodeScalar(UInt8.random(in: 33...126))) }.joined()])
            var truncated = good
            truncated.removeLast(12)
            var flipped = good
            flipped[flipped.count / 2] ^= 0xff
            let cases: [(String, HTTPFields, ByteBuffer, Int, String)] = [
                ("not multipart", [.contentType: "application/gzip"], ByteBuffer(bytes: good), 415, "unsupported_media_type"),
                ("not gzip", Harness.deployBody(context: Data("plain text".utf8)).0, Harness.deployBody(context: Data("plain text".utf8)).1, 400, "invalid_context"),
                ("gzip but not tar", Harness.deployBody(context: notTar).0, Harness.deployBody(context: notTar).1, 400, "invalid_context"),
                ("truncated gzip", Harness.deployBody(context: truncated).0, Harness.deployBody(context: truncated).1, 400, "invalid_context"),
                ("corrupt gzip", Harness.deployBody(context: flipped).0, Harness.deployBody(context: flipped).1, 400, "invalid_context"),
                ("over the size limit", Harness.deployBody(context: big).0, Harness.deployBody(context: big).1, 413, "payload_too_large"),
                ("config not JSON", Harness.deployBody(config: "name = 'web'", context: good).0, Harness.deployBody(config: "name = 'web'", context: good).1, 400, "invalid_json"),
                ("bad service name", Harness.deployBody(config: #"{"services":[{"name":"API"}]}"#, context: good).0,
                 Harness.deployBody(config: #"{"services":[{"name":"API"}]}"#, context: good).1, 422, "invalid_field"),
                // Past Int64 once: the size conversion trapped, which would have taken the API down.
                ("memory past any machine", Harness.deployBody(config: #"{"resources":{"memory":"99999999999Gi"}}"#, context: good).0,
                 Harness.deployBody(config: #"{"resources":{"memory":"99999999999Gi"}}"#, context: good).1, 422, "invalid_field"),
                ("config with a NUL character", Harness.deployBody(config: #"{"build":{"args":{"A":"x\u0000"}}}"#, context: good).0,
                 Harness.deployBody(config: #"{"build":{"args":{"A":"x\u0000"}}}"#, context: good).1, 422, "invalid_field"),
                ("config naming another app", Harness.deployBody(config: #"{"name":"shop"}"#, context: good).0,
                 Harness.deployBody(config: #"{"name":"shop"}"#, context: good).1, 422, "invalid_field"),
                ("no context for a service app", Harness.deployBody(context: nil).0, Harness.deployBody(context: nil).1, 400, "invalid_upload"),
                ("no closing boundary", Harness.deployBody(context: good).0,
                 ByteBuffer(bytes: Array(Harness.deployBody(context: good).1.readableBytesView.dropLast(30))), 400, "invalid_upload"),
                ("unknown part", [.contentType: "multipart/form-data; boundary=b"],
                 ByteBuffer(string: "--b\r\nContent-Disposition: form-data; name=\"other\"\r\n\r\nx\r\n--b--\r\n"), 400, "invalid_upload"),
            ]
            for (name, headers, body, status, code) in cases {
                let reply = try await harness.call(.post, "/v1/apps/web/deployments", token: token, headers: headers, body: body)
                #expect(reply.status == status && reply.errorCode == code, "\(name): \(reply.status) \(reply.text)")
            }
            #expect(try await harness.database.scalar("SELECT count(*) FROM loco_deployments", as: Int64.self) == 0)
            #expect(try await harness.database.scalar("SELECT count(*) FROM loco_jobs", as: Int64.self) == 0)
            let leftovers = (FileManager.default.subpaths(atPath: harness.contextRoot.path) ?? []).filter { $0.contains(".") || $0.count > 20 }
            #expect(leftovers.isEmpty, "files left in the context store: \(leftovers)")

            // And the good one goes through, stored under its digest.
            let (headers, body) = Harness.deployBody(context: good)
            let reply = try await harness.call(.post, "/v1/apps/web/deployments", token: token, headers: headers, body: body)
            #expect(reply.status == 201, "\(reply.text)")
            let digest = try #require(reply.json?["context_digest"]?.stringValue)
            #expect(FileManager.default.fileExists(atPath: harness.api.contexts.path(digest: digest)!.path))
        }
    }

    @Test("huge headers are refused by a live server without taking it down")
    func hugeHeaders() async throws {
        try await Harness.with(.live) { harness in
            let (token, _) = try await Self.setUp(harness)
            // Raw HTTP over a socket, so the client's own limits do not get in the way.
            let port = try #require(harness.client.port)
            let request = "GET /v1/apps HTTP/1.1\r\nHost: x\r\nX-Padding: \(String(repeating: "a", count: 100_000))\r\n\r\n"
            let answer = try await rawHTTP(port: port, request)
            #expect(answer.hasPrefix("HTTP/1.1 431"), "\(answer.prefix(300))")
            #expect(answer.contains(#""code":"headers_too_large""#))
            let garbage = try await rawHTTP(port: port, "NOT HTTP AT ALL\r\n\r\n")
            #expect(garbage.hasPrefix("HTTP/1.1 400") && garbage.contains(#""code":"invalid_request""#), "\(garbage.prefix(300))")
            let after = try await rawHTTP(port: port, "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            #expect(after.hasPrefix("HTTP/1.1 200"))
        }
    }

    /// Sends raw bytes over bash's /dev/tcp and returns what came back. The write runs beside the
    /// read, each with its own deadline: a server that answers and closes before reading all of
    /// an oversized request must not leave the writer blocking the reader.
    func rawHTTP(port: Int, _ request: String) async throws -> String {
        let file = FileManager.default.temporaryDirectory.appending(path: "loco-raw-\(UUID().uuidString)")
        try Data(request.utf8).write(to: file)
        defer { try? FileManager.default.removeItem(at: file) }
        let script = "exec 3<>/dev/tcp/127.0.0.1/\(port); timeout 10 cat \(file.path) >&3 2>/dev/null & timeout 10 cat <&3; wait"
        return try await runCommand(URL(fileURLWithPath: "/bin/bash"), ["-c", script], timeout: .seconds(30)).output
    }

    static func gzip(_ data: Data) async throws -> Data {
        let path = FileManager.default.temporaryDirectory.appending(path: "loco-gz-\(UUID().uuidString)").path
        try data.write(to: URL(fileURLWithPath: path))
        let result = try await runCommand(URL(fileURLWithPath: "/bin/gzip"), ["-f", path])
        guard result.status == 0 else { throw TestSetupError("gzip failed: \(result.output)") }
        defer { try? FileManager.default.removeItem(atPath: path + ".gz") }
        return try Data(contentsOf: URL(fileURLWithPath: path + ".gz"))
    }
}
