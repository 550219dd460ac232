import ArgumentParser
struct BenchQueue: AsyncParsableCommand { static let configuration = CommandConfiguration(commandName: "queue") }
