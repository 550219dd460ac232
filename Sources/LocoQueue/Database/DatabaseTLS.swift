import Foundation
import NIOSSL
import PostgresNIO

/// How connections use TLS, said in a database URL as libpq says it (`sslmode`, `sslrootcert`,
/// `sslcert`, `sslkey`), so these parameters mean here what they mean to `psql`.
public struct DatabaseTLS: Sendable, Equatable {
    /// libpq's `sslmode`, weakest first.
    public enum Mode: String, Sendable, CaseIterable, Comparable {
        case disable, allow, prefer, require
        case verifyCA = "verify-ca"
        case verifyFull = "verify-full"

        public static func < (a: Mode, b: Mode) -> Bool {
            allCases.firstIndex(of: a)! < allCases.firstIndex(of: b)!
        }
    }

    /// libpq's default: TLS when the server offers it, without checking who answers.
    public var mode: Mode = .prefer
    /// A PEM file of the certificate authorities to trust, or `system` for the machine's own.
    public var rootCertificate: String?
    /// A PEM client certificate (chain) and its key, for servers that log in by certificate.
    public var clientCertificate: String?
    public var clientKey: String?

    public init(mode: Mode = .prefer, rootCertificate: String? = nil, clientCertificate: String? = nil, clientKey: String? = nil) {
        self.mode = mode
        self.rootCertificate = rootCertificate
        self.clientCertificate = clientCertificate
        self.clientKey = clientKey
    }

    /// The connection fails rather than go on without TLS.
    public var required: Bool { mode >= .require }

    /// What is checked of the server's certificate. As in libpq, `require` with a root
    /// certificate given checks the chain (as `verify-ca`); `prefer` checks nothing.
    var verification: CertificateVerification {
        switch mode {
        case .verifyFull: .fullVerification
        case .verifyCA: .noHostnameVerification
        case .require: rootCertificate == nil ? .none : .noHostnameVerification
        case .disable, .allow, .prefer: .none
        }
    }

    /// The URL's TLS parameters; a file named in one is read now, so a wrong path is reported
    /// when the URL is read, not at the first connection.
    init(query: [URLQueryItem], overSocket: Bool) throws(QueueError) {
        func value(_ name: String) -> String? { query.first(where: { $0.name == name })?.value }
        if let text = value("sslmode") {
            guard let mode = Mode(rawValue: text) else {
                throw .invalidDatabaseURL(reason: "sslmode '\(text)' is not one of \(Mode.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            self.mode = mode
        }
        rootCertificate = value("sslrootcert")
        clientCertificate = value("sslcert")
        clientKey = value("sslkey")
        if (clientCertificate == nil) != (clientKey == nil) {
            throw .invalidDatabaseURL(reason: clientKey == nil ? "sslcert is given without sslkey, the file of its private key" : "sslkey is given without sslcert, the file of its certificate")
        }
        if mode == .disable, let named = [("sslrootcert", rootCertificate), ("sslcert", clientCertificate)].first(where: { $0.1 != nil }) {
            throw .invalidDatabaseURL(reason: "\(named.0) is given but sslmode=disable uses no TLS; use sslmode=verify-full (or leave sslmode out)")
        }
        if overSocket {
            // PostgreSQL speaks no TLS on its Unix socket: a demand for it cannot be met there.
            guard !required else {
                throw .invalidDatabaseURL(reason: "sslmode=\(mode.rawValue) cannot hold on a Unix socket, where PostgreSQL uses no TLS; connect over TCP (postgres://USER@HOST:PORT/DB) or leave sslmode out")
            }
            mode = .disable
            return
        }
        // Only files can fail; without any there is nothing to check before connecting.
        if rootCertificate.map({ $0 != "system" }) == true || clientCertificate != nil { _ = try sslContext() }
    }

    /// How PostgresNIO is to connect.
    func connectionTLS() throws(QueueError) -> PostgresConnection.Configuration.TLS {
        if mode == .disable { return .disable }
        let context = try sslContext()
        return required ? .require(context) : .prefer(context)
    }

    private func sslContext() throws(QueueError) -> NIOSSLContext {
        var configuration = TLSConfiguration.makeClientConfiguration()
        configuration.certificateVerification = verification
        if let rootCertificate, rootCertificate != "system" {
            configuration.trustRoots = .certificates(try Self.certificates(in: rootCertificate, parameter: "sslrootcert"))
        }
        if let clientCertificate, let clientKey {
            configuration.certificateChain = try Self.certificates(in: clientCertificate, parameter: "sslcert").map { .certificate($0) }
            let key: NIOSSLPrivateKey
            do {
                key = try NIOSSLPrivateKey(bytes: Array(try Self.contents(of: clientKey, parameter: "sslkey")), format: .pem)
            } catch let error as QueueError {
                throw error
            } catch {
                throw .invalidDatabaseURL(reason: "sslkey '\(clientKey)' holds no PEM private key that can be read without a passphrase")
            }
            configuration.privateKey = .privateKey(key)
        }
        do {
            return try NIOSSLContext(configuration: configuration)
        } catch {
            // The files each read, so what is left is a key that does not match its certificate.
            guard let clientCertificate, let clientKey else { throw .invalidDatabaseURL(reason: "its TLS settings cannot be used (\(error))") }
            throw .invalidDatabaseURL(reason: "sslkey '\(clientKey)' is not the private key of the certificate in sslcert '\(clientCertificate)'")
        }
    }

    private static func certificates(in path: String, parameter: String) throws(QueueError) -> [NIOSSLCertificate] {
        let pem = try contents(of: path, parameter: parameter)
        let certificates = try? NIOSSLCertificate.fromPEMBytes(Array(pem))
        guard let certificates, !certificates.isEmpty else {
            throw .invalidDatabaseURL(reason: "\(parameter) '\(path)' holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
        }
        return certificates
    }

    private static func contents(of path: String, parameter: String) throws(QueueError) -> Data {
        if let data = FileManager.default.contents(atPath: path) { return data }
        var isFolder: ObjCBool = false
        let reason = !FileManager.default.fileExists(atPath: path, isDirectory: &isFolder) ? "there is no such file"
            : isFolder.boolValue ? "it is a folder" : "this user may not read it"
        throw .invalidDatabaseURL(reason: "\(parameter) '\(path)' cannot be read: \(reason)")
    }

    /// The URL's query items for these settings (none for libpq's defaults).
    var queryItems: [URLQueryItem] {
        var items: [URLQueryItem] = []
        if mode != .prefer { items.append(URLQueryItem(name: "sslmode", value: mode.rawValue)) }
        if let rootCertificate { items.append(URLQueryItem(name: "sslrootcert", value: rootCertificate)) }
        if let clientCertificate { items.append(URLQueryItem(name: "sslcert", value: clientCertificate)) }
        if let clientKey { items.append(URLQueryItem(name: "sslkey", value: clientKey)) }
        return items
    }
}
