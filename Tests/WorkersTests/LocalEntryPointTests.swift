import Foundation
import LocoShared
import LocoTestSupport
import Testing
@testable import Workers

@Suite("The local entry point (nginx)")
struct LocalEntryPointTests {
    @Test("a service's replicas become one upstream group in the app's server block; a single one is proxied to directly")
    func replicasShareARoute() {
        let text = LocalEntryPoint.server(port: 41000, generation: 7, routes: [
            LocalEntryPoint.Route(prefix: "/", upstreams: ["http://127.0.0.1:5001", "http://127.0.0.1:5002"]),
            LocalEntryPoint.Route(prefix: "/api", upstream: "http://127.0.0.1:5003"),
        ])
        #expect(text.contains("upstream loco_41000_7_0 {\n    server 127.0.0.1:5001 max_fails=1 fail_timeout=10s;\n    server 127.0.0.1:5002 max_fails=1 fail_timeout=10s;\n}"), "\(text)")
        #expect(text.contains("location / {\n        proxy_pass http://loco_41000_7_0;"), "\(text)")
        #expect(text.contains("proxy_pass http://127.0.0.1:5003;") && !text.contains("upstream loco_41000_7_1"), "\(text)")
    }

    @Test("an app keeps its address across versions; a reload that cannot take says why, from nginx's own log, and is undone")
    func switchesAndExplains() async throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/sbin/nginx") else {
            throw TestSetupError("nginx is not installed: apt-get install -y nginx-light (scripts/test installs it)")
        }
        try await withScratch { folder in
            let entryPoint = LocalEntryPoint(folder: folder.appending(path: "entry"))
            defer { entryPoint.stop() }
            // Nothing listens upstream: nginx answers 502, still with the version header.
            let routes = [LocalEntryPoint.Route(prefix: "/", upstream: "http://127.0.0.1:9")]
            let first = try await entryPoint.publish(team: "acme", app: "web", generation: 1, routes: routes)
            let second = try await entryPoint.publish(team: "acme", app: "web", generation: 2, routes: routes)
            #expect(first == second)
            let seen = await LocalEntryPoint.answer(at: first)
            #expect(seen.version == 2, "\(seen.description)")
            let port = try #require(Int(first.split(separator: ":").last ?? ""))
            #expect(!LocalPorts.ephemeral().contains(port))

            // Another app's address is taken by someone else: nginx keeps its old configuration.
            let squatter = try Squatter()
            defer { squatter.close() }
            try FileManager.default.createDirectory(at: folder.appending(path: "entry/ports"), withIntermediateDirectories: true)
            try String(squatter.port).write(to: folder.appending(path: "entry/ports/acme--api"), atomically: true, encoding: .utf8)
            let error = await #expect(throws: EntryPointError.self) {
                _ = try await entryPoint.publish(team: "acme", app: "api", generation: 1, routes: routes)
            }
            let message = error?.message ?? ""
            #expect(message.hasPrefix("nginx did not switch http://127.0.0.1:\(squatter.port) to version 1 within 10 s"))
            #expect(message.contains("Address already in use"), "\(message)")
            // The configuration nginx could not take was put back: the app has no server block.
            #expect(!FileManager.default.fileExists(atPath: folder.appending(path: "entry/apps/acme--api.conf").path))
            // So a later failure quotes only what nginx logged for it, not this one again.
            let squatter2 = try Squatter()
            defer { squatter2.close() }
            try String(squatter2.port).write(to: folder.appending(path: "entry/ports/acme--admin"), atomically: true, encoding: .utf8)
            let again = await #expect(throws: EntryPointError.self) {
                _ = try await entryPoint.publish(team: "acme", app: "admin", generation: 1, routes: routes)
            }
            #expect(again?.message.contains(":\(squatter2.port) failed") == true, "\(again?.message ?? "")")
            #expect(again?.message.contains(":\(squatter.port) failed") == false, "\(again?.message ?? "")")
            // The app that was serving still does, and can still switch.
            #expect(await LocalEntryPoint.version(at: first) == 2)
            _ = try await entryPoint.publish(team: "acme", app: "web", generation: 3, routes: routes)
            #expect(await LocalEntryPoint.version(at: first) == 3)
        }
    }
}

/// A listening socket on a port outside the ephemeral range, held for the test.
private struct Squatter {
    let socket: Int32
    let port: Int

    init() throws {
        for _ in 0..<50 {
            let port = Int.random(in: 20_000..<30_000)
            let fd = Glibc.socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_addr.s_addr = inet_addr("127.0.0.1")
            address.sin_port = UInt16(port).bigEndian
            let bound = withUnsafePointer(to: &address) { pointer in
                pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
            }
            if bound && listen(fd, 1) == 0 {
                socket = fd
                self.port = port
                return
            }
            Glibc.close(fd)
        }
        throw TestSetupError("no free port to hold")
    }

    func close() { Glibc.close(socket) }
}
