import ArgumentParser

struct Bench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Benchmarks (scripts/bench runs them).", shouldDisplay: false,
                                                    subcommands: [BenchQueue.self, BenchPush.self])
}
