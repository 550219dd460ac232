import Foundation

extension DatabaseURL {
    /// The URL with the password libpq would use when the URL gives none: `PGPASSWORD`, else
    /// the first matching line of the password file (`PGPASSFILE`, or `~/.pgpass`). So a
    /// password can stay out of the URL, and out of a command line every user of the machine
    /// can read. `warn` hears why a password file was passed over.
    public func withPassword(from environment: [String: String], warn: (String) -> Void) -> DatabaseURL {
        guard password == nil else { return self }
        var url = self
        if let password = environment["PGPASSWORD"], !password.isEmpty {
            url.password = password
            return url
        }
        let path = environment["PGPASSFILE"] ?? environment["HOME"].map { $0 + "/.pgpass" }
        guard let path, let attributes = try? FileManager.default.attributesOfItem(atPath: path) else { return self }
        // As libpq: a file others may read is not trusted with passwords.
        if let mode = (attributes[.posixPermissions] as? NSNumber)?.intValue, mode & 0o077 != 0 {
            warn("password file \(path) has group or world access, so it is not used; make it private: chmod 0600 \(path)")
            return self
        }
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            warn("password file \(path) cannot be read as text, so it is not used")
            return self
        }
        // A socket connection is matched as libpq does: as localhost, or by its folder.
        let hosts = socketDirectory.map { ["localhost", $0] } ?? [host]
        url.password = hosts.lazy.compactMap { PasswordFile.password(in: text, host: $0, port: self.port, database: self.database, user: self.username) }.first
        return url
    }
}

/// libpq's password file: lines of `host:port:database:user:password`, where `*` matches
/// anything, `\:` and `\\` stand for `:` and `\`, and lines starting with `#` are comments.
/// As in libpq, an unescaped `:` ends the password too.
public enum PasswordFile {
    /// The password of the first line that matches, if any.
    public static func password(in text: String, host: String, port: Int, database: String, user: String) -> String? {
        let wanted = [host, String(port), database, user]
        for line in text.split(omittingEmptySubsequences: true, whereSeparator: \.isNewline) where !line.hasPrefix("#") {
            let fields = Self.fields(of: line)
            guard fields.count >= 5 else { continue }
            if zip(fields.prefix(4), wanted).allSatisfy({ $0.0 == "*" || $0.0 == $0.1 }) { return fields[4] }
        }
        return nil
    }

    private static func fields(of line: Substring) -> [String] {
        var fields: [String] = [], current = "", escaped = false
        for character in line {
            if escaped {
                current.append(character)
                escaped = false
            } else if character == "\\" {
                escaped = true
            } else if character == ":" {
                fields.append(current)
                current = ""
            } else {
                current.append(character)
            }
        }
        fields.append(current)
        return fields
    }
}
