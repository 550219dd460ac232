import Foundation
import Glibc

/// TCP ports on 127.0.0.1 for a server Loco (or a test) starts.
///
/// A port is picked outside the kernel's ephemeral range: a port from that range can become the
/// local end of some outgoing connection between the pick and the server's bind. It happened
/// twice: nginx's reload failed (the local runtime's entry point), and a test's `locod worker
/// --metrics-port` from 30000–39999 found its port taken.
public enum LocalPorts {
    /// A port free now and outside the ephemeral range; nil if 200 tries found none.
    public static func free() -> Int? {
        let ephemeral = ephemeral()
        let candidates = (10_000..<65_000).filter { !ephemeral.contains($0) }
        for _ in 0..<200 {
            guard let port = candidates.randomElement() else { break }
            if canBind(port) { return port }
        }
        return nil
    }

    /// The ports the kernel hands to outgoing connections (`net.ipv4.ip_local_port_range`).
    public static func ephemeral() -> ClosedRange<Int> {
        let text = (try? String(contentsOfFile: "/proc/sys/net/ipv4/ip_local_port_range", encoding: .utf8)) ?? ""
        let bounds = text.split(whereSeparator: \.isWhitespace).compactMap { Int($0) }
        guard bounds.count == 2, bounds[0] <= bounds[1] else { return 32768...60999 }
        return bounds[0]...bounds[1]
    }

    /// Whether `port` on 127.0.0.1 can be bound now (without SO_REUSEADDR, so a port whose last
    /// connections are in TIME_WAIT counts as taken).
    public static func canBind(_ port: Int) -> Bool {
        let socket = Glibc.socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard socket >= 0 else { return false }
        defer { close(socket) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = UInt16(port).bigEndian
        return withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(socket, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
        }
    }
}
