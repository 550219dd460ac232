/// Name rules shared by the API, the CLI and the database checks.
public enum NameRules {
    /// What `isDNSLabel` allows, in words, for messages and hints.
    public static let labelRule = "1-63 lowercase letters, digits and '-', starting with a letter and not ending with '-'"

    /// A DNS-1123 label: what Kubernetes accepts as a namespace or service name, and what a
    /// subdomain can carry.
    public static func isDNSLabel(_ name: String) -> Bool {
        let bytes = Array(name.utf8)
        guard (1...63).contains(bytes.count), let first = bytes.first, let last = bytes.last else { return false }
        func isLowerAlnum(_ byte: UInt8) -> Bool { (byte >= 97 && byte <= 122) || (byte >= 48 && byte <= 57) }
        guard first >= 97 && first <= 122, isLowerAlnum(last) else { return false }
        return bytes.allSatisfy { isLowerAlnum($0) || $0 == 45 }
    }

    /// Enough of an e-mail check to catch typos; delivery is not Loco's business.
    public static func isEmail(_ text: String) -> Bool {
        let parts = text.split(separator: "@", omittingEmptySubsequences: false)
        return parts.count == 2 && !parts[0].isEmpty && parts[1].contains(".") && text.utf8.count <= 254
            && !text.contains(where: { $0.isWhitespace })
    }

    /// Environment variable names as shells accept them.
    public static func isEnvName(_ name: String) -> Bool {
        let bytes = Array(name.utf8)
        guard (1...255).contains(bytes.count), let first = bytes.first else { return false }
        func isLetter(_ byte: UInt8) -> Bool { (byte >= 65 && byte <= 90) || (byte >= 97 && byte <= 122) || byte == 95 }
        return isLetter(first) && bytes.allSatisfy { isLetter($0) || ($0 >= 48 && $0 <= 57) }
    }
}
