import AsyncHTTPClient
import Foundation
import Logging
import NIOCore
import NIOFoundationCompat
import NIOHTTP1
import Synchronization

/// Credentials for the registry's token service: any user name, a Loco worker token as password.
public struct RegistryCredentials: Sendable {
    public var username: String
    public var password: String

    public init(username: String, password: String) {
        self.username = username
        self.password = password
    }
}

/// What a push did.
public struct PushResult: Sendable, Equatable {
    public var digest: String
    /// `HOST/REPOSITORY@DIGEST`: what later stages deploy.
    public var reference: String
    public var uploadedBlobs: Int
    public var uploadedBytes: Int64
    public var existingBlobs: Int
    public var mountedBlobs: Int
}

/// The OCI distribution protocol over AsyncHTTPClient: `HEAD` every blob first (what the registry
/// has costs nothing), cross-repository mount, monolithic uploads for small blobs and chunked
/// ones for large, `PUT` the manifest with its media type and check the digest the registry
/// answers. Follows `Www-Authenticate: Bearer` challenges to the token service. Transient
/// failures (connection errors, 5xx, 429 honouring `Retry-After`) are retried with backoff.
public final class RegistryClient: Sendable {
    public let base: String
    let credentials: RegistryCredentials?
    let http: HTTPClient
    let logger: Logger
    /// Blobs up to this size go in one `PUT`; larger ones in `PATCH` chunks of this size.
    public let chunkSize: Int
    let attempts: Int
    /// Blobs uploaded at the same time.
    let parallelUploads = 4
    let backoffBase: Duration
    let backoffCap: Duration
    private let tokens = Mutex<[String: String]>([:])

    /// One HTTP client for every registry call of the process. It fails a connection attempt at
    /// once instead of retrying it until the request's deadline, so this client's own backoff
    /// (and the queue's retry) decide, and a registry that is down is reported in seconds.
    public static let sharedHTTP: HTTPClient = {
        var configuration = HTTPClient.Configuration()
        configuration.timeout = .init(connect: .seconds(5), read: .seconds(120))
        configuration.connectionPool.retryConnectionEstablishment = false
        return HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
    }()

    /// `base` is `http://host:port` (or https).
    public init(base: String, credentials: RegistryCredentials?, http: HTTPClient = RegistryClient.sharedHTTP, logger: Logger,
                chunkSize: Int = 16 * 1024 * 1024, attempts: Int = 6, backoffBase: Duration = .milliseconds(200), backoffCap: Duration = .seconds(10)) {
        self.base = base.hasSuffix("/") ? String(base.dropLast()) : base
        self.credentials = credentials
        self.http = http
        self.logger = logger
        self.chunkSize = chunkSize
        self.attempts = attempts
        self.backoffBase = backoffBase
        self.backoffCap = backoffCap
    }

    var host: String { base.replacingOccurrences(of: "http://", with: "").replacingOccurrences(of: "https://", with: "") }

