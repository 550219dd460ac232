import AsyncHTTPClient
import Foundation
import NIOFoundationCompat
import LocoShared
import NIOCore
import NIOHTTP1

/// Follows a deployment to its end: the SSE stream, resumed with `Last-Event-ID` when the
/// connection drops, or polling the deployment when streaming does not work (a buffering proxy).
final class Follower: Sendable {
    let client: APIClient
    let deploymentID: Int64
    let format: OutputFormat
    let view: ProgressView
    /// How many times a dropped stream is resumed before falling back to polling.
    let maxResumes = 20

    init(client: APIClient, deploymentID: Int64, format: OutputFormat, terminal: Terminal) {
        self.client = client
        self.deploymentID = deploymentID
        self.format = format
        self.view = ProgressView(terminal: terminal, live: format == .human && terminal.isTTY)
    }

    /// Returns the deployment as it ended.
    func run() async throws -> JSONValue {
        var lastID: Int64 = 0
        var failures = 0
        streaming: while failures <= maxResumes {
            do {
                switch try await stream(after: &lastID) {
                case .ended: return try await finalDeployment()
                case .notAStream: break streaming
                case .dropped:
                    failures += 1
                    client.debug?.write("event stream dropped after event \(lastID); resuming (\(failures))")
                }
            } catch is CancellationError {
                throw CancellationError()
            } catch let error as CLIError where error.exit == .auth || error.code == "not_found" {
                throw error
            } catch {
                failures += 1
                client.debug?.write("event stream failed: \(error)")
            }
            if failures > 0 && failures <= maxResumes { try await Task.sleep(for: .milliseconds(min(5000, 200 * (1 << min(failures, 5))))) }
        }
        return try await poll()
    }

    enum StreamEnd { case ended, dropped, notAStream }

    func stream(after lastID: inout Int64) async throws -> StreamEnd {
        var request = HTTPClientRequest(url: client.base + "/v1/deployments/\(deploymentID)/events")
        client.authorize(&request)
        request.headers.add(name: "Accept", value: "text/event-stream")
        if lastID > 0 { request.headers.add(name: "Last-Event-ID", value: String(lastID)) }
        let response = try await client.send(request, timeout: .hours(6))
        if response.status.code >= 400 {
            try client.check(response.status, try await client.collect(response, limit: 1 << 20))
        }
        guard response.headers.first(name: "Content-Type")?.hasPrefix("text/event-stream") == true else { return .notAStream }
        var parser = SSEParser()
        for try await chunk in response.body {
            for event in parser.feed(chunk) {
                if event.type == "end" { return .ended }
                if let id = event.id, let number = Int64(id) {
                    // Never show an event twice, even if a proxy replays some.
                    guard number > lastID else { continue }
                    lastID = number
                }
                guard let data = JSONValue.parse(event.data) else { continue }
                show(data)
            }
        }
        return .dropped
    }

    /// Polling fallback: the deployment every second; stage changes shown as they appear.
    func poll() async throws -> JSONValue {
        client.debug?.write("following deployment \(deploymentID) by polling")
        var seen: Set<String> = []
        while true {
            let deployment = try await client.call(.GET, "/v1/deployments/\(deploymentID)")
            if case .object(let stages)? = deployment["stages"] {
                for stage in ["build", "push", "apply", "wait", "cleanup"] {
                    guard let timing = stages[stage] else { continue }
                    if seen.insert("\(stage):started").inserted {
                        show(.object(["type": .string("stage_started"), "stage": .string(stage), "message": .string("\(stage) started")]))
                    }
                    if timing["finished_at"]?.stringValue != nil, seen.insert("\(stage):finished").inserted {
                        show(.object(["type": .string("stage_finished"), "stage": .string(stage), "message": .string("\(stage) finished")]))
                    }
                }
            }
            if ["succeeded", "failed", "cancelled"].contains(deployment["state"]?.text ?? "") {
                view.stop()
                return deployment
            }
            try await Task.sleep(for: .seconds(1))
        }
    }

    func finalDeployment() async throws -> JSONValue {
        view.stop()
        return try await client.call(.GET, "/v1/deployments/\(deploymentID)")
    }

    func show(_ event: JSONValue) {
        switch format {
        case .ndjson: printJSON(event, compact: true)
        case .json: break
        case .human: view.event(event)
        }
    }
}

/// Server-Sent Events, as the spec frames them: fields up to a blank line.
struct SSEParser {
    struct Event { var id: String?; var type: String; var data: String }
    private var pending = ""
    private var id: String?
    private var type = "message"
    private var data: [String] = []

    mutating func feed(_ buffer: ByteBuffer) -> [Event] {
        pending += String(buffer: buffer)
        var events: [Event] = []
        while let newline = pending.firstIndex(of: "\n") {
            var line = String(pending[..<newline])
            pending = String(pending[pending.index(after: newline)...])
            if line.hasSuffix("\r") { line.removeLast() }
            if line.isEmpty {
                if !data.isEmpty || type != "message" { events.append(Event(id: id, type: type, data: data.joined(separator: "\n"))) }
                id = nil; type = "message"; data = []
                continue
            }
            if line.hasPrefix(":") { continue }
            let field = line.split(separator: ":", maxSplits: 1).first.map(String.init) ?? line
            var value = line.count > field.count ? String(line.dropFirst(field.count + 1)) : ""
            if value.hasPrefix(" ") { value.removeFirst() }
            switch field {
            case "id": id = value
            case "event": type = value
            case "data": data.append(value)
            default: break
            }
        }
        return events
    }
}
