import AsyncHTTPClient
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import LocoAPI
import LocoCore
import LocoQueue
import LocoTestSupport
import NIOCore
import NIOHTTP1
import PostgresNIO
import Synchronization
import Testing
import Workers

/// A pass-through to the registry that answers 503 to the first `failures` requests: a registry
/// having a bad minute.
func withFlakyProxy<T: Sendable>(to registryPort: Int, failures: Int, _ body: @escaping @Sendable (Int, @escaping @Sendable () -> Int) async throws -> T) async throws -> T {
    let seen = RequestCounter()
    let router = Router()
    router.on("**", method: .head) { request, context in try await forward(request, context, registryPort, failures, seen) }
    for method in [HTTPRequest.Method.get, .post, .put, .patch, .delete] {
        router.on("**", method: method) { request, context in try await forward(request, context, registryPort, failures, seen) }
    }
    let app = Application(router: router, configuration: .init(address: .hostname("127.0.0.1", port: 0)))
    return try await app.test(.live) { client in
        try await body(try #require(client.port)) { seen.count.withLock { $0 } }
    }
}

final class RequestCounter: Sendable {
    let count = Mutex(0)
}

private func forward(_ request: Request, _ context: BasicRequestContext, _ port: Int, _ failures: Int, _ seen: RequestCounter) async throws -> Response {
    let count = seen.count.withLock { value -> Int in value += 1; return value }
    if count <= failures { return Response(status: .serviceUnavailable, headers: [.retryAfter: "0"]) }
    var outgoing = HTTPClientRequest(url: "http://127.0.0.1:\(port)\(request.uri.description)")
    outgoing.method = .init(rawValue: request.method.rawValue)
    for field in request.headers where field.name.rawName.lowercased() != "host" { outgoing.headers.add(name: field.name.rawName, value: field.value) }
    let body = try await request.body.collect(upTo: 64 << 20)
    if body.readableBytes > 0 { outgoing.body = .bytes(body) }
    let answer = try await HTTPClient.shared.execute(outgoing, timeout: .seconds(60))
    var headers = HTTPFields()
    for header in answer.headers { if let name = HTTPField.Name(header.name) { headers.append(HTTPField(name: name, value: header.value)) } }
    let bytes = try await answer.body.collect(upTo: 64 << 20)
    return Response(status: .init(code: Int(answer.status.code)), headers: headers, body: .init(byteBuffer: bytes))
}

@Suite("Registry push client", .serialized)
struct RegistryPushTests {
    /// A live API with the token service, a real token-auth docker-registry, a worker token.
    static func withRegistry(_ body: @escaping @Sendable (_ registry: TokenAuthRegistry, _ harness: Harness, _ worker: String, _ folder: URL) async throws -> Void) async throws {
        let folder = FileManager.default.temporaryDirectory.appending(path: "loco-push-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        let keyPath = folder.appending(path: "token.key"), certPath = folder.appending(path: "token.crt")
        let made = try await runCommand(URL(fileURLWithPath: "/usr/bin/openssl"),
                                        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", keyPath.path, "-out", certPath.path, "-days", "2", "-subj", "/CN=loco"])
        guard made.status == 0 else { throw TestSetupError("openssl failed: \(made.output)") }
        let issuer = try RegistryTokenIssuer(privateKeyPEM: try String(contentsOf: keyPath, encoding: .utf8))
        try await Harness.with(.live, registry: issuer) { harness in
            let registry = try await TokenAuthRegistry.start(apiPort: try #require(harness.client.port), certificate: certPath, folder: folder)
            defer { registry.process.stop() }
            let worker = try await harness.store.createToken(kind: .worker, name: "pusher", userID: nil, appID: nil, lifetime: nil, on: harness.database.client).secret
            try await body(registry, harness, worker, folder)
        }
    }

    static let manifestTypes = ["application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json"]

    @Test("push, verify the digest in the registry, re-push uploads zero bytes, a mount copies nothing, chunks for large layers")
    func pushes() async throws {
        try await Self.withRegistry { registry, harness, worker, folder in
            let layoutFolder = folder.appending(path: "image")
            try await makeOCILayout(at: layoutFolder, payloadBytes: 200_000)
            let layout = try OCILayout(folder: layoutFolder, reference: "latest")
            let client = RegistryClient(base: "http://127.0.0.1:\(registry.port)", credentials: RegistryCredentials(username: "worker", password: worker),
                                        logger: harness.database.logger, chunkSize: 64 * 1024)
            let first = try await client.push(layout, repository: "acme/web", tag: "abc-1")
            #expect(first.uploadedBlobs == 2 && first.existingBlobs == 0)
            #expect(first.uploadedBytes == layout.blobs.reduce(0) { $0 + $1.size })
            #expect(first.reference == "127.0.0.1:\(registry.port)/acme/web@\(layout.manifestDescriptor.digest)")
            // What the registry serves is what was recorded.
            let stored = try await client.manifestDigest(repository: "acme/web", reference: "abc-1", accept: Self.manifestTypes)
            #expect(stored == first.digest)
            // The same image again: every blob is already there.
            let again = try await client.push(layout, repository: "acme/web", tag: "def-2")
            #expect(again.uploadedBytes == 0 && again.uploadedBlobs == 0 && again.existingBlobs == 2)
            #expect(again.digest == first.digest)
            // Another app of the team: blobs are mounted, not uploaded.
            let mounted = try await client.push(layout, repository: "acme/api", tag: "x-3", mountFrom: ["acme/web"])
            #expect(mounted.mountedBlobs == 2 && mounted.uploadedBytes == 0, "\(mounted)")
            #expect(try await client.manifestDigest(repository: "acme/api", reference: "x-3", accept: Self.manifestTypes) == first.digest)
        }
    }

    @Test("the registry lifecycle deletes images older than six months, except each app's newest two and the serving one")
    func lifecycle() async throws {
        try await Self.withRegistry { registry, harness, worker, folder in
            let ann = try await harness.user("ann@example.com")
            let team = try await harness.team("acme", owner: ann)
            let app = try await harness.app("web", in: team, owner: ann)
            let client = RegistryClient(base: "http://127.0.0.1:\(registry.port)", credentials: RegistryCredentials(username: "w", password: worker),
                                        logger: harness.database.logger)
            // Five distinct images; deployment history: (age in days, state).
            let history: [(Int, String)] = [(400, "succeeded"), (300, "succeeded"), (250, "failed"), (200, "succeeded"), (1, "failed")]
            var digests: [String] = []
            for (index, (days, state)) in history.enumerated() {
                let layoutFolder = folder.appending(path: "image-\(index)")
                try await makeOCILayout(at: layoutFolder)
                let pushed = try await client.push(try OCILayout(folder: layoutFolder), repository: "acme/web", tag: "v\(index)")
                digests.append(pushed.digest)
                _ = try await harness.database.client.query("""
                    INSERT INTO loco_deployments (app_id, state, image_digest, created_at, finished_at)
                    VALUES (\(app.id), \(state), \(pushed.digest), now() - make_interval(days => \(days)::int), now() - make_interval(days => \(days)::int))
                    """).collect()
            }
            let stage = CleanupStage(database: harness.database.client, runtime: nil, registry: client, settings: nil, logger: harness.database.logger)
            let deleted = try await stage.registryLifecycle()
            // Newest two: #4 (1 day) and #3 (200 days). Serving: #3 (the latest success). Old enough: #0, #1, #2.
            #expect(Set(deleted) == Set([0, 1, 2].map { "acme/web@\(digests[$0])" }), "\(deleted)")
            let types = ["application/vnd.oci.image.manifest.v1+json"]
            for (index, digest) in digests.enumerated() {
                let present = try await client.manifestDigest(repository: "acme/web", reference: digest, accept: types) != nil
                #expect(present == (index >= 3), "image \(index)")
            }
            #expect(try await stage.registryLifecycle().isEmpty, "a second pass finds nothing")
        }
    }

    @Test("a registry answering 503 at first still ends in a pushed image")
    func retriesTransientErrors() async throws {
        try await Self.withRegistry { registry, harness, worker, folder in
            let layoutFolder = folder.appending(path: "image")
            try await makeOCILayout(at: layoutFolder)
            let layout = try OCILayout(folder: layoutFolder)
            try await withFlakyProxy(to: registry.port, failures: 4) { proxyPort, seen in
                let client = RegistryClient(base: "http://127.0.0.1:\(proxyPort)", credentials: RegistryCredentials(username: "w", password: worker),
                                            logger: harness.database.logger, backoffBase: .milliseconds(10))
                let result = try await client.push(layout, repository: "acme/web", tag: "flaky")
                #expect(result.uploadedBlobs == 2)
                #expect(seen() > 4, "the proxy saw the failed attempts and the ones after")
                let direct = RegistryClient(base: "http://127.0.0.1:\(registry.port)", credentials: RegistryCredentials(username: "w", password: worker),
                                            logger: harness.database.logger)
                #expect(try await direct.manifestDigest(repository: "acme/web", reference: "flaky", accept: Self.manifestTypes) == result.digest)
            }
        }
    }

    @Test("wrong credentials are REGISTRY_AUTH_FAILED, a registry that is not there is REGISTRY_UNREACHABLE")
    func failures() async throws {
        try await Self.withRegistry { registry, harness, _, folder in
            let layoutFolder = folder.appending(path: "image")
            try await makeOCILayout(at: layoutFolder)
            let layout = try OCILayout(folder: layoutFolder)
            let ann = try await harness.user("ann@example.com")
            let team = try await harness.team("acme", owner: ann)
            let app = try await harness.app("web", in: team, owner: ann)
            let pull = try await harness.token(for: ann, kind: .pull, app: app)
            for password in [pull, "loco_wkr_not-a-token"] {
                let client = RegistryClient(base: "http://127.0.0.1:\(registry.port)", credentials: RegistryCredentials(username: "x", password: password),
                                            logger: harness.database.logger, attempts: 2, backoffBase: .milliseconds(5))
                do {
                    _ = try await client.push(layout, repository: "acme/web", tag: "nope")
                    Issue.record("pushed with \(password.prefix(9))…")
                } catch let error as PushError {
                    #expect(error.code == "REGISTRY_AUTH_FAILED", "\(error)")
                    #expect(!error.message.contains(password), "the credential never appears in the error")
                    #expect(!error.isTransient)
                }
            }
            let nowhere = RegistryClient(base: "http://127.0.0.1:1", credentials: nil, logger: harness.database.logger, attempts: 3, backoffBase: .milliseconds(5))
            do {
                _ = try await nowhere.push(layout, repository: "acme/web", tag: "x")
                Issue.record("pushed to nowhere")
            } catch let error as PushError {
                #expect(error.code == "REGISTRY_UNREACHABLE" && error.isTransient, "\(error)")
            }
            #expect(throws: PushError.self) { try OCILayout(folder: folder.appending(path: "missing")) }
        }
    }
}
