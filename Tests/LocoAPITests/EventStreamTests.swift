import AsyncHTTPClient
import Foundation
import HTTPTypes
import PostgresNIO
import HummingbirdTesting
@testable import LocoAPI
import LocoCore
import LocoQueue
import LocoTestSupport
import NIOCore
import NIOHTTP1
import Testing

/// One parsed Server-Sent Event.
struct SSEEvent: Equatable {
    var id: Int64?
    var type: String
    var data: String
}

/// Reads an SSE response until `stopAfter` events with ids arrived (then drops the connection) or
/// the stream ends.
func readEvents(port: Int, path: String, token: String, lastEventID: Int64?, stopAfter: Int? = nil) async throws -> [SSEEvent] {
    var request = HTTPClientRequest(url: "http://127.0.0.1:\(port)\(path)")
    request.headers.add(name: "Authorization", value: "Bearer \(token)")
    request.headers.add(name: "Accept", value: "text/event-stream")
    if let lastEventID { request.headers.add(name: "Last-Event-ID", value: "\(lastEventID)") }
    let response = try await HTTPClient.shared.execute(request, timeout: .seconds(30))
    #expect(response.status == .ok)
    #expect(response.headers.first(name: "content-type") == "text/event-stream")
    var events: [SSEEvent] = []
    var pending = ""
    var current = SSEEvent(id: nil, type: "message", data: "")
    for try await buffer in response.body {
        pending += String(buffer: buffer)
        while let newline = pending.firstIndex(of: "\n") {
            let line = String(pending[..<newline])
            pending = String(pending[pending.index(after: newline)...])
            if line.isEmpty {
                if !current.data.isEmpty || current.id != nil { events.append(current) }
                current = SSEEvent(id: nil, type: "message", data: "")
                if let stopAfter, events.filter({ $0.id != nil }).count >= stopAfter { return events }
            } else if line.hasPrefix("id: ") {
                current.id = Int64(line.dropFirst(4))
            } else if line.hasPrefix("event: ") {
                current.type = String(line.dropFirst(7))
            } else if line.hasPrefix("data: ") {
                current.data += String(line.dropFirst(6))
            }
        }
    }
    return events
}

@Suite("Server-Sent Events")
struct EventStreamTests {
    @Test("a client that drops and resumes with Last-Event-ID gets every event exactly once, in order, then 'end'")
    func resume() async throws {
        try await Harness.with(.live) { harness in
            let ann = try await harness.user("ann@example.com")
            let team = try await harness.team("acme", owner: ann)
            let app = try await harness.app("web", in: team, owner: ann)
            let token = try await harness.token(for: ann)
            let deployment = try await harness.deployment(of: app)
            let port = try #require(harness.client.port)
            let store = harness.store, db = harness.database.client

            // A writer appends 60 build-output events while readers come and go.
            let writer = Task {
                for line in 1...60 {
                    try await db.transaction { connection in
                        _ = try await store.appendEvent(deploymentID: deployment.id, type: "build_output", stage: "build",
                                                        message: "step \(line)", on: connection)
                    }
                    try await Task.sleep(for: .milliseconds(5))
                }
                _ = try await store.cancel(deploymentID: deployment.id, on: db)
            }
            var received: [SSEEvent] = []
            var lastID: Int64? = nil
            var connections = 0
            while received.last?.type != "end" {
                connections += 1
                let batch = try await readEvents(port: port, path: "/v1/deployments/\(deployment.id)/events", token: token,
                                                 lastEventID: lastID, stopAfter: connections < 5 ? 7 : nil)
                received += batch
                lastID = received.last(where: { $0.id != nil })?.id ?? lastID
                #expect(connections < 50, "the stream never ended")
                if connections >= 50 { break }
            }
            try await writer.value
            let ids = received.compactMap(\.id)
            let total = try await harness.database.scalar("SELECT count(*) FROM loco_deployment_events WHERE deployment_id = \(deployment.id)", as: Int64.self)
            #expect(ids == Array(1...total), "every event once, in order, across \(connections) connections")
            #expect(connections >= 5)
            #expect(received.filter { $0.type == "build_output" }.count == 60)
            #expect(received.last?.type == "end" && received.last?.data.contains(#""state":"cancelled""#) == true)
            let cancelled = try #require(received.first { $0.type == "cancelled" })
            #expect(JSONValue.parse(cancelled.data)?["deployment_id"] == .number(Double(deployment.id)))

            // A bad Last-Event-ID is a 4xx with a code, not a stream.
            let bad = try await liveCall(port: port, .get, "/v1/deployments/\(deployment.id)/events", token: token, headers: [.init("Last-Event-ID")!: "abc"])
            #expect(bad.status == 422 && bad.errorCode == "invalid_field")
        }
    }
}

@Suite("Multipart reader")
struct MultipartReaderTests {
    @Test("parts come out whole however the body is split into chunks")
    func chunking() async throws {
        let context = try await TarGz.sample(files: ["a.txt": String(repeating: "--loco-boundary-7f3a\r\n", count: 50)])
        let (_, body) = Harness.deployBody(config: #"{"name":"web"}"#, context: context)
        let bytes = Array(body.readableBytesView)
        var generator = SystemRandomNumberGenerator()
        for size in [1, 2, 3, 7, 64, 1000, bytes.count] + (0..<20).map({ _ in Int.random(in: 1...500, using: &generator) }) {
            var reader = MultipartReader(boundary: "loco-boundary-7f3a")
            var parts: [String: [UInt8]] = [:]
            var current = ""
            var index = 0
            while index < bytes.count {
                let chunk = bytes[index..<min(index + size, bytes.count)]
                index += size
                for event in try reader.feed(chunk) {
                    switch event {
                    case .begin(let name, _): current = name; parts[name] = []
                    case .data(let data): parts[current, default: []] += data
                    case .end: current = ""
                    }
                }
            }
            #expect(reader.finished, "chunk size \(size)")
            #expect(parts["config"].map { String(decoding: $0, as: UTF8.self) } == #"{"name":"web"}"#, "chunk size \(size)")
            #expect(parts["context"] == Array(context), "chunk size \(size)")
        }
    }
}
