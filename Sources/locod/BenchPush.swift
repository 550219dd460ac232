import ArgumentParser
import Foundation
import Logging
import LocoQueue
import Workers

/// `locod bench push`: pushes an OCI layout with Loco's registry client, then pushes it again
/// unchanged, and prints the timings as JSON (scripts/bench push compares with skopeo).
struct BenchPush: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "push", abstract: "Time a push and a no-change re-push of an OCI layout.")

    @Option(help: "The OCI image layout folder.") var layout: String
    @Option(help: "Registry base URL.") var registry: String
    @Option(help: "Repository to push to.") var repository: String
    @Option(help: "How many no-change re-pushes to time.") var repushes = 5

    func run() async throws {
        try await reportingErrors {
            var logger = Logger(label: "bench")
            logger.logLevel = .warning
            let image = try OCILayout(folder: URL(fileURLWithPath: layout))
            let client = RegistryClient(base: registry, credentials: nil, logger: logger)
            let start = ContinuousClock.now
            let first = try await client.push(image, repository: repository, tag: "first")
            let seconds = (ContinuousClock.now - start).seconds
            var repush: [Double] = []
            for index in 0..<repushes {
                let again = ContinuousClock.now
                let result = try await client.push(image, repository: repository, tag: "again-\(index)")
                precondition(result.uploadedBytes == 0, "a no-change re-push uploaded \(result.uploadedBytes) bytes")
                repush.append((ContinuousClock.now - again).seconds * 1000)
            }
            let megabytes = Double(image.totalSize) / 1_000_000
            try printJSON([
                "image_bytes": Double(image.totalSize), "uploaded_bytes": Double(first.uploadedBytes), "push_seconds": seconds,
                "push_mb_per_s": megabytes / seconds, "repush_ms_median": repush.sorted()[repush.count / 2], "repush_ms_max": repush.max() ?? 0,
            ])
        }
    }
}
