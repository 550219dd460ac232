import Logging
import LocoQueue

/// Job kinds for the demo, the end-to-end tests and the benchmark.
enum DemoJobs {
    struct Sleep: JobArgs {
        static let kind = "demo.sleep"
        var ms: Int
    }

    /// Fails (retryable) until its attempt number passes `failures`.
    struct Flaky: JobArgs {
        static let kind = "demo.flaky"
        var failures: Int
    }

    struct Fail: JobArgs {
        static let kind = "demo.fail"
        var reason: String?
    }

    static func register(in handlers: inout JobHandlers) {
        handlers.register(kind: "demo.noop") { _, _ in }
        handlers.register(Sleep.self) { args, context in
            try await Task.sleep(for: .milliseconds(args.ms))
            context.logger.debug("slept \(args.ms) ms")
        }
        handlers.register(Flaky.self) { args, context in
            if context.attempt <= args.failures {
                throw JobFailure.retryable("demo_flaky", "attempt \(context.attempt) of a job set to fail \(args.failures) times")
            }
        }
        handlers.register(Fail.self) { args, _ in
            throw JobFailure.permanent("demo_failed", args.reason ?? "this job always fails")
        }
    }
}