    /// Pushes the layout's image as `repository:tag`. `mountFrom` names other repositories of
    /// the same team that may already hold some of its layers.
    public func push(_ layout: OCILayout, repository: String, tag: String, mountFrom: [String] = []) async throws -> PushResult {
        var result = PushResult(digest: layout.manifestDescriptor.digest, reference: "\(host)/\(repository)@\(layout.manifestDescriptor.digest)",
                                uploadedBlobs: 0, uploadedBytes: 0, existingBlobs: 0, mountedBlobs: 0)
        let scopes = ["repository:\(repository):pull,push"] + mountFrom.map { "repository:\($0):pull" }
        // Blobs go up several at a time (as skopeo does); the manifest only once all are there.
        enum Outcome: Sendable { case existed, mounted, uploaded(Int64) }
        let outcomes = try await withThrowingTaskGroup(of: Outcome.self) { group in
            let work: @Sendable (Descriptor) async throws -> Outcome = { blob in
                if try await self.blobExists(blob.digest, repository: repository, scopes: scopes) { return .existed }
                for source in mountFrom where try await self.mount(blob.digest, from: source, into: repository, scopes: scopes) {
                    return .mounted
                }
                try await self.upload(blob, from: layout.blobURL(blob.digest), repository: repository, scopes: scopes)
                return .uploaded(blob.size)
            }
            var blobs = layout.blobs.makeIterator()
            for _ in 0..<parallelUploads {
                guard let blob = blobs.next() else { break }
                group.addTask { try await work(blob) }
            }
            var results: [Outcome] = []
            while let outcome = try await group.next() {
                results.append(outcome)
                if let blob = blobs.next() { group.addTask { try await work(blob) } }
            }
            return results
        }
        for outcome in outcomes {
            switch outcome {
            case .existed: result.existingBlobs += 1
            case .mounted: result.mountedBlobs += 1
            case .uploaded(let size):
                result.uploadedBlobs += 1
                result.uploadedBytes += size
            }
        }
        let response = try await send(.PUT, "/v2/\(repository)/manifests/\(tag)", scopes: scopes, what: "the manifest",
                                      headers: [("Content-Type", layout.mediaType)], body: { .bytes(ByteBuffer(data: layout.manifest)) })
        guard response.status == .created else { throw try await rejection(response, what: "the manifest") }
        if let answered = response.headers.first(name: "Docker-Content-Digest"), answered != layout.manifestDescriptor.digest {
            throw PushError.digestMismatch(expected: layout.manifestDescriptor.digest, got: answered)
        }
        return result
    }

    /// The digest the registry has for `repository:reference`, if any.
    public func manifestDigest(repository: String, reference: String, accept: [String]) async throws -> String? {
        let response = try await send(.HEAD, "/v2/\(repository)/manifests/\(reference)", scopes: ["repository:\(repository):pull"],
                                      what: "the manifest", headers: [("Accept", accept.joined(separator: ", "))])
        if response.status == .notFound { return nil }
        guard response.status == .ok else { throw try await rejection(response, what: "the manifest") }
        return response.headers.first(name: "Docker-Content-Digest")
    }

    /// Deletes a manifest by digest (every tag on it goes with it). `false` if it was not there.
    @discardableResult
    public func deleteManifest(repository: String, digest: String) async throws -> Bool {
        let response = try await send(.DELETE, "/v2/\(repository)/manifests/\(digest)", scopes: ["repository:\(repository):delete,pull"],
                                      what: "the deletion of \(digest)")
        switch response.status {
        case .accepted, .ok: return true
        case .notFound: return false
        default: throw try await rejection(response, what: "the deletion of \(digest)")
        }
    }

    func blobExists(_ digest: String, repository: String, scopes: [String]) async throws -> Bool {
        let response = try await send(.HEAD, "/v2/\(repository)/blobs/\(digest)", scopes: scopes, what: "blob \(digest)")
        switch response.status {
        case .ok: return true
        case .notFound: return false
        default: throw try await rejection(response, what: "blob \(digest)")
        }
    }

    /// Asks the registry to link a blob from another repository; `false` when it cannot.
    func mount(_ digest: String, from source: String, into repository: String, scopes: [String]) async throws -> Bool {
        let response = try await send(.POST, "/v2/\(repository)/blobs/uploads/?mount=\(digest)&from=\(source)", scopes: scopes, what: "a mount of \(digest)",
                                      headers: [("Content-Length", "0")])
        switch response.status {
        case .created: return true
        case .accepted:
            // The registry started an upload instead; abandon it.
            if let location = response.headers.first(name: "Location") {
                _ = try? await send(.DELETE, location, scopes: scopes, what: "an abandoned upload")
            }
            return false
        default: return false
        }
    }

