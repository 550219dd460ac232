import Crypto
import Foundation
import HTTPTypes
import LocoQueue
import PostgresNIO
import HummingbirdTesting
import LocoAPI
import LocoCore
import LocoTestSupport
import Testing
import _CryptoExtras

/// A real docker-registry (CNCF distribution) configured with `auth.token` pointing at a live Loco API.
struct TokenAuthRegistry {
    let process: ChildProcess
    let port: Int
    let folder: URL

    static let installHint = "apt-get install -y docker-registry skopeo (scripts/test installs them)"

    static func start(apiPort: Int, certificate: URL, folder: URL) async throws -> TokenAuthRegistry {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/docker-registry") else {
            throw TestSetupError("docker-registry is not installed: \(installHint)")
        }
        let port = try freePort()
        let config = """
            version: 0.1
            log: {level: warn}
            storage:
              filesystem: {rootdirectory: \(folder.path)/data}
              delete: {enabled: true}
            http: {addr: 127.0.0.1:\(port)}
            auth:
              token:
                realm: http://127.0.0.1:\(apiPort)/v1/registry/token
                service: loco-registry
                issuer: loco
                rootcertbundle: \(certificate.path)
            """
        let configPath = folder.appending(path: "config.yml")
        try config.write(to: configPath, atomically: true, encoding: .utf8)
        let process = try ChildProcess(URL(fileURLWithPath: "/usr/bin/docker-registry"), ["serve", configPath.path])
        let registry = TokenAuthRegistry(process: process, port: port, folder: folder)
        let ready = try await eventually(timeout: .seconds(10), every: .milliseconds(50)) {
            (try? await runCommand(URL(fileURLWithPath: "/usr/bin/curl"), ["-s", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:\(port)/v2/"]))?.output == "401"
        }
        guard ready else {
            process.stop()
            throw TestSetupError("docker-registry did not start: \(process.output)")
        }
        return registry
    }

    /// Runs skopeo (no TLS, no signature policy: this is a local test registry).
    func skopeo(_ arguments: [String]) async throws -> (status: Int32, output: String) {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/skopeo") else { throw TestSetupError("skopeo is not installed: \(Self.installHint)") }
        return try await runCommand(URL(fileURLWithPath: "/usr/bin/skopeo"), ["--insecure-policy"] + arguments, timeout: .seconds(60))
    }

    func reference(_ repository: String) -> String { "docker://127.0.0.1:\(port)/\(repository)" }
}

/// A tiny OCI image layout (one layer with one file), written by hand: no base image needed.
func makeOCILayout(at folder: URL, payloadBytes: Int = 0) async throws {
    let blobs = folder.appending(path: "blobs/sha256")
    try FileManager.default.createDirectory(at: blobs, withIntermediateDirectories: true)
    func store(_ data: Data) throws -> (String, Int) {
        let hex = SHA256.hash(data: data).map { String(format: "%02x", $0) }.joined()
        try data.write(to: blobs.appending(path: hex))
        return ("sha256:" + hex, data.count)
    }
    var files = ["hello.txt": "hello from loco \(UUID().uuidString)\n"]
    if payloadBytes > 0 {
        // Random printable bytes barely compress, so the layer stays about this large.
        files["payload.bin"] = String((0..<payloadBytes).map { _ in Character(UnicodeScalar(UInt8.random(in: 33...126))) })
    }
    let layer = try await TarGz.sample(files: files)
    // The diff id is the digest of the uncompressed tar.
    let plain = folder.appending(path: "layer.tar.gz")
    try layer.write(to: plain)
    let unzipped = try await runCommand(URL(fileURLWithPath: "/bin/gzip"), ["-d", "-f", plain.path])
    guard unzipped.status == 0 else { throw TestSetupError("gzip -d failed: \(unzipped.output)") }
    let tar = try Data(contentsOf: folder.appending(path: "layer.tar"))
    try FileManager.default.removeItem(at: folder.appending(path: "layer.tar"))
    let diffID = "sha256:" + SHA256.hash(data: tar).map { String(format: "%02x", $0) }.joined()
    let (layerDigest, layerSize) = try store(layer)
    let config = #"{"architecture":"amd64","os":"linux","config":{},"rootfs":{"type":"layers","diff_ids":["\#(diffID)"]}}"#
    let (configDigest, configSize) = try store(Data(config.utf8))
    let manifest = """
        {"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",\
        "config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"\(configDigest)","size":\(configSize)},\
        "layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"\(layerDigest)","size":\(layerSize)}]}
        """
    let (manifestDigest, manifestSize) = try store(Data(manifest.utf8))
    let index = """
        {"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"\(manifestDigest)",\
        "size":\(manifestSize),"annotations":{"org.opencontainers.image.ref.name":"latest"}}]}
        """
    try Data(index.utf8).write(to: folder.appending(path: "index.json"))
    try Data(#"{"imageLayoutVersion":"1.0.0"}"#.utf8).write(to: folder.appending(path: "oci-layout"))
}

@Suite("Registry token service", .serialized)
struct RegistryTokenTests {
    @Test("against a real docker-registry: workers push, pull credentials pull only their app, users cannot push, expired tokens are refused")
    func realRegistry() async throws {
        let folder = FileManager.default.temporaryDirectory.appending(path: "loco-registry-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        // The registry trusts the certificate whose key signs Loco's tokens.
        let keyPath = folder.appending(path: "token.key"), certPath = folder.appending(path: "token.crt")
        let made = try await runCommand(URL(fileURLWithPath: "/usr/bin/openssl"),
                                        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", keyPath.path, "-out", certPath.path,
                                         "-days", "2", "-subj", "/CN=loco-registry-token"])
        #expect(made.status == 0, "\(made.output)")
        let issuer = try RegistryTokenIssuer(privateKeyPEM: try String(contentsOf: keyPath, encoding: .utf8))

        try await Harness.with(.live, registry: issuer) { harness in
            let apiPort = try #require(harness.client.port)
            let registry = try await TokenAuthRegistry.start(apiPort: apiPort, certificate: certPath, folder: folder)
            defer { registry.process.stop() }

            let ann = try await harness.user("ann@example.com")
            let acme = try await harness.team("acme", owner: ann)
            let web = try await harness.app("web", in: acme, owner: ann)
            let other = try await harness.app("other", in: acme, owner: ann)
            let db = harness.database.client
            let worker = try await harness.store.createToken(kind: .worker, name: "builder-1", userID: nil, appID: nil, lifetime: nil, on: db).secret
            let pull = try await harness.token(for: ann, kind: .pull, app: web)
            let otherPull = try await harness.token(for: ann, kind: .pull, app: other)
            let personal = try await harness.token(for: ann)
            let layout = folder.appending(path: "layout")
            try await makeOCILayout(at: layout)
            let source = "oci:\(layout.path):latest"

            let pushed = try await registry.skopeo(["copy", "--dest-tls-verify=false", "--dest-creds", "worker:\(worker)", source, registry.reference("acme/web:1")])
            #expect(pushed.status == 0, "a worker can push: \(pushed.output)")

            let inspected = try await registry.skopeo(["inspect", "--tls-verify=false", "--creds", "node:\(pull)", registry.reference("acme/web:1")])
            #expect(inspected.status == 0, "the pull credential can pull its app: \(inspected.output)")
            #expect(inspected.output.contains("\"Digest\""))

            let pullPush = try await registry.skopeo(["copy", "--dest-tls-verify=false", "--dest-creds", "node:\(pull)", source, registry.reference("acme/web:2")])
            #expect(pullPush.status != 0, "a pull credential cannot push")
            #expect(pullPush.output.lowercased().contains("denied") || pullPush.output.lowercased().contains("unauthorized"), "\(pullPush.output)")

            let wrongApp = try await registry.skopeo(["inspect", "--tls-verify=false", "--creds", "node:\(otherPull)", registry.reference("acme/web:1")])
            #expect(wrongApp.status != 0, "another app's pull credential cannot pull this app")

            let userPush = try await registry.skopeo(["copy", "--dest-tls-verify=false", "--dest-creds", "ann:\(personal)", source, registry.reference("acme/web:3")])
            #expect(userPush.status != 0, "a user token cannot push")
            let userPull = try await registry.skopeo(["inspect", "--tls-verify=false", "--creds", "ann:\(personal)", registry.reference("acme/web:1")])
            #expect(userPull.status == 0, "a team member can pull their app: \(userPull.output)")

            let bogus = try await registry.skopeo(["inspect", "--tls-verify=false", "--creds", "x:loco_pull_notatoken", registry.reference("acme/web:1")])
            #expect(bogus.status != 0, "an unknown credential gets nothing")

            // Registry-side: a token past its expiry is refused even though its signature is good.
            let access = [RegistryTokenIssuer.Access(type: "repository", name: "acme/web", actions: ["pull"])]
            let expired = try issuer.sign(subject: "worker:test", access: access, lifetime: .seconds(60), now: Date().addingTimeInterval(-3600)).token
            let fresh = try issuer.sign(subject: "worker:test", access: access, lifetime: .seconds(60)).token
            func manifestStatus(_ token: String) async throws -> String {
                try await runCommand(URL(fileURLWithPath: "/usr/bin/curl"), [
                    "-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", "Authorization: Bearer \(token)",
                    "-H", "Accept: application/vnd.oci.image.manifest.v1+json", "http://127.0.0.1:\(registry.port)/v2/acme/web/manifests/1",
                ]).output
            }
            #expect(try await manifestStatus(fresh) == "200")
            #expect(try await manifestStatus(expired) == "401")

            // Loco-side: an expired Loco credential gets no registry token at all.
            let stale = try await harness.token(for: ann, kind: .pull, app: web)
            _ = try await db.query("UPDATE loco_tokens SET expires_at = now() - interval '1 second' WHERE secret_hash = \(TokenSecret.hash(stale))").collect()
            let refused = try await liveCall(port: apiPort, .get, "/v1/registry/token?service=loco-registry&scope=repository:acme/web:pull",
                                             headers: [.authorization: "Basic " + Data("x:\(stale)".utf8).base64EncodedString()])
            #expect(refused.status == 401 && refused.errorCode == "token_expired", "\(refused.text)")
            // Pull tokens live at most 10 minutes.
            let granted = try await liveCall(port: apiPort, .get, "/v1/registry/token?service=loco-registry&scope=repository:acme/web:pull",
                                             headers: [.authorization: "Basic " + Data("x:\(pull)".utf8).base64EncodedString()])
            #expect(granted.status == 200)
            let lifetime = try #require(granted.json?["expires_in"])
            #expect(lifetime == .number(600))
        }
    }
}
