import Foundation

/// Keys and certificates made with openssl, as scripts/services makes a server's, for tests of
/// TLS (PostgreSQL's, the API's).
public enum TestCertificates {
    /// `NAME.key` and `NAME.crt` in `output` for `subject` (e.g. `/CN=localhost`), with the
    /// subject alternative `names` if given (e.g. `DNS:localhost,IP:127.0.0.1`), signed by the CA
    /// in `folder` (`ca.crt`, `ca.key`), or self-signed as a CA of its own when `folder` is nil.
    public static func make(_ name: String, subject: String, names: String? = nil, in output: URL, signedBy folder: URL?) async throws {
        let key = output.appendingPathComponent("\(name).key").path, cert = output.appendingPathComponent("\(name).crt").path
        let newKey = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key]
        guard let folder else {
            try await openssl(["req", "-x509"] + newKey + ["-out", cert, "-days", "30", "-subj", subject])
            return
        }
        let request = output.appendingPathComponent("\(name).csr").path
        try await openssl(["req"] + newKey + ["-out", request, "-subj", subject])
        var sign = ["x509", "-req", "-in", request, "-CA", folder.appendingPathComponent("ca.crt").path,
                    "-CAkey", folder.appendingPathComponent("ca.key").path, "-CAcreateserial", "-out", cert, "-days", "30"]
        if let names {
            let extensions = output.appendingPathComponent("\(name).ext")
            try "subjectAltName=\(names)\n".write(to: extensions, atomically: true, encoding: .utf8)
            sign += ["-extfile", extensions.path]
        }
        try await openssl(sign)
    }

    static func openssl(_ arguments: [String]) async throws {
        let (status, output) = try await runCommand(URL(fileURLWithPath: "/usr/bin/openssl"), arguments)
        guard status == 0 else { throw TestSetupError("openssl \(arguments.joined(separator: " ")) failed (apt-get install -y openssl):\n\(output)") }
    }
}