    func upload(_ blob: Descriptor, from file: URL, repository: String, scopes: [String]) async throws {
        let start = try await send(.POST, "/v2/\(repository)/blobs/uploads/", scopes: scopes, what: "an upload of \(blob.digest)",
                                   headers: [("Content-Length", "0")])
        guard start.status == .accepted, var location = start.headers.first(name: "Location") else {
            throw try await rejection(start, what: "an upload of \(blob.digest)")
        }
        let handle: FileHandle
        do { handle = try FileHandle(forReadingFrom: file) } catch {
            throw PushError.layoutInvalid(reason: "blob \(blob.digest) is missing")
        }
        defer { try? handle.close() }
        if blob.size > Int64(chunkSize) {
            var offset: Int64 = 0
            while offset < blob.size {
                try handle.seek(toOffset: UInt64(offset))
                let chunk = try handle.read(upToCount: chunkSize) ?? Data()
                guard !chunk.isEmpty else { throw PushError.layoutInvalid(reason: "blob \(blob.digest) is shorter than its descriptor says") }
                let end = offset + Int64(chunk.count) - 1
                let response = try await send(.PATCH, location, scopes: scopes, what: "a chunk of \(blob.digest)",
                                              headers: [("Content-Type", "application/octet-stream"), ("Content-Range", "\(offset)-\(end)"),
                                                        ("Content-Length", "\(chunk.count)")],
                                              body: { .bytes(ByteBuffer(data: chunk)) })
                guard response.status == .accepted, let next = response.headers.first(name: "Location") else {
                    throw try await rejection(response, what: "a chunk of \(blob.digest)")
                }
                location = next
                offset += Int64(chunk.count)
            }
            let finish = try await send(.PUT, Self.appending(digest: blob.digest, to: location), scopes: scopes, what: "blob \(blob.digest)",
                                        headers: [("Content-Length", "0")])
            guard finish.status == .created else { throw try await rejection(finish, what: "blob \(blob.digest)") }
        } else {
            let data = try handle.readToEnd() ?? Data()
            let response = try await send(.PUT, Self.appending(digest: blob.digest, to: location), scopes: scopes, what: "blob \(blob.digest)",
                                          headers: [("Content-Type", "application/octet-stream"), ("Content-Length", "\(data.count)")],
                                          body: { .bytes(ByteBuffer(data: data)) })
            guard response.status == .created else { throw try await rejection(response, what: "blob \(blob.digest)") }
        }
    }

    static func appending(digest: String, to location: String) -> String {
        location + (location.contains("?") ? "&" : "?") + "digest=\(digest)"
    }

    // MARK: requests, auth, retries

    struct Answer {
        var status: HTTPResponseStatus
        var headers: HTTPHeaders
        var body: HTTPClientResponse.Body?
    }

    /// One request, with the token for `scopes`, a fresh token after a 401, and retries for
    /// what is transient. `path` may be a path or the absolute URL a registry answered.
    func send(_ method: HTTPMethod, _ path: String, scopes: [String], what: String,
              headers: [(String, String)] = [], body: (@Sendable () -> HTTPClientRequest.Body)? = nil) async throws -> Answer {
        let url = path.hasPrefix("http") ? path : base + path
        var refreshedToken = false
        var attempt = 0
        while true {
            attempt += 1
            var request = HTTPClientRequest(url: url)
            request.method = method
            for (name, value) in headers { request.headers.add(name: name, value: value) }
            if let token = tokens.withLock({ $0[scopes.joined(separator: " ")] }) { request.headers.add(name: "Authorization", value: "Bearer \(token)") }
            request.body = body?()
            let response: HTTPClientResponse
            do {
                response = try await http.execute(request, timeout: .seconds(300))
            } catch {
                guard attempt < attempts else { throw PushError.unreachable(registry: host, reason: "\(error)") }
                try await pause(attempt: attempt, retryAfter: nil, reason: "\(error)")
                continue
            }
            if response.status == .unauthorized && !refreshedToken {
                refreshedToken = true
                _ = try? await response.body.collect(upTo: 1 << 20)
                guard let challenge = response.headers.first(name: "WWW-Authenticate") else {
                    throw PushError.authFailed(registry: host, status: 401, detail: "no Www-Authenticate challenge")
                }
                try await fetchToken(challenge: challenge, scopes: scopes)
                continue
            }
            if response.status == .unauthorized || response.status == .forbidden {
                let detail = try await Self.errorDetail(response.body)
                throw PushError.authFailed(registry: host, status: Int(response.status.code), detail: detail)
            }
            if response.status.code >= 500 || response.status == .tooManyRequests {
                _ = try? await response.body.collect(upTo: 1 << 20)
                guard attempt < attempts else {
                    throw PushError.unreachable(registry: host, reason: "\(what): \(response.status.code) after \(attempt) attempts")
                }
                let retryAfter = response.headers.first(name: "Retry-After").flatMap(Int.init).map { Duration.seconds($0) }
                try await pause(attempt: attempt, retryAfter: retryAfter, reason: "\(what): \(response.status.code)")
                continue
            }
            return Answer(status: response.status, headers: response.headers, body: response.body)
        }
    }

