import Foundation
import LocoShared

/// Where `loco login` keeps the API address and token: `$XDG_CONFIG_HOME/loco/credentials.json`
/// (else `~/.config/loco/`), mode 0600 in a 0700 folder.
struct Credentials: Codable, Equatable {
    var api: String
    var token: String
    var email: String?
    /// The CA that signed the API's certificate, when it is not one this machine trusts.
    var caCert: String?

    static var file: URL {
        let environment = ProcessInfo.processInfo.environment
        let base = environment["XDG_CONFIG_HOME"].map { URL(fileURLWithPath: $0) }
            ?? URL(fileURLWithPath: environment["HOME"] ?? NSHomeDirectory()).appending(path: ".config")
        return base.appending(path: "loco/credentials.json")
    }

    static func load() -> Credentials? {
        guard let data = try? Data(contentsOf: file) else { return nil }
        return try? JSONDecoder().decode(Credentials.self, from: data)
    }

    func save() throws {
        let folder = Self.file.deletingLastPathComponent()
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        let data = try encoder.encode(self)
        // Created 0600 before any byte is written, so the token is never readable by others.
        let fd = open(Self.file.path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw CLIError("credentials_unwritable", "cannot write \(Self.file.path)", hint: "Check the permissions of \(folder.path).") }
        defer { close(fd) }
        fchmod(fd, 0o600)
        _ = data.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    }

    static func remove() -> Bool {
        (try? FileManager.default.removeItem(at: file)) != nil
    }
}
