import ArgumentParser
import Foundation
import LocoQueue

struct Bench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Benchmarks (scripts/bench runs them).", shouldDisplay: false,
                                                    subcommands: [BenchQueue.self, BenchEnqueueScript.self, BenchPush.self])
}

/// `locod bench enqueue-script`: the queue's single-enqueue statement as a pgbench script, so
/// scripts/bench can time libpq's C client on the identical statement as a same-run baseline.
struct BenchEnqueueScript: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "enqueue-script",
                                                    abstract: "Print the single-enqueue statement as a pgbench script.")

    func run() {
        let values = ["'single'", "'bench.noop'", "'{}'", "0", "25", "NULL"]
        var sql = JobStore.singleEnqueueStatement
        // From $6 down, so that $1 never matches the start of a longer placeholder.
        for (index, value) in values.enumerated().reversed() { sql = sql.replacingOccurrences(of: "$\(index + 1)", with: value) }
        print(sql.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }.joined(separator: " ") + ";")
    }
}