    /// Capped exponential backoff with full jitter, or what `Retry-After` asks (capped too).
    func pause(attempt: Int, retryAfter: Duration?, reason: String) async throws {
        let ceiling = min(backoffCap, backoffBase * Int(pow(2.0, Double(attempt - 1))))
        let wait = retryAfter.map { min($0, backoffCap) } ?? ceiling * Double.random(in: 0...1)
        logger.info("registry request failed; retrying", metadata: ["reason": "\(reason)", "attempt": "\(attempt)", "wait": "\(wait)"])
        try await Task.sleep(for: wait)
    }

    /// Follows a `Bearer realm=…,service=…` challenge to the token service.
    func fetchToken(challenge: String, scopes: [String]) async throws {
        let parameters = Self.parseChallenge(challenge)
        guard let realm = parameters["realm"] else {
            throw PushError.authFailed(registry: host, status: 401, detail: "the challenge names no realm: \(challenge.prefix(200))")
        }
        var components = URLComponents(string: realm)
        components?.queryItems = [URLQueryItem(name: "service", value: parameters["service"] ?? "")] + scopes.map { URLQueryItem(name: "scope", value: $0) }
        guard let url = components?.string else { throw PushError.authFailed(registry: host, status: 401, detail: "bad realm \(realm)") }
        var request = HTTPClientRequest(url: url)
        if let credentials {
            let basic = Data("\(credentials.username):\(credentials.password)".utf8).base64EncodedString()
            request.headers.add(name: "Authorization", value: "Basic \(basic)")
        }
        let response: HTTPClientResponse
        do { response = try await http.execute(request, timeout: .seconds(30)) } catch {
            throw PushError.unreachable(registry: realm, reason: "token service: \(error)")
        }
        let body = try await response.body.collect(upTo: 1 << 20)
        guard response.status == .ok,
              let json = try? JSONSerialization.jsonObject(with: Data(buffer: body)) as? [String: Any],
              let token = (json["token"] ?? json["access_token"]) as? String else {
            // The token service speaks Loco's error shape; keep its message, never the credential.
            let text = String(buffer: body)
            throw PushError.authFailed(registry: host, status: Int(response.status.code), detail: "token service: \(text.prefix(300))")
        }
        tokens.withLock { $0[scopes.joined(separator: " ")] = token }
    }

    static func parseChallenge(_ header: String) -> [String: String] {
        guard header.lowercased().hasPrefix("bearer ") else { return [:] }
        var result: [String: String] = [:]
        // key="value" pairs; values may hold commas (scope lists), so split on `",`.
        let pattern = #/([a-zA-Z]+)="([^"]*)"/#
        for match in header.dropFirst(7).matches(of: pattern) { result[String(match.1)] = String(match.2) }
        return result
    }

    func rejection(_ answer: Answer, what: String) async throws -> PushError {
        let detail = try await Self.errorDetail(answer.body)
        let code = detail.split(separator: ":").first.map(String.init) ?? "UNKNOWN"
        return .rejected(what: what, status: Int(answer.status.code), code: code, detail: detail)
    }

    /// `CODE: message` from a registry's `{"errors": [{"code", "message"}]}` body.
    static func errorDetail(_ body: HTTPClientResponse.Body?) async throws -> String {
        guard let body else { return "no body" }
        let buffer = try await body.collect(upTo: 1 << 20)
        if let json = try? JSONSerialization.jsonObject(with: Data(buffer: buffer)) as? [String: Any],
           let errors = json["errors"] as? [[String: Any]], let first = errors.first {
            return "\(first["code"] as? String ?? "UNKNOWN"): \(first["message"] as? String ?? "")"
        }
        return "UNKNOWN: " + String(buffer: buffer).prefix(200)
    }
}
