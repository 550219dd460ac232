import AsyncHTTPClient
import Foundation
import LocoShared
import NIOCore
import NIOFoundationCompat
import NIOHTTP1
import NIOConcurrencyHelpers
import NIOSSL

/// The Loco API over HTTP: the only way `loco` talks to Loco.
struct APIClient: Sendable {
    let base: String
    let token: String?
    let debug: DebugLog?
    /// A CA to trust besides the system's, for an API whose certificate a private CA signed.
    var caCert: String? = nil

    /// One JSON request; API errors become `CLIError`s with the API's code, message and hint.
    @discardableResult
    func call(_ method: HTTPMethod, _ path: String, json body: JSONValue? = nil, timeout: TimeAmount = .seconds(60)) async throws -> JSONValue {
        var request = HTTPClientRequest(url: base + path)
        request.method = method
        authorize(&request)
        if let body {
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(data: try JSONEncoder().encode(body)))
        }
        let response = try await send(request, timeout: timeout)
        let data = try await collect(response, limit: 64 << 20)
        try check(response.status, data)
        if data.isEmpty { return .null }
        return (try? JSONDecoder().decode(JSONValue.self, from: data)) ?? .null
    }

    func authorize(_ request: inout HTTPClientRequest) {
        if let token { request.headers.add(name: "Authorization", value: "Bearer \(token)") }
        request.headers.add(name: "User-Agent", value: "loco/\(Loco.version)")
    }

    func send(_ request: HTTPClientRequest, timeout: TimeAmount) async throws -> HTTPClientResponse {
        debug?.write("→ \(request.method.rawValue) \(request.url)")
        do {
            let response = try await Self.http(trusting: caCert).execute(request, timeout: timeout)
            debug?.write("← \(response.status.code) \(request.url)")
            return response
        } catch let error as HTTPClientError where error == .deadlineExceeded {
            throw CLIError.unreachable(base, "no answer within \(timeout.nanoseconds / 1_000_000_000) s")
        } catch is CancellationError {
            throw CancellationError()
        } catch {
            debug?.write("× \(request.url): \(error)")
            if "\(error)".contains("CERTIFICATE_VERIFY_FAILED") {
                throw CLIError("api_certificate_untrusted", "the Loco API at \(base) shows a TLS certificate no CA this machine trusts has signed (or one that has expired)",
                               hint: "Pass the PEM file of the CA that signed it with --ca-cert FILE or LOCO_CA_CERT ('loco login --ca-cert FILE' saves it).", exit: .unreachable)
            }
            throw CLIError.unreachable(base, Self.describe(error))
        }
    }

    /// The HTTP client, one per CA to trust besides the system's, made once per process and never
    /// shut down (the process ends first). A connection that cannot be made fails the request at
    /// once: AsyncHTTPClient's default, retrying until the request's deadline, made `loco` wait a
    /// minute to say "connection refused" (and a resumed event stream, whose deadline is hours,
    /// wait for the API that long); the callers that resume do so with their own back-off.
    static func http(trusting caCert: String?) -> HTTPClient {
        trustingClients.withLockedValue { clients in
            if let client = clients[caCert ?? ""] { return client }
            var configuration = HTTPClient.Configuration()
            configuration.connectionPool.retryConnectionEstablishment = false
            configuration.timeout.connect = .seconds(10)
            if let caCert {
                var tls = TLSConfiguration.makeClientConfiguration()
                tls.additionalTrustRoots = [.file(caCert)]
                configuration.tlsConfiguration = tls
            }
            let client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
            clients[caCert ?? ""] = client
            return client
        }
    }
    private static let trustingClients = NIOLockedValueBox<[String: HTTPClient]>([:])

    /// A CA file that cannot serve is said before any request.
    static func checkCA(_ path: String) throws {
        let hint = "Pass the PEM file of the CA that signed the API's certificate (--ca-cert or LOCO_CA_CERT)."
        guard let data = FileManager.default.contents(atPath: path) else {
            throw CLIError("ca_cert_unreadable", "cannot read the CA certificate \(path)", hint: hint)
        }
        guard let certificates = try? NIOSSLCertificate.fromPEMBytes(Array(data)), !certificates.isEmpty else {
            throw CLIError("ca_cert_unreadable", "\(path) holds no PEM certificate (-----BEGIN CERTIFICATE-----)", hint: hint)
        }
    }

    func collect(_ response: HTTPClientResponse, limit: Int) async throws -> Data {
        var buffer = try await response.body.collect(upTo: limit)
        return buffer.readData(length: buffer.readableBytes) ?? Data()
    }

    /// Turns an API error document into the CLI's error, with the exit code its kind deserves.
    func check(_ status: HTTPResponseStatus, _ data: Data) throws {
        guard status.code >= 400 else { return }
        let document = try? JSONDecoder().decode(JSONValue.self, from: data)
        let code = document?["error"]?["code"]?.stringValue ?? "http_\(status.code)"
        let message = document?["error"]?["message"]?.stringValue ?? "the API answered \(status.code) \(status.reasonPhrase)"
        let hint = document?["error"]?["hint"]?.stringValue ?? "Run the command again with --debug and look at the log."
        let exit: ExitStatus = switch status.code {
        case 401: .auth
        case 403: .auth
        case 502, 503, 504: code == "runtime_unavailable" ? .usage : .unreachable
        default: .usage
        }
        if ["token_invalid", "token_expired", "token_revoked", "unauthenticated"].contains(code) {
            throw CLIError(code, message, hint: hint + " Log in again with 'loco login', or pass a fresh --token.", exit: .auth)
        }
        throw CLIError(code, message, hint: hint, exit: exit)
    }

    static func describe(_ error: any Error) -> String {
        let text = String(describing: error)
        if text.contains("connectTimeout") { return "the connection timed out" }
        if text.contains("connectionRefused") || text.contains("Connection refused") || text.contains("ECONNREFUSED") { return "connection refused" }
        if text.contains("NXDOMAIN") || text.contains("resolve") { return "the host name does not resolve" }
        if text.contains("failedToValidateHostname") { return "its TLS certificate is not made out to this host name or address" }
        if text.contains("handshakeFailed") || text.contains("sslError") { return "the TLS handshake failed (is it an https:// address of a TLS server?)" }
        return String(text.prefix(200))
    }

    /// Path component escaping for app and variable names (already restricted, but never trusted).
    static func escape(_ part: String) -> String {
        part.addingPercentEncoding(withAllowedCharacters: .urlPathAllowed.subtracting(CharacterSet(charactersIn: "/?#"))) ?? part
    }
}

/// `--debug`: every request and response line goes to a log file whose path is printed.
final class DebugLog: Sendable {
    let path: String
    private let handle: FileHandle

    init?(command: String) {
        let folder = FileManager.default.temporaryDirectory
        let path = folder.appending(path: "loco-debug-\(getpid())-\(Int(Date().timeIntervalSince1970)).log").path
        guard FileManager.default.createFile(atPath: path, contents: nil, attributes: [.posixPermissions: 0o600]),
              let handle = FileHandle(forWritingAtPath: path) else { return nil }
        self.path = path
        self.handle = handle
        write("loco \(Loco.version) \(command)")
    }

    func write(_ line: String) {
        let stamp = ISO8601DateFormatter().string(from: Date())
        handle.write(Data("\(stamp) \(line)\n".utf8))
    }
}
