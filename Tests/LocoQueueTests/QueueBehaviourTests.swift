import Foundation
@testable import LocoQueue
import LocoTestSupport
import Logging
import PostgresNIO
import Synchronization
import Testing

struct Greet: JobArgs {
    static let kind = "test.greet"
    var name: String
    var times: Int
}

@Suite("Queue behaviour on real PostgreSQL")
struct QueueBehaviourTests {
    @Test("a typed job runs once and completes")
    func typedJob() async throws {
        try await TestDatabase.with { db in
            let seen = Tally<String>()
            var handlers = JobHandlers()
            handlers.register(Greet.self) { args, context in
                #expect(context.attempt == 1)
                seen.record("\(args.name)x\(args.times)")
            }
            let job = try await db.store.enqueue(try NewJob(Greet(name: "ada", times: 2), queue: "default"), on: db.client)
            #expect(job.state == .available)
            try await db.withWorker(fastConfiguration([("default", 2)]), handlers: handlers) { _ in
                let done = try await db.wait(for: job.id, toBe: .completed)
                #expect(done.attempt == 1)
                #expect(done.errors.isEmpty)
                #expect(done.finalizedAt != nil)
            }
            #expect(seen.snapshot == ["adax2": 1])
        }
    }

    @Test("10,000 jobs through 4 pools at concurrency 8 each complete exactly once")
    func tenThousand() async throws {
        try await TestDatabase.with { db in
            let runs = Tally<Int64>()
            var handlers = JobHandlers()
            handlers.register(kind: "test.count") { _, context in runs.record(context.id) }
            var ids: [Int64] = []
            for _ in 0..<10 {
                let batch = Array(repeating: NewJob(queue: "load", kind: "test.count"), count: 1000)
                ids += try await db.store.enqueueMany(batch, on: db.client).map(\.id)
            }
            #expect(Set(ids).count == 10_000)
            let workers = (0..<4).map { try! QueueWorker(databaseURL: db.url, handlers: handlers,
                                                         configuration: fastConfiguration([("load", 8)], workerID: "pool-\($0)"),
                                                         logger: db.logger) }
            let tasks = workers.map { worker in Task { try await worker.run() } }
            let finished = try await eventually(timeout: .seconds(120), every: .milliseconds(200)) {
                try await db.count(state: .completed) == 10_000
            }
            for worker in workers { worker.stop() }
            for task in tasks { try await task.value }
            #expect(finished)
            let counts = runs.snapshot
            #expect(counts.count == 10_000)
            #expect(counts.values.allSatisfy { $0 == 1 })
            #expect(Set(counts.keys) == Set(ids))
            let leftovers = try await db.scalar("SELECT count(*) FROM loco_jobs WHERE state <> 'completed' OR attempt <> 1", as: Int64.self)
            #expect(leftovers == 0)
            // The work really was shared by the four pools.
            let byWorker = try await db.scalar("SELECT count(DISTINCT locked_by) FROM loco_jobs", as: Int64.self)
            #expect(byWorker == 4)
        }
    }

    @Test("enqueue joins the caller's transaction: a rollback leaves no job")
    func transactionalEnqueue() async throws {
        try await TestDatabase.with { db in
            struct Rollback: Error {}
            await #expect(throws: Rollback.self) {
                try await db.client.transaction { connection in
                    _ = try await db.store.enqueue(NewJob(queue: "default", kind: "test.x"), on: connection)
                    throw Rollback()
                }
            }
            #expect(try await db.scalar("SELECT count(*) FROM loco_jobs", as: Int64.self) == 0)
            let id = try await db.client.transaction { connection in
                try await db.store.enqueue(NewJob(queue: "default", kind: "test.x"), on: connection).id
            }
            #expect(try await db.state(of: id) == .available)
        }
    }

    @Test("batch enqueue returns ids in input order, in one round trip")
    func batchOrder() async throws {
        try await TestDatabase.with { db in
            let jobs = (0..<50).map { NewJob(queue: "default", kind: "test.batch", args: #"{"n": \#($0)}"#, runAt: $0 == 7 ? Date().addingTimeInterval(3600) : nil) }
            let results = try await db.store.enqueueMany(jobs, on: db.client)
            #expect(results.count == 50)
            #expect(results.map(\.id) == results.map(\.id).sorted())
            for (n, result) in results.enumerated() {
                let job = try #require(try await db.store.job(id: result.id, on: db.client))
                #expect(job.args == #"{"n": \#(n)}"#)
                #expect(job.state == (n == 7 ? .scheduled : .available))
            }
        }
    }

    @Test("retryable errors retry with backoff and every attempt's error is kept")
    func retries() async throws {
        try await TestDatabase.with { db in
            var handlers = JobHandlers()
            handlers.register(kind: "test.flaky") { _, context in
                if context.attempt < 3 {
                    throw JobFailure.retryable("upstream_503", "registry answered 503 on attempt \(context.attempt)", detail: "GET /v2/")
                }
            }
            let job = try await db.store.enqueue(NewJob(queue: "default", kind: "test.flaky"), on: db.client)
            try await db.withWorker(fastConfiguration([("default", 1)], workerID: "w-retry"), handlers: handlers) { _ in
                let done = try await db.wait(for: job.id, toBe: .completed)
                #expect(done.attempt == 3)
                #expect(done.errors.map(\.attempt) == [1, 2])
                #expect(done.errors.allSatisfy { $0.errorClass == .retryable && $0.code == "upstream_503" && $0.worker == "w-retry" && $0.detail == "GET /v2/" })
                #expect(done.errors[0].message == "registry answered 503 on attempt 1")
            }
        }
    }

    @Test("an error whose text holds NUL characters (a binary log line) is kept with them replaced, and the other jobs' outcomes are written")
    func nulInError() async throws {
        try await TestDatabase.with { db in
            var handlers = JobHandlers()
            // PostgreSQL's jsonb refuses \u0000: the outcome's write failed, was put back first
            // in line and failed again, for every batch after it, so no job of this worker ended.
            handlers.register(kind: "test.binary") { _, _ in
                throw JobFailure.permanent("build\u{0}failed", "RUN step printed \u{0}\u{0}binary", detail: "tail: \u{0}\u{1}end")
            }
            handlers.register(kind: "test.noop") { _, _ in }
            let binary = try await db.store.enqueue(NewJob(queue: "default", kind: "test.binary"), on: db.client)
            try await db.withWorker(fastConfiguration([("default", 4)]), handlers: handlers) { _ in
                let failed = try await db.wait(for: binary.id, toBe: .failed)
                #expect(failed.errors.count == 1)
                #expect(failed.errors.first?.code == "build\u{FFFD}failed")
                #expect(failed.errors.first?.message == "RUN step printed \u{FFFD}\u{FFFD}binary")
                #expect(failed.errors.first?.detail == "tail: \u{FFFD}\u{1}end")
                let after = try await db.store.enqueueMany((0..<20).map { _ in NewJob(queue: "default", kind: "test.noop") }, on: db.client)
                for job in after { _ = try await db.wait(for: job.id, toBe: .completed) }
            }
        }
    }

    @Test("an outcome PostgreSQL refuses for a value in it is written with a plain error, its state kept, and every other outcome is written")
    func refusedOutcome() async throws {
        try await TestDatabase.with { db in
            // Stands in for whatever value PostgreSQL may refuse next (NUL characters and waits
            // out of range were two): a trigger that refuses any job error mentioning 'poison'
            // with a data exception (SQLSTATE 22023), as the server would.
            _ = try await db.client.query("""
                CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    IF NEW.errors::text LIKE '%poison%' THEN
                        RAISE EXCEPTION 'this value is refused' USING ERRCODE = '22023';
                    END IF;
                    RETURN NEW;
                END $$
                """)
            _ = try await db.client.query("CREATE TRIGGER refuse_poison BEFORE UPDATE ON loco_jobs FOR EACH ROW EXECUTE FUNCTION refuse_poison()")
            var handlers = JobHandlers()
            handlers.register(kind: "test.poison") { _, _ in throw JobFailure.permanent("poisoned", "a poison message") }
            handlers.register(kind: "test.noop") { _, _ in try await Task.sleep(for: .milliseconds(20)) }
            let poison = try await db.store.enqueue(NewJob(queue: "default", kind: "test.poison"), on: db.client)
            let others = try await db.store.enqueueMany((0..<40).map { _ in NewJob(queue: "default", kind: "test.noop") }, on: db.client)
            try await db.withWorker(fastConfiguration([("default", 8)]), handlers: handlers) { _ in
                let failed = try await db.wait(for: poison.id, toBe: .failed)
                #expect(failed.errors.count == 1)
                #expect(failed.errors.first?.code == "outcome_refused" && failed.errors.first?.errorClass == .permanent, "\(failed.errors)")
                #expect(failed.errors.first?.detail?.contains("this value is refused (SQLSTATE 22023)") == true, "\(failed.errors)")
                for job in others { _ = try await db.wait(for: job.id, toBe: .completed) }
            }
        }
    }

    @Test("an outcome PostgreSQL refuses even with a plain error waits apart, its job held and not run again, while other outcomes are written; once accepted, it is written")
    func parkedOutcome() async throws {
        try await TestDatabase.with { db in
            // An operator's trigger that keeps listed jobs from finishing (RAISE EXCEPTION, SQLSTATE
            // P0001): neither the outcome nor a plain stand-in can be written until it lets go.
            _ = try await db.client.query("CREATE TABLE refused_jobs (id int8 PRIMARY KEY)")
            _ = try await db.client.query("""
                CREATE FUNCTION refuse_listed() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    IF OLD.state = 'running' AND NEW.state <> 'running' AND EXISTS (SELECT FROM refused_jobs WHERE id = NEW.id) THEN
                        RAISE EXCEPTION 'job % may not finish yet', NEW.id;
                    END IF;
                    RETURN NEW;
                END $$
                """)
            _ = try await db.client.query("CREATE TRIGGER refuse_listed BEFORE UPDATE ON loco_jobs FOR EACH ROW EXECUTE FUNCTION refuse_listed()")
            let runs = Tally<Int64>()
            var handlers = JobHandlers()
            handlers.register(kind: "test.held") { _, context in runs.record(context.id) }
            handlers.register(kind: "test.noop") { _, _ in try await Task.sleep(for: .milliseconds(10)) }
            let held = try await db.store.enqueue(NewJob(queue: "default", kind: "test.held"), on: db.client)
            _ = try await db.client.query("INSERT INTO refused_jobs VALUES (\(held.id))")
            try await db.withWorker(fastConfiguration([("default", 4)]), handlers: handlers) { _ in
                let ran = try await eventually { runs.count(held.id) == 1 }
                #expect(ran)
                let others = try await db.store.enqueueMany((0..<30).map { _ in NewJob(queue: "default", kind: "test.noop") }, on: db.client)
                for job in others { _ = try await db.wait(for: job.id, toBe: .completed) }
                // Past several retries of the parked outcome, and several heartbeats.
                try await Task.sleep(for: .seconds(5))
                #expect(try await db.state(of: held.id) == .running)
                _ = try await db.client.query("DELETE FROM refused_jobs")
                let done = try await db.wait(for: held.id, toBe: .completed, timeout: .seconds(20))
                #expect(done.attempt == 1 && done.errors.isEmpty, "\(done.errors)")
                #expect(runs.count(held.id) == 1)
            }
        }
    }

    @Test("a snooze or retry wait beyond what PostgreSQL's interval holds waits ten years, and the other jobs' outcomes are written")
    func hugeWait() async throws {
        try await TestDatabase.with { db in
            var handlers = JobHandlers()
            // 10^13 s is past PostgreSQL's interval range ('timestamp out of range'): the outcome's
            // write failed, was put back first in line, and no later outcome was written.
            handlers.register(kind: "test.sleepy") { _, _ in throw JobFailure.snooze(.seconds(10_000_000_000_000), reason: "come back much later") }
            handlers.register(kind: "test.patient") { _, _ in throw JobFailure.retryable("busy", "try later", after: .seconds(Int64.max)) }
            handlers.register(kind: "test.noop") { _, _ in }
            let sleepy = try await db.store.enqueue(NewJob(queue: "default", kind: "test.sleepy"), on: db.client)
            let patient = try await db.store.enqueue(NewJob(queue: "default", kind: "test.patient"), on: db.client)
            try await db.withWorker(fastConfiguration([("default", 4)]), handlers: handlers) { _ in
                for job in [sleepy, patient] {
                    _ = try await db.wait(for: job.id, toBe: .scheduled)
                    let years = try await db.scalar("SELECT (extract(epoch FROM run_at - now()) / (365 * 86400))::float8 FROM loco_jobs WHERE id = \(job.id)", as: Double.self)
                    #expect(years > 9.9 && years <= 10, "\(job.id): \(years) years")
                }
                let after = try await db.store.enqueueMany((0..<20).map { _ in NewJob(queue: "default", kind: "test.noop") }, on: db.client)
                for job in after { _ = try await db.wait(for: job.id, toBe: .completed) }
            }
        }
    }

    @Test("a permanent error fails at once; running out of attempts fails too")
    func permanentAndExhausted() async throws {
        try await TestDatabase.with { db in
            var handlers = JobHandlers()
            handlers.register(kind: "test.broken") { _, _ in throw JobFailure.permanent("dockerfile_invalid", "line 3: unknown instruction FORM") }
            handlers.register(kind: "test.always") { _, _ in throw URLError(.cannotConnectToHost) }
            let broken = try await db.store.enqueue(NewJob(queue: "default", kind: "test.broken", maxAttempts: 5), on: db.client)
            let always = try await db.store.enqueue(NewJob(queue: "default", kind: "test.always", maxAttempts: 3), on: db.client)
            try await db.withWorker(fastConfiguration([("default", 2)]), handlers: handlers) { _ in
                let failed = try await db.wait(for: broken.id, toBe: .failed)
                #expect(failed.attempt == 1)
                #expect(failed.errors.count == 1)
                #expect(failed.errors[0].errorClass == .permanent)
                #expect(failed.errors[0].code == "dockerfile_invalid")
                let exhausted = try await db.wait(for: always.id, toBe: .failed)
                #expect(exhausted.attempt == 3)
                #expect(exhausted.errors.map(\.code) == ["error", "error", "error"])
            }
        }
    }

    @Test("a snooze waits without using up an attempt")
    func snooze() async throws {
        try await TestDatabase.with { db in
            let calls = Tally<Int>()
            var handlers = JobHandlers()
            handlers.register(kind: "test.snooze") { _, context in
                calls.record(context.attempt)
                if calls.sequence.count < 3 { throw JobFailure.snooze(.milliseconds(30), reason: "rollout not ready yet") }
            }
            let job = try await db.store.enqueue(NewJob(queue: "default", kind: "test.snooze", maxAttempts: 1), on: db.client)
            try await db.withWorker(fastConfiguration([("default", 1)]), handlers: handlers) { _ in
                let done = try await db.wait(for: job.id, toBe: .completed)
                #expect(done.attempt == 1)
                #expect(done.errors.map(\.errorClass) == [.snooze, .snooze])
            }
            #expect(calls.sequence == [1, 1, 1])
        }
    }

    @Test("a handler that runs past its job timeout is cancelled; the attempt fails as job_timeout and retries")
    func jobTimeout() async throws {
        try await TestDatabase.with { db in
            let deadlines = Tally<Bool>()
            var handlers = JobHandlers()
            // Its own timeout, shorter than the worker's: it wins.
            handlers.register(kind: "test.hangs", timeout: .milliseconds(300)) { _, context in
                deadlines.record(context.deadline != nil)
                try await Task.sleep(for: .seconds(60))
            }
            // No timeout of its own: the worker's applies, and it finishes well within it.
            handlers.register(kind: "test.quick") { _, context in
                deadlines.record(context.deadline != nil)
                try await Task.sleep(for: .milliseconds(50))
            }
            // Cancelled at its timeout, it finishes its work anyway: that counts as done.
            handlers.register(kind: "test.finishes", timeout: .milliseconds(200)) { _, _ in
                try? await Task.sleep(for: .seconds(60))
            }
            let hangs = try await db.store.enqueue(NewJob(queue: "default", kind: "test.hangs", maxAttempts: 2), on: db.client)
            let quick = try await db.store.enqueue(NewJob(queue: "default", kind: "test.quick"), on: db.client)
            let finishes = try await db.store.enqueue(NewJob(queue: "default", kind: "test.finishes"), on: db.client)
            var configuration = fastConfiguration([("default", 4)], workerID: "w-timeout")
            configuration.jobTimeout = .seconds(20)
            try await db.withWorker(configuration, handlers: handlers) { _ in
                let failed = try await db.wait(for: hangs.id, toBe: .failed)
                #expect(failed.attempt == 2)
                #expect(failed.errors.map(\.code) == ["job_timeout", "job_timeout"])
                #expect(failed.errors.allSatisfy { $0.errorClass == .retryable && $0.worker == "w-timeout" })
                #expect(failed.errors[0].message == "the job ran past its timeout of 300 ms and was stopped")
                #expect(failed.errors[0].detail?.contains("CancellationError") == true)
                let done = try await db.wait(for: quick.id, toBe: .completed)
                #expect(done.errors.isEmpty)
                let finished = try await db.wait(for: finishes.id, toBe: .completed)
                #expect(finished.attempt == 1)
            }
            #expect(deadlines.sequence.allSatisfy { $0 })
            #expect(deadlines.sequence.count == 3)
        }
    }

    @Test("a kind's own retry policy beats the worker's; other kinds keep the worker's")
    func kindRetryPolicy() async throws {
        try await TestDatabase.with { db in
            var handlers = JobHandlers()
            handlers.register(kind: "test.quick-retry", retry: RetryPolicy(base: .milliseconds(20), cap: .milliseconds(40))) { _, _ in
                throw JobFailure.retryable("flaky", "the service answered 503")
            }
            handlers.register(kind: "test.worker-retry") { _, _ in
                throw JobFailure.retryable("flaky", "the service answered 503")
            }
            let quick = try await db.store.enqueue(NewJob(queue: "default", kind: "test.quick-retry", maxAttempts: 4), on: db.client)
            let slow = try await db.store.enqueue(NewJob(queue: "default", kind: "test.worker-retry", maxAttempts: 4), on: db.client)
            var configuration = fastConfiguration([("default", 2)], workerID: "w-kind-retry")
            // The worker's own backoff: an hour at most after the first attempt.
            configuration.retry = RetryPolicy(base: .seconds(3600), cap: .seconds(3600))
            try await db.withWorker(configuration, handlers: handlers) { _ in
                // Four attempts, each waiting at most 40 ms: all done long before the worker's hour.
                let failed = try await db.wait(for: quick.id, toBe: .failed)
                #expect(failed.attempt == 4 && failed.errors.map(\.code) == ["flaky", "flaky", "flaky", "flaky"])
                // The other kind waits out the worker's policy: its retry is due within the hour.
                let waiting = try await db.wait(for: slow.id, toBe: .scheduled)
                let wait = waiting.runAt.timeIntervalSince(try #require(waiting.errors.last).at)
                #expect(wait >= 0 && wait <= 3600, "\(wait)")
            }
            let gaps = try await db.scalar("""
                SELECT max(EXTRACT(EPOCH FROM (e2.at - e1.at)))::float8 FROM (
                    SELECT (x->>'attempt')::int AS attempt, (x->>'at')::timestamptz AS at
                    FROM loco_jobs, jsonb_array_elements(errors) x WHERE id = \(quick.id)) e1
                JOIN (SELECT (x->>'attempt')::int AS attempt, (x->>'at')::timestamptz AS at
                      FROM loco_jobs, jsonb_array_elements(errors) x WHERE id = \(quick.id)) e2 ON e2.attempt = e1.attempt + 1
                """, as: Double.self)
            // The kind's cap is 40 ms; promotion and claiming add their own fraction of a second.
            #expect(gaps < 30, "longest gap between attempts: \(gaps) s")
        }
        var handlers = JobHandlers()
        handlers.register(kind: "test.k", retry: RetryPolicy(base: .seconds(-1), cap: .seconds(1))) { _, _ in }
        #expect {
            try QueueWorker(databaseURL: try DatabaseURL("postgres://postgres@127.0.0.1:1/none"), handlers: handlers,
                            configuration: fastConfiguration([("default", 1)]), logger: Logger(label: "t"))
        } throws: { error in
            guard case QueueError.invalidWorkerConfiguration(let reason)? = error as? QueueError else { return false }
            return reason.contains("the retry backoff of job kind 'test.k' must not be negative")
        }
    }

    @Test("a job timeout that is not positive, a claim gather time, an orphan grace or a listener check interval out of range, a queue named twice, a worker id empty or with control characters, is refused with invalid_worker_configuration")
    func badJobTimeout() async throws {
        var configuration = fastConfiguration([("default", 1)])
        configuration.jobTimeout = .zero
        let url = try DatabaseURL("postgres://postgres@127.0.0.1:1/none")
        #expect {
            try QueueWorker(databaseURL: url, handlers: JobHandlers(), configuration: configuration, logger: Logger(label: "t"))
        } throws: { error in
            guard case QueueError.invalidWorkerConfiguration(let reason)? = error as? QueueError else { return false }
            return reason.contains("job timeout must be positive")
        }
        var handlers = JobHandlers()
        handlers.register(kind: "test.k", timeout: .seconds(-1)) { _, _ in }
        #expect {
            try QueueWorker(databaseURL: url, handlers: handlers, configuration: fastConfiguration([("default", 1)]), logger: Logger(label: "t"))
        } throws: { error in
            guard case QueueError.invalidWorkerConfiguration(let reason)? = error as? QueueError else { return false }
            return reason.contains("job kind 'test.k' must be positive")
        }
        var gathering = fastConfiguration([("default", 1)])
        gathering.claimGather = .milliseconds(-1)
        #expect {
            try QueueWorker(databaseURL: url, handlers: JobHandlers(), configuration: gathering, logger: Logger(label: "t"))
        } throws: { error in
            guard case QueueError.invalidWorkerConfiguration(let reason)? = error as? QueueError else { return false }
            return reason.contains("claim gather time must be from 0 to 1 second")
        }
        var hasty = fastConfiguration([("default", 1)])
        hasty.orphanGrace = .milliseconds(500)
        #expect {
            try QueueWorker(databaseURL: url, handlers: JobHandlers(), configuration: hasty, logger: Logger(label: "t"))
        } throws: { error in
            guard case QueueError.invalidWorkerConfiguration(let reason)? = error as? QueueError else { return false }
            return reason.contains("orphan grace must be at least 1 second")
        }
        var fussy = fastConfiguration([("default", 1)])
        fussy.listenerCheckInterval = .milliseconds(10)
        #expect {
            try QueueWorker(databaseURL: url, handlers: JobHandlers(), configuration: fussy, logger: Logger(label: "t"))
        } throws: { error in
            guard case QueueError.invalidWorkerConfiguration(let reason)? = error as? QueueError else { return false }
            return reason == "the listener check interval must be at least 100 ms (got 10 ms)"
        }
        #expect {
            try QueueWorker(databaseURL: url, handlers: JobHandlers(), configuration: fastConfiguration([("default", 1), ("other", 2), ("default", 3)]), logger: Logger(label: "t"))
        } throws: { error in
            guard case QueueError.invalidWorkerConfiguration(let reason)? = error as? QueueError else { return false }
            return reason == "queue 'default' is named twice; a worker runs one pool per queue, so name it once with its whole concurrency"
        }
        // Written to every job it holds: an empty id, or one PostgreSQL's text cannot hold.
        for id in ["", "w\u{0}1", "line\nbreak", String(repeating: "w", count: 201)] {
            #expect {
                try QueueWorker(databaseURL: url, handlers: JobHandlers(), configuration: fastConfiguration([("default", 1)], workerID: id), logger: Logger(label: "t"))
            } throws: { error in
                guard case QueueError.invalidWorkerConfiguration(let reason)? = error as? QueueError else { return false }
                return reason.hasPrefix("the worker id must be 1 to 200 characters, none of them control characters")
            }
        }
    }

    @Test("malformed arguments fail the job with invalid_args naming the field")
    func malformedArgs() async throws {
        try await TestDatabase.with { db in
            var handlers = JobHandlers()
            handlers.register(Greet.self) { _, _ in Issue.record("the handler must not run with bad args") }
            let job = try await db.store.enqueue(NewJob(queue: "default", kind: Greet.kind, args: #"{"name": "ada", "times": "twice"}"#), on: db.client)
            try await db.withWorker(fastConfiguration([("default", 1)]), handlers: handlers) { _ in
                let failed = try await db.wait(for: job.id, toBe: .failed)
                #expect(failed.attempt == 1)
                #expect(failed.errors.first?.code == "invalid_args")
                #expect(failed.errors.first?.detail?.contains("times") == true)
            }
        }
    }

    @Test("bad input is refused at enqueue with a coded error")
    func badEnqueue() async throws {
        try await TestDatabase.with { db in
            let cases: [(NewJob, String)] = [
                (NewJob(queue: "Build Queue", kind: "k"), "invalid_queue_name"),
                (NewJob(queue: "build", kind: "k", args: "[1,2]"), "invalid_args"),
                (NewJob(queue: "build", kind: "k", args: "{not json"), "invalid_args"),
                (NewJob(queue: "build", kind: "has space"), "invalid_kind"),
                (NewJob(queue: "build", kind: "k", maxAttempts: 0), "invalid_enqueue"),
                (NewJob(queue: "build", kind: "k", dependsOn: [987_654]), "unknown_dependency"),
                // PostgreSQL would store 'infinity' (a job that never runs) or refuse it bare.
                (NewJob(queue: "build", kind: "k", runAt: Date(timeIntervalSince1970: .infinity)), "invalid_enqueue"),
                (NewJob(queue: "build", kind: "k", runAt: Date(timeIntervalSince1970: 1e12)), "invalid_enqueue"),
                // PostgreSQL's text cannot hold it: a bare database_error before.
                (NewJob(queue: "build", kind: "k", uniqueKey: "key\u{0}"), "invalid_enqueue"),
            ]
            for (job, code) in cases {
                await #expect {
                    _ = try await db.store.enqueue(job, on: db.client)
                } throws: { error in
                    (error as? QueueError)?.code == code && !((error as? QueueError)?.hint.isEmpty ?? true)
                }
            }
            await #expect {
                _ = try await db.store.enqueueMany([NewJob(queue: "build", kind: "k", runAt: Date(timeIntervalSince1970: -.infinity))], on: db.client)
            } throws: { error in
                (error as? QueueError)?.code == "invalid_enqueue"
            }
            let stored = try await db.scalar("SELECT count(*) FROM loco_jobs", as: Int64.self)
            #expect(stored == 0)
        }
    }

    @Test("bulk retry, cancel and discard take the jobs a queue, kind and states select, a batch at a time")
    func bulkActions() async throws {
        try await TestDatabase.with { db in
            // 2,500 crosses two batch boundaries.
            _ = try await db.store.enqueueMany(Array(repeating: NewJob(queue: "bulk", kind: "a"), count: 2500), on: db.client)
            _ = try await db.store.enqueueMany(Array(repeating: NewJob(queue: "bulk", kind: "b"), count: 3), on: db.client)
            _ = try await db.client.query("UPDATE loco_jobs SET state = 'failed', finalized_at = now(), attempt = max_attempts")
            _ = try await db.store.enqueueMany(Array(repeating: NewJob(queue: "other", kind: "a"), count: 4), on: db.client)

            #expect(try await db.store.retry(matching: JobSelection(queue: "bulk", kind: "a", states: [.failed]), on: db.client) == 2500)
            #expect(try await db.count(state: .available, queue: "bulk") == 2500)
            #expect(try await db.count(state: .failed, queue: "bulk") == 3, "kind b is not selected")
            // Retried jobs get one more attempt than they used.
            #expect(try await db.scalar("SELECT count(*) FROM loco_jobs WHERE queue = 'bulk' AND kind = 'a' AND max_attempts = attempt + 1", as: Int64.self) == 2500)
            // States an action does not apply to are left alone: available jobs are not "retried".
            #expect(try await db.store.retry(matching: JobSelection(queue: "other", states: [.available]), on: db.client) == 0)

            #expect(try await db.store.discard(matching: JobSelection(queue: "other", states: [.blocked, .scheduled, .available]), on: db.client) == 4)
            let discarded = try await db.store.list(queue: "other", on: db.client)
            #expect(discarded.count == 4 && discarded.allSatisfy { $0.state == .failed && $0.errors.last?.code == "discarded" })

            #expect(try await db.store.cancel(matching: JobSelection(queue: "bulk", states: JobState.live), on: db.client) == 2500)
            #expect(try await db.count(state: .cancelled, queue: "bulk") == 2500)
            #expect(try await db.store.cancel(matching: JobSelection(queue: "bulk", states: JobState.live), on: db.client) == 0)

            await #expect(throws: QueueError.self) {
                try await db.store.retry(matching: JobSelection(queue: "Bad Queue", states: [.failed]), on: db.client)
            }
        }
    }

    @Test("a job of an unknown kind fails its attempt with unknown_kind and stays visible")
    func unknownKind() async throws {
        try await TestDatabase.with { db in
            var handlers = JobHandlers()
            handlers.register(kind: "test.known") { _, _ in }
            let job = try await db.store.enqueue(NewJob(queue: "default", kind: "test.mystery", maxAttempts: 2), on: db.client)
            try await db.withWorker(fastConfiguration([("default", 1)]), handlers: handlers) { _ in
                let failed = try await db.wait(for: job.id, toBe: .failed)
                #expect(failed.errors.map(\.code) == ["unknown_kind", "unknown_kind"])
                #expect(failed.errors[0].message.contains("test.mystery"))
                #expect(failed.errors[0].detail?.contains("test.known") == true)
            }
            // A worker with no handlers at all says so, rather than listing nothing.
            let orphan = try await db.store.enqueue(NewJob(queue: "bare", kind: "test.mystery", maxAttempts: 1), on: db.client)
            try await db.withWorker(fastConfiguration([("bare", 1)]), handlers: JobHandlers()) { _ in
                let failed = try await db.wait(for: orphan.id, toBe: .failed)
                #expect(failed.errors.map(\.detail) == ["this worker has no handlers registered"])
            }
        }
    }

    @Test("a unique key admits one live job; finishing frees it")
    func uniqueKeys() async throws {
        try await TestDatabase.with { db in
            let first = try await db.store.enqueue(NewJob(queue: "default", kind: "test.u", uniqueKey: "deploy:app-1"), on: db.client)
            let second = try await db.store.enqueue(NewJob(queue: "default", kind: "test.u", uniqueKey: "deploy:app-1"), on: db.client)
            #expect(!first.duplicate)
            #expect(second.duplicate)
            #expect(second.id == first.id)
            var handlers = JobHandlers()
            handlers.register(kind: "test.u") { _, _ in }
            try await db.withWorker(fastConfiguration([("default", 1)]), handlers: handlers) { _ in
                try await db.wait(for: first.id, toBe: .completed)
            }
            let third = try await db.store.enqueue(NewJob(queue: "default", kind: "test.u", uniqueKey: "deploy:app-1"), on: db.client)
            #expect(!third.duplicate)
            #expect(third.id != first.id)
        }
    }

    @Test("a unique key held for a period: once per period even after the job completed, and while it is live; failing for good or a cancel frees it; racing enqueuers get one job; with dependencies too")
    func uniquePeriods() async throws {
        try await TestDatabase.with { db in
            let store = db.store
            func enqueue(_ key: String, for period: Duration, kind: String = "test.period") async throws -> EnqueuedJob {
                try await store.enqueue(NewJob(queue: "period", kind: kind, maxAttempts: 1, uniqueKey: key, uniqueFor: period), on: db.client)
            }
            var handlers = JobHandlers()
            handlers.register(kind: "test.period") { _, _ in }
            handlers.register(kind: "test.doomed") { _, _ in throw JobFailure.permanent("upstream_gone", "the report's source is gone") }

            let first = try await enqueue("digest:team-1", for: .seconds(3600))
            let again = try await enqueue("digest:team-1", for: .seconds(3600))
            #expect(!first.duplicate && again.duplicate && again.id == first.id, "\(first) \(again)")
            // Keys held only while live are apart from keys held for a period.
            let live = try await store.enqueue(NewJob(queue: "period", kind: "test.period", uniqueKey: "digest:team-1"), on: db.client)
            #expect(!live.duplicate && live.id != first.id, "\(live)")
            let doomed = try await enqueue("sync:team-2", for: .seconds(3600), kind: "test.doomed")
            let cancelled = try await enqueue("report:team-3", for: .seconds(3600))
            #expect(try await store.cancel(id: cancelled.id, on: db.client) == .cancelled)
            let short = try await enqueue("ping:team-4", for: .seconds(1))
            try await db.withWorker(fastConfiguration([("period", 2)]), handlers: handlers) { _ in
                for id in [first.id, live.id, short.id] { _ = try await db.wait(for: id, toBe: .completed) }
                _ = try await db.wait(for: doomed.id, toBe: .failed)
            }
            let afterDone = try await enqueue("digest:team-1", for: .seconds(3600))
            #expect(afterDone.duplicate && afterDone.id == first.id && afterDone.state == .completed, "\(afterDone)")
            let shown = try await store.job(id: first.id, withPeriodKey: true, on: db.client)
            let heldFor = shown?.uniqueHeldUntil.map { $0.timeIntervalSince(shown!.createdAt) } ?? 0
            #expect(shown?.uniqueKey == "digest:team-1" && abs(heldFor - 3600) < 5, "\(String(describing: shown))")
            #expect(try await store.job(id: live.id, withPeriodKey: true, on: db.client)?.uniqueHeldUntil == nil)
            let afterFailure = try await enqueue("sync:team-2", for: .seconds(3600), kind: "test.doomed")
            #expect(!afterFailure.duplicate && afterFailure.id != doomed.id, "\(afterFailure)")
            let afterCancel = try await enqueue("report:team-3", for: .seconds(3600))
            #expect(!afterCancel.duplicate && afterCancel.id != cancelled.id, "\(afterCancel)")

            // A period over: the key is free once its holder is no longer live, not before.
            let waiting = try await enqueue("ping:team-5", for: .seconds(1))
            try await Task.sleep(for: .milliseconds(1500))
            let pastPeriod = try await enqueue("ping:team-4", for: .seconds(1))
            #expect(!pastPeriod.duplicate && pastPeriod.id != short.id, "\(pastPeriod)")
            let stillLive = try await enqueue("ping:team-5", for: .seconds(1))
            #expect(stillLive.duplicate && stillLive.id == waiting.id && stillLive.state == .available, "\(stillLive)")

            // Twenty enqueuers at once: one job, and every one of them is told its id.
            let racing = try await withThrowingTaskGroup(of: EnqueuedJob.self) { group in
                for _ in 0..<20 { group.addTask { try await enqueue("race:team-6", for: .seconds(3600)) } }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            #expect(racing.filter { !$0.duplicate }.count == 1 && Set(racing.map(\.id)).count == 1, "\(racing)")

            // Pruning forgets keys whose period ended and whose holder is not live.
            _ = try await store.cancel(ids: [waiting.id, pastPeriod.id], on: db.client)
            try await Task.sleep(for: .milliseconds(1100))
            let pruned = try await store.pruneUniquePeriods(limit: 1000, on: db.client)
            let keys = try await db.client.query("SELECT unique_key FROM loco_unique_periods ORDER BY unique_key").collect().map { try $0.decode(String.self) }
            #expect(pruned == 2 && keys == ["digest:team-1", "race:team-6", "report:team-3", "sync:team-2"], "\(pruned) \(keys)")

            // With dependencies: the key is taken with the job, blocked or not; a missing parent
            // takes nothing; a job cancelled at once (its parent was) frees its key.
            func enqueue(_ key: String, after parents: [Int64]) async throws -> EnqueuedJob {
                try await store.enqueue(NewJob(queue: "period", kind: "test.period", uniqueKey: key, uniqueFor: .seconds(3600),
                                               dependsOn: parents), on: db.client)
            }
            let parent = try await store.enqueue(NewJob(queue: "period-parents", kind: "test.period"), on: db.client)
            let blocked = try await enqueue("nightly:team-7", after: [parent.id])
            let blockedAgain = try await enqueue("nightly:team-7", after: [parent.id])
            #expect(!blocked.duplicate && blocked.state == .blocked, "\(blocked)")
            #expect(blockedAgain.duplicate && blockedAgain.id == blocked.id && blockedAgain.state == .blocked, "\(blockedAgain)")
            #expect(try await store.job(id: blocked.id, withPeriodKey: true, on: db.client)?.uniqueHeldUntil != nil)
            await #expect(throws: QueueError.unknownDependencies([987_654_321])) {
                try await enqueue("nightly:team-8", after: [parent.id, 987_654_321])
            }
            let notTaken = try await enqueue("nightly:team-8", after: [])
            #expect(!notTaken.duplicate, "a missing parent took the key: \(notTaken)")
            let orphan = try await enqueue("nightly:team-9", after: [cancelled.id])
            let orphanAgain = try await enqueue("nightly:team-9", after: [cancelled.id])
            #expect(orphan.state == .cancelled && orphanAgain.state == .cancelled && !orphanAgain.duplicate && orphanAgain.id != orphan.id,
                    "\(orphan) \(orphanAgain)")

            // Bad input says what is wrong.
            for (job, expected) in [
                (NewJob(queue: "period", kind: "test.period", uniqueFor: .seconds(60)), "needs a unique key"),
                (NewJob(queue: "period", kind: "test.period", uniqueKey: "k", uniqueFor: .milliseconds(500)), "between 1 second and 366 days"),
            ] {
                await #expect {
                    try await store.enqueue(job, on: db.client)
                } throws: { error in
                    guard case QueueError.invalidEnqueue(let reason)? = error as? QueueError else { return false }
                    return reason.contains(expected)
                }
            }
        }
    }

    @Test("a fan-out then fan-in DAG runs in dependency order")
    func dagOrder() async throws {
        try await TestDatabase.with { db in
            let order = Tally<String>()
            var handlers = JobHandlers()
            handlers.register(kind: "test.step") { args, _ in
                try await Task.sleep(for: .milliseconds(20))
                order.record(args)
            }
            let store = db.store
            func step(_ name: String, after: [Int64]) async throws -> EnqueuedJob {
                try await store.enqueue(NewJob(queue: "dag", kind: "test.step", args: #"{"step":"\#(name)"}"#, dependsOn: after), on: db.client)
            }
            let build = try await step("build", after: [])
            let pushA = try await step("pushA", after: [build.id])
            let pushB = try await step("pushB", after: [build.id])
            let apply = try await step("apply", after: [pushA.id, pushB.id])
            #expect(pushA.state == .blocked)
            #expect(apply.state == .blocked)
            try await db.withWorker(fastConfiguration([("dag", 4)]), handlers: handlers) { _ in
                try await db.wait(for: apply.id, toBe: .completed)
            }
            let sequence = order.sequence.map { $0.replacingOccurrences(of: #"{"step": ""#, with: "").replacingOccurrences(of: #""}"#, with: "") }
            #expect(sequence.first == "build")
            #expect(sequence.last == "apply")
            #expect(Set(sequence[1...2]) == ["pushA", "pushB"])
            // A job added after its parent completed starts available at once.
            let late = try await step("late", after: [build.id])
            #expect(late.state == .available)
        }
    }

    @Test("a permanent failure cancels every job that depends on it, transitively")
    func dagFailure() async throws {
        try await TestDatabase.with { db in
            var handlers = JobHandlers()
            handlers.register(kind: "test.fail") { _, _ in throw JobFailure.permanent("build_failed", "step 3 exited 1") }
            handlers.register(kind: "test.ok") { _, _ in }
            let store = db.store
            let build = try await store.enqueue(NewJob(queue: "dag", kind: "test.fail"), on: db.client)
            let sibling = try await store.enqueue(NewJob(queue: "dag", kind: "test.ok"), on: db.client)
            let push = try await store.enqueue(NewJob(queue: "dag", kind: "test.ok", dependsOn: [build.id]), on: db.client)
            let apply = try await store.enqueue(NewJob(queue: "dag", kind: "test.ok", dependsOn: [push.id, sibling.id]), on: db.client)
            try await db.withWorker(fastConfiguration([("dag", 2)]), handlers: handlers) { _ in
                try await db.wait(for: build.id, toBe: .failed)
                let cancelledPush = try await db.wait(for: push.id, toBe: .cancelled)
                #expect(cancelledPush.attempt == 0)
                #expect(cancelledPush.errors.first?.code == "dependency_failed")
                #expect(cancelledPush.errors.first?.message.contains("\(build.id)") == true)
                try await db.wait(for: apply.id, toBe: .cancelled)
                try await db.wait(for: sibling.id, toBe: .completed)
            }
            // Depending on a job that already failed gives a cancelled job, not a stuck one.
            let orphan = try await store.enqueue(NewJob(queue: "dag", kind: "test.ok", dependsOn: [build.id]), on: db.client)
            #expect(orphan.state == .cancelled)
        }
    }

    @Test("cancel stops a queued job at once and a running handler within moments")
    func cancel() async throws {
        try await TestDatabase.with { db in
            let started = Tally<Int64>()
            var handlers = JobHandlers()
            handlers.register(kind: "test.long") { _, context in
                started.record(context.id)
                try await Task.sleep(for: .seconds(60))
            }
            let queued = try await db.store.enqueue(NewJob(queue: "other", kind: "test.long"), on: db.client)
            #expect(try await db.store.cancel(id: queued.id, on: db.client) == .cancelled)
            #expect(try await db.state(of: queued.id) == .cancelled)
            await #expect(throws: QueueError.self) { try await db.store.cancel(id: queued.id, on: db.client) }
            await #expect(throws: QueueError.jobNotFound(424_242)) { try await db.store.cancel(id: 424_242, on: db.client) }

            let running = try await db.store.enqueue(NewJob(queue: "default", kind: "test.long"), on: db.client)
            try await db.withWorker(fastConfiguration([("default", 1)]), handlers: handlers) { worker in
                await worker.waitUntilListening()
                try await db.wait(for: running.id, toBe: .running)
                #expect(await eventually { started.count(running.id) == 1 })
                let began = ContinuousClock.now
                #expect(try await db.store.cancel(id: running.id, on: db.client) == .running)
                let done = try await db.wait(for: running.id, toBe: .cancelled, timeout: .seconds(60))
                // The notification reaches the worker long before the 10 s heartbeat would.
                #expect(ContinuousClock.now - began < .seconds(5))
                #expect(done.errors.last?.code == "cancelled")
                // The answer is the state the cancel left, however fast the handler then stops
                // (a later read raced the worker and sometimes saw `cancelled`).
                for _ in 0..<8 {
                    let next = try await db.store.enqueue(NewJob(queue: "default", kind: "test.long"), on: db.client)
                    try await db.wait(for: next.id, toBe: .running)
                    #expect(try await db.store.cancel(id: next.id, on: db.client) == .running)
                    _ = try await db.wait(for: next.id, toBe: .cancelled, timeout: .seconds(60))
                }
            }
        }
    }

    @Test("a cancel request that reaches the worker before its claim's answer still stops the handler; a stale one stops nothing")
    func cancelBeforeClaimAnswer() async throws {
        try await TestDatabase.with { db in
            let started = Tally<Int64>()
            var handlers = JobHandlers()
            handlers.register(kind: "test.long") { _, context in
                started.record(context.id)
                try await Task.sleep(for: .seconds(60))
            }
            handlers.register(kind: "test.brief") { _, context in
                started.record(context.id)
                try await Task.sleep(for: .milliseconds(1500))
            }
            // Only the notification and the database can tell: the regular heartbeat is a minute away.
            var configuration = fastConfiguration([("default", 2)])
            configuration.leaseDuration = .seconds(120)
            configuration.heartbeatInterval = .seconds(60)
            try await db.withWorker(configuration, handlers: handlers) { worker in
                await worker.waitUntilListening()
                // Paused, so the jobs wait until the worker has the requests: no timing involved.
                _ = try await db.store.pause(queue: "default", by: "test", on: db.client)
                let wanted = try await db.store.enqueue(NewJob(queue: "default", kind: "test.long"), on: db.client)
                let stale = try await db.store.enqueue(NewJob(queue: "default", kind: "test.brief"), on: db.client)
                // What the worker sees when an operator cancels a job the moment its claim commits:
                // the request (flag and notification) before the claim's answer. The second job's
                // notification has no flag behind it, like a request about an earlier attempt.
                _ = try await db.scalar("UPDATE loco_jobs SET cancel_requested = true WHERE id = \(wanted.id) RETURNING true", as: Bool.self)
                _ = try await db.scalar("SELECT pg_notify('loco_jobs', 'cancel:' || \(wanted.id)::text) IS NULL", as: Bool.self)
                _ = try await db.scalar("SELECT pg_notify('loco_jobs', 'cancel:' || \(stale.id)::text) IS NULL", as: Bool.self)
                let ledger = worker.shared.ledger
                #expect(await eventually { ledger.remembersCancel(of: wanted.id) && ledger.remembersCancel(of: stale.id) })
                #expect(try await db.state(of: wanted.id) == .available)
                #expect(try await db.store.resume(queue: "default", on: db.client))
                let cancelled = try await db.wait(for: wanted.id, toBe: .cancelled, timeout: .seconds(60))
                #expect(cancelled.attempt == 1)
                #expect(cancelled.errors.last?.code == "cancelled")
                let completed = try await db.wait(for: stale.id, toBe: .completed, timeout: .seconds(60))
                #expect(completed.attempt == 1)
                #expect(completed.errors.isEmpty)
                #expect(started.count(wanted.id) == 1)
            }
        }
    }

    @Test("the ledger keeps a cancel request for a job it does not hold yet, and asks for a heartbeat when it claims it")
    func ledgerUnmatchedCancel() {
        let ledger = JobLedger()
        #expect(!ledger.requestCancel(9))
        #expect(!ledger.takeRecheck())
        ledger.add(id: 9, attempt: 1, queue: "default")
        // Not stopped on the request alone: the heartbeat asks the database first.
        #expect(ledger.stopReason(of: 9) == nil)
        #expect(ledger.takeRecheck())
        #expect(!ledger.takeRecheck())
        // A request for a held job stops it at once, as before.
        #expect(ledger.requestCancel(9))
        #expect(ledger.stopReason(of: 9) == .cancelRequested)
        // A request is used once: the next claim of another job asks for nothing.
        ledger.add(id: 10, attempt: 1, queue: "default")
        #expect(!ledger.takeRecheck())
    }

    @Test("a cancel requested while the handler fails on its own wins over the retry, and its dependents are cancelled")
    func cancelBeatsRetry() async throws {
        try await TestDatabase.with { db in
            let started = Tally<Int64>()
            var handlers = JobHandlers()
            handlers.register(kind: "test.flaky") { _, context in
                started.record(context.id)
                // This worker never hears of the cancel (no LISTEN, no heartbeat in time): the
                // handler fails by itself once the request is in the table, as a handler that
                // fails just as an operator cancels it does.
                while try await db.store.job(id: context.id, on: db.client)?.cancelRequested != true {
                    try await Task.sleep(for: .milliseconds(10))
                }
                throw JobFailure.retryable("upstream_503", "the upstream answered 503")
            }
            var configuration = fastConfiguration([("default", 1)])
            configuration.pollOnly = true
            configuration.leaseDuration = .seconds(120)
            configuration.heartbeatInterval = .seconds(60)
            let parent = try await db.store.enqueue(NewJob(queue: "default", kind: "test.flaky", maxAttempts: 5), on: db.client)
            let child = try await db.store.enqueue(NewJob(queue: "default", kind: "test.flaky", dependsOn: [parent.id]), on: db.client)
            try await db.withWorker(configuration, handlers: handlers) { _ in
                try await db.wait(for: parent.id, toBe: .running)
                #expect(try await db.store.cancel(id: parent.id, on: db.client) == .running)
                let done = try await db.wait(for: parent.id, toBe: .cancelled, timeout: .seconds(60))
                #expect(done.attempt == 1)
                #expect(done.finalizedAt != nil)
                #expect(done.lockedBy != nil)
                #expect(done.errors.map(\.code) == ["upstream_503"])
                _ = try await db.wait(for: child.id, toBe: .cancelled, timeout: .seconds(60))
                try await Task.sleep(for: .milliseconds(300))
                #expect(started.count(parent.id) == 1)
                #expect(started.count(child.id) == 0)
            }
        }
    }

    @Test("presence: a listed worker whose session ended has its leases cut; a live, a duplicate and an unlisted worker's are left")
    func orphanedLeases() async throws {
        try await TestDatabase.with { db in
            let store = db.store
            var held: [String: Int64] = [:]
            for worker in ["alive", "dead", "unlisted"] {
                _ = try await store.enqueue(NewJob(queue: "default", kind: "test.presence"), on: db.client)
                held[worker] = try #require(try await store.claim(queue: "default", limit: 1, worker: worker, lease: .seconds(30), on: db.client).first).id
            }
            let alive = ReconnectingConnection(url: db.url, logger: db.logger)
            let dead = ReconnectingConnection(url: db.url, logger: db.logger)
            #expect(try await store.announcePresence(worker: "alive", on: alive))
            #expect(try await store.announcePresence(worker: "dead", on: dead))
            // The same session may announce again (after a reconnect the heartbeat cannot tell).
            #expect(try await store.announcePresence(worker: "alive", on: alive))
            // Its process dies: the server ends the session. (Closing the connection here is not
            // enough under the full suite: a process another test spawns at that moment may hold
            // a copy of the socket.)
            let deadBackend = try #require(try await dead.run("SELECT pg_backend_pid()", logger: db.logger).decode(Int32.self).first { _ in true })
            _ = try await db.scalar("SELECT pg_terminate_backend(\(deadBackend))", as: Bool.self)
            await dead.close()
            let presenceLocks = """
                SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = \(JobStore.presenceLockClass)::int4::oid
                AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
                """
            #expect(await eventually(timeout: .seconds(30)) { (try? await db.scalar(PostgresQuery(unsafeSQL: presenceLocks), as: Int64.self)) == 1 },
                    "the closed session's lock should go with it")

            func lease(_ worker: String) async throws -> Date {
                try await db.scalar("SELECT lease_expires_at FROM loco_jobs WHERE id = \(held[worker]!)", as: Date.self)
            }
            let before = (alive: try await lease("alive"), unlisted: try await lease("unlisted"))
            let cut = try await store.cutOrphanedLeases(grace: .seconds(2), on: db.client)
            #expect(cut.map(\.id) == [held["dead"]!])
            #expect(cut.map(\.worker) == ["dead"])
            #expect(try await db.scalar("SELECT lease_expires_at <= now() + interval '2 seconds' FROM loco_jobs WHERE id = \(held["dead"]!)", as: Bool.self))
            #expect(try await lease("alive") == before.alive)
            #expect(try await lease("unlisted") == before.unlisted)
            // Cutting again changes nothing: the lease is already that short.
            #expect(try await store.cutOrphanedLeases(grace: .seconds(2), on: db.client).isEmpty)
            // A gone worker stays listed while it holds a running job, and for the age given.
            #expect(try await store.forgetGoneWorkers(olderThan: .zero, on: db.client) == 0)
            _ = try await db.client.query("UPDATE loco_jobs SET state = 'completed', finalized_at = now() WHERE id = \(held["dead"]!)")
            #expect(try await store.forgetGoneWorkers(olderThan: .seconds(3600), on: db.client) == 0)
            #expect(try await store.forgetGoneWorkers(olderThan: .zero, on: db.client) == 1)
            #expect(try await db.scalar("SELECT count(*) FROM loco_workers", as: Int64.self) == 1)

            // A second process with the same worker id cannot take the lock: the id is unlisted,
            // so its jobs wait out their leases rather than being cut while the first one lives.
            let duplicate = ReconnectingConnection(url: db.url, logger: db.logger)
            #expect(try await !store.announcePresence(worker: "alive", on: duplicate))
            #expect(try await db.scalar("SELECT count(*) FROM loco_workers WHERE id = 'alive'", as: Int64.self) == 0)
            await alive.close()
            await duplicate.close()
        }
    }

    @Test("a worker on a database without the presence table (not migrated yet) still rescues expired leases")
    func rescueWithoutPresenceTable() async throws {
        try await TestDatabase.with(migrations: [(QueueSchema.component, Array(QueueSchema.migrations.prefix(3)))]) { db in
            var handlers = JobHandlers()
            handlers.register(kind: "test.ok") { _, _ in }
            let job = try await db.store.enqueue(NewJob(queue: "default", kind: "test.ok"), on: db.client)
            // A worker that died holding it, long ago.
            _ = try await db.store.claim(queue: "default", limit: 1, worker: "ghost", lease: .seconds(1), on: db.client)
            // Every rescue pass then also looks for dead workers, as with the default 2 s.
            var configuration = fastConfiguration([("default", 1)])
            configuration.rescueInterval = .milliseconds(1500)
            try await db.withWorker(configuration, handlers: handlers) { _ in
                let done = try await db.wait(for: job.id, toBe: .completed)
                #expect(done.errors.map(\.code) == ["lease_expired"])
            }
        }
    }

    @Test("on a database without the unique-periods table (migration 9 not applied), a period key is a coded error naming the table and 'locod migrate'; everything else still enqueues and reads; the store's operations report PostgreSQL's errors as DatabaseServerError")
    func uniquePeriodsWithoutTheirTable() async throws {
        try await TestDatabase.with(migrations: [(QueueSchema.component, Array(QueueSchema.migrations.prefix(8)))]) { db in
            let store = db.store
            #expect(try await db.scalar("SELECT to_regclass('loco_unique_periods') IS NULL", as: Bool.self) == true)
            let parent = try await store.enqueue(NewJob(queue: "old", kind: "test.k"), on: db.client)
            for dependsOn in [[], [parent.id]] {
                let error = await #expect(throws: (any Error).self) {
                    try await store.enqueue(NewJob(queue: "old", kind: "test.k", uniqueKey: "digest", uniqueFor: .seconds(60), dependsOn: dependsOn), on: db.client)
                }
                let coded = try #require(error as? any CodedError, "\(String(describing: error))")
                #expect(coded.code == "database_error", "\(coded)")
                #expect(coded.message.contains("loco_unique_periods"), "\(coded.message)")
                #expect(coded.hint.contains("locod migrate"), "\(coded.hint)")
            }
            // The failed enqueues left nothing behind; the rest of the queue works as before.
            #expect(try await db.scalar("SELECT count(*) FROM loco_jobs", as: Int64.self) == 1)
            let child = try await store.enqueue(NewJob(queue: "old", kind: "test.k", dependsOn: [parent.id]), on: db.client)
            #expect(child.state == .blocked, "\(child)")
            let live = try await store.enqueue(NewJob(queue: "old", kind: "test.k", uniqueKey: "digest"), on: db.client)
            let again = try await store.enqueue(NewJob(queue: "old", kind: "test.k", uniqueKey: "digest"), on: db.client)
            #expect(!live.duplicate && again.duplicate && again.id == live.id, "\(live) \(again)")
            #expect(try await store.job(id: live.id, withPeriodKey: true, on: db.client)?.uniqueKey == "digest")
            let listed = try await store.list(queue: "old", withPeriodKeys: true, on: db.client)
            #expect(listed.map(\.id) == [live.id, child.id, parent.id], "\(listed.map(\.id))")

            // A batch in one statement is coded the same way (here with no jobs table at all).
            _ = try await db.client.query("ALTER TABLE loco_jobs RENAME TO loco_jobs_elsewhere")
            let batchError = await #expect(throws: (any Error).self) {
                try await store.enqueueMany(Array(repeating: NewJob(queue: "old", kind: "test.k"), count: 3), on: db.client)
            }
            let server = try #require(batchError as? DatabaseServerError, "\(String(describing: batchError))")
            #expect(server.sqlState == "42P01" && server.message.contains("loco_jobs"), "\(server.message)")
            // So is every other operation of the store (here: cancel, list, stats, retry).
            func expectCoded(_ what: String, _ operation: () async throws -> Void) async {
                let error = await #expect(throws: (any Error).self, "\(what)") { try await operation() }
                #expect((error as? DatabaseServerError)?.code == "database_error", "\(what): \(String(describing: error))")
            }
            await expectCoded("cancel") { _ = try await store.cancel(id: live.id, on: db.client) }
            await expectCoded("list") { _ = try await store.list(on: db.client) }
            await expectCoded("stats") { _ = try await store.stats(on: db.client) }
            await expectCoded("retry") { try await store.retry(id: live.id, on: db.client) }
        }
    }

    @Test("a job rescued from an expired lease waits by its kind's retry policy when the rescuer knows the kind, else by the worker's")
    func rescueByKindPolicy() async throws {
        try await TestDatabase.with { db in
            var handlers = JobHandlers()
            handlers.register(kind: "test.quick-rescue", retry: RetryPolicy(base: .zero, cap: .zero)) { _, _ in }
            handlers.register(kind: "test.worker-rescue") { _, _ in }
            let quick = try await db.store.enqueue(NewJob(queue: "default", kind: "test.quick-rescue"), on: db.client)
            let slow = try await db.store.enqueue(NewJob(queue: "default", kind: "test.worker-rescue"), on: db.client)
            // A worker that died holding both.
            _ = try await db.store.claim(queue: "default", limit: 2, worker: "ghost", lease: .seconds(1), on: db.client)
            var configuration = fastConfiguration([("default", 2)], workerID: "w-rescue-kind")
            // The worker's own backoff: up to an hour after a lost lease.
            configuration.retry = RetryPolicy(base: .seconds(3600), cap: .seconds(3600))
            try await db.withWorker(configuration, handlers: handlers) { _ in
                // Its kind waits nothing: rescued and run again at once, not within the hour.
                let done = try await db.wait(for: quick.id, toBe: .completed)
                #expect(done.errors.map(\.code) == ["lease_expired"])
                let waiting = try await db.wait(for: slow.id, toBe: .scheduled)
                #expect(waiting.errors.map(\.code) == ["lease_expired"])
                let wait = waiting.runAt.timeIntervalSince(try #require(waiting.errors.last).at)
                #expect(wait >= 0 && wait <= 3601, "\(wait)")
            }
        }
    }

    @Test("a job held under a worker's name that it never started (a claim whose answer was lost) runs again within two heartbeats of a failed claim, not when its lease ends")
    func strayClaimReleased() async throws {
        try await TestDatabase.with { db in
            var handlers = JobHandlers()
            handlers.register(kind: "test.ok") { _, _ in }
            // What a claim that committed without its answer reaching the worker leaves: the job
            // running under the worker's name, for a whole lease, and not in the worker's hands.
            let stray = try await db.store.enqueue(NewJob(queue: "default", kind: "test.ok"), on: db.client)
            _ = try await db.store.claim(queue: "default", limit: 1, worker: "w-stray", lease: .seconds(3600), on: db.client)
            var configuration = fastConfiguration([("default", 2)], workerID: "w-stray")
            configuration.heartbeatInterval = .milliseconds(500)
            try await db.withWorker(configuration, handlers: handlers) { worker in
                // While its claims answer, the worker leaves the job alone: nothing says its claim
                // was lost (a second process with the same id could hold it). Watched until the job
                // is past the 5 s age a stray needs, and two looks more.
                try await Task.sleep(for: .seconds(7))
                let untouched = try await db.store.job(id: stray.id, on: db.client)
                #expect(untouched?.state == .running && untouched?.lockedBy == "w-stray")
                // A claim fails: the producer's statement cannot find the pause table until one has
                // (a fixed pause once saw no claim at all under the whole suite's load).
                _ = try await db.client.query("ALTER TABLE loco_queue_pauses RENAME TO loco_queue_pauses_away")
                let failed = await eventually(timeout: .seconds(20)) { worker.shared.ledger.hadUnansweredClaim(within: .seconds(60)) }
                _ = try await db.client.query("ALTER TABLE loco_queue_pauses_away RENAME TO loco_queue_pauses")
                #expect(failed, "no claim failed while the pause table was away")
                let done = try await db.wait(for: stray.id, toBe: .completed, timeout: .seconds(30))
                #expect(done.errors.map(\.code) == ["lease_expired"])
                #expect(done.attempt == 2)
            }
        }
    }

    @Test("presence: a worker whose database session is killed takes its presence lock again and keeps its job")
    func presenceAfterLostSession() async throws {
        try await TestDatabase.with { db in
            var handlers = JobHandlers()
            // The job outlasts the orphan grace, so a worker that did not take its lock again and
            // renew would lose it to the rescuer. The grace is longer than the 5 s the lock may take
            // to come back below: with 3 s, the lease ran out once in a full CI run.
            handlers.register(kind: "test.long") { _, _ in try await Task.sleep(for: .seconds(9)) }
            let job = try await db.store.enqueue(NewJob(queue: "default", kind: "test.long"), on: db.client)
            var configuration = fastConfiguration([("default", 2)], workerID: "w-presence")
            configuration.orphanGrace = .seconds(6)
            let presence = """
                SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted
                AND classid = \(JobStore.presenceLockClass)::int4::oid AND objid = hashtext('w-presence')::oid
                AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
                """
            try await db.withWorker(configuration, handlers: handlers) { _ in
                _ = try await db.wait(for: job.id, toBe: .running)
                var first: Int32?
                #expect(await eventually { first = try? await db.scalar(PostgresQuery(unsafeSQL: presence), as: Int32.self); return first != nil })
                _ = try await db.scalar("SELECT pg_terminate_backend(\(try #require(first)))", as: Bool.self)
                // The heartbeat notices its new session within half a second and takes the lock again.
                #expect(await eventually(timeout: .seconds(5)) {
                    guard let again = try? await db.scalar(PostgresQuery(unsafeSQL: presence), as: Int32.self) else { return false }
                    return again != first
                })
                let done = try await db.wait(for: job.id, toBe: .completed)
                #expect(done.attempt == 1)
                #expect(done.errors.isEmpty)
            }
        }
    }

    @Test("forgetting a run whose outcome was written leaves the job's next run held")
    func nextAttemptBeforeAccounting() {
        let ledger = JobLedger()
        let first = ledger.add(id: 7, attempt: 1, queue: "default")
        ledger.markFinishing(7)
        // The retry was due at once: the job is claimed for attempt 2 before the completer,
        // having written attempt 1's outcome, forgets that run.
        let second = ledger.add(id: 7, attempt: 2, queue: "default")
        ledger.remove([(id: Int64(7), run: first)])
        #expect(ledger.count == 1)
        #expect(ledger.runningCount == 1)
        // The second run's timer (or a cancel, or the heartbeat) still reaches it.
        #expect(ledger.stop(7, run: second, reason: .timedOut(.milliseconds(300))))
        #expect(ledger.stopReason(of: 7) == .timedOut(.milliseconds(300)))
        ledger.markFinishing(7)
        ledger.remove([(id: Int64(7), run: second)])
        #expect(ledger.count == 0)
    }

    @Test("a heartbeat's answer about one run does not stop the job's next run, of the next attempt or (after a snooze) the same one", arguments: [2, 1])
    func staleHeartbeatAnswer(nextAttempt: Int) {
        let ledger = JobLedger()
        ledger.add(id: 7, attempt: 1, queue: "default")
        let sent = ledger.held()
        // The run finishes (retried, or snoozed, which gives its attempt back) and the job comes
        // back while the heartbeat is out; the heartbeat found it no longer running.
        ledger.markFinishing(7)
        ledger.remove(sent.map { ($0.id, $0.run) })
        let next = ledger.add(id: 7, attempt: nextAttempt, queue: "default")
        for job in sent {
            #expect(!ledger.stop(job.id, run: job.run, reason: .leaseLost))
        }
        #expect(ledger.stopReason(of: 7) == nil)
        #expect(ledger.runningCount == 1)
        // A late written outcome of the first run does not forget the next one either.
        ledger.remove(sent.map { ($0.id, $0.run) })
        #expect(ledger.held() == [JobLedger.Run(id: 7, attempt: nextAttempt, run: next)])
        // The same answer about the run it sent still stops it.
        #expect(ledger.stop(7, run: next, reason: .leaseLost))
        #expect(ledger.stopReason(of: 7) == .leaseLost)
    }

    @Test("a stale worker whose lease was taken over cannot complete, fail or renew the job")
    func fencing() async throws {
        try await TestDatabase.with { db in
            let store = db.store
            let job = try await store.enqueue(NewJob(queue: "default", kind: "test.fence"), on: db.client)
            let stale = try await store.claim(queue: "default", limit: 1, worker: "stale", lease: .seconds(30), on: db.client)
            #expect(stale.map(\.id) == [job.id])
            // The stale worker goes quiet; its lease runs out and the rescuer hands the job on.
            try await db.client.query("UPDATE loco_jobs SET lease_expires_at = now() - interval '1 second' WHERE id = \(job.id)")
            let rescued = try await store.rescueExpired(limit: 10, retry: RetryPolicy(base: .milliseconds(1), cap: .milliseconds(1)), on: db.client)
            #expect(rescued.map(\.id) == [job.id])
            #expect(rescued.first?.state == .scheduled)
            try await Task.sleep(for: .milliseconds(10))
            #expect(try await store.promoteDue(limit: 10, on: db.client) == 1)
            let fresh = try await store.claim(queue: "default", limit: 1, worker: "fresh", lease: .seconds(30), on: db.client)
            #expect(fresh.first?.attempt == 2)

            let staleAttempt = stale[0].attempt
            #expect(try await store.record([JobOutcome(id: job.id, attempt: staleAttempt, state: .completed)], worker: "stale", on: db.client).isEmpty)
            #expect(try await store.record([JobOutcome(id: job.id, attempt: staleAttempt, state: .failed)], worker: "stale", on: db.client).isEmpty)
            #expect(try await store.heartbeat([(job.id, staleAttempt)], worker: "stale", lease: .seconds(30), on: db.client).isEmpty)
            // Even the right worker name with the old attempt number is refused.
            #expect(try await store.record([JobOutcome(id: job.id, attempt: staleAttempt, state: .completed)], worker: "fresh", on: db.client).isEmpty)
            #expect(try await db.state(of: job.id) == .running)

            #expect(try await store.record([JobOutcome(id: job.id, attempt: 2, state: .completed)], worker: "fresh", on: db.client) == [job.id: .completed])
            let done = try #require(try await store.job(id: job.id, on: db.client))
            #expect(done.state == .completed)
            #expect(done.lockedBy == "fresh")
            #expect(done.errors.map(\.code) == ["lease_expired"])
            #expect(done.errors.first?.worker == "stale")

            // Written again (its first answer lost with the connection): known as written by the
            // fresh worker, never by the stale one.
            let again = JobOutcome(id: job.id, attempt: 2, queue: "default", state: .completed)
            #expect(try await store.record([again], worker: "fresh", on: db.client).isEmpty)
            #expect(try await store.alreadyRecorded([again], worker: "fresh", on: db.client) == [job.id: .completed])
            #expect(try await store.alreadyRecorded([again], worker: "stale", on: db.client).isEmpty)
            #expect(try await store.alreadyRecorded([JobOutcome(id: job.id, attempt: staleAttempt, state: .completed)], worker: "fresh", on: db.client).isEmpty)
            // The completer retrying it does not report a lost lease.
            let log = CapturedLog()
            let ledger = JobLedger()
            let connection = ReconnectingConnection(url: db.url, logger: db.logger)
            let completer = Completer(database: connection, store: store, ledger: ledger, metrics: QueueMetrics(), worker: "fresh",
                                      logger: Logger(label: "test") { _ in log })
            var outcome = again
            outcome.run = ledger.add(id: job.id, attempt: 2, queue: "default")
            completer.submit(outcome)
            let stopping = OneShotEvent()
            let running = Task { await completer.run(stopping: stopping, activity: PartActivity(part: "completer")) }
            #expect(await eventually { ledger.count == 0 })
            stopping.set()
            await running.value
            #expect(!log.messages.contains { $0.hasPrefix("dropped the result") }, "\(log.messages)")
            #expect(log.messages.contains("the result of job \(job.id) was written before; its answer was lost with the connection"), "\(log.messages)")
        }
    }

    @Test("a claim that writes earlier outcomes: one statement, fenced like any record, prepared or not")
    func claimAndRecord() async throws {
        try await TestDatabase.with { db in
            let store = db.store
            for prepare in [true, false] {
                let queue = prepare ? "carry" : "carry-unprepared"
                let connection = ReconnectingConnection(url: db.url, logger: db.logger, usePreparedStatements: prepare)
                let ids = try await store.enqueueMany(Array(repeating: NewJob(queue: queue, kind: "test.carry"), count: 6), on: db.client).map(\.id)
                let first = try await store.claim(queue: queue, limit: 3, worker: "w", lease: .seconds(30), on: connection)
                #expect(first.map(\.id) == Array(ids[0..<3]))
                let error = #"{"attempt":1,"at":"2026-12-02T00:00:00Z","worker":"w","class":"retryable","code":"busy","message":"try later"}"#
                let outcomes = [
                    JobOutcome(id: ids[0], attempt: 1, state: .completed),
                    JobOutcome(id: ids[1], attempt: 1, state: .scheduled, delaySeconds: 60, errorJSON: error),
                    // A stale attempt: dropped, as `record` drops it.
                    JobOutcome(id: ids[2], attempt: 7, state: .completed),
                ]
                let (next, recorded) = try await store.claim(queue: queue, limit: 3, worker: "w", lease: .seconds(30),
                                                             recording: outcomes, on: connection)
                #expect(next.map(\.id) == Array(ids[3..<6]))
                #expect(next.allSatisfy { $0.attempt == 1 && $0.kind == "test.carry" && $0.args == "{}" && !$0.hasDependents })
                #expect(recorded == [ids[0]: .completed, ids[1]: .scheduled])
                #expect(try await db.state(of: ids[0]) == .completed)
                let retried = try #require(try await store.job(id: ids[1], on: db.client))
                #expect(retried.state == .scheduled)
                #expect(retried.errors.map(\.code) == ["busy"])
                #expect(retried.lockedBy == nil)
                #expect(try await db.state(of: ids[2]) == .running)
                // Another worker's name writes nothing, and an empty queue still answers the outcomes.
                let (none, foreign) = try await store.claim(queue: queue, limit: 3, worker: "other", lease: .seconds(30),
                                                            recording: [JobOutcome(id: ids[2], attempt: 1, state: .completed)], on: connection)
                #expect(none.isEmpty && foreign.isEmpty)
                let (empty, own) = try await store.claim(queue: queue, limit: 3, worker: "w", lease: .seconds(30),
                                                         recording: [JobOutcome(id: ids[2], attempt: 1, state: .completed)], on: connection)
                #expect(empty.isEmpty)
                #expect(own == [ids[2]: .completed])
                await connection.close()
            }
        }
    }

    @Test("a claim that writes outcomes waits for an outcome's row before it claims anything, so a transaction holding that row and then locking a queued job does not deadlock with it")
    func claimAndRecordLockOrder() async throws {
        try await TestDatabase.with { db in
            let store = db.store
            let ids = try await store.enqueueMany(Array(repeating: NewJob(queue: "order", kind: "test.order"), count: 2), on: db.client).map(\.id)
            let running = try #require(try await store.claim(queue: "order", limit: 1, worker: "w", lease: .seconds(30), on: db.client).first?.id)
            let queued = try #require(ids.first { $0 != running })
            let producer = ReconnectingConnection(url: db.url, logger: db.logger)
            // Closed on every path: PostgresNIO traps on a connection released unclosed, which
            // would end the whole test process on a failure here rather than report it.
            func claimBesideHolder() async throws -> ([ClaimedJob], [Int64: JobState]) {
                let claiming = try await db.client.transaction { holder in
                    _ = try await holder.run("SELECT 1 FROM loco_jobs WHERE id = \(running) FOR UPDATE", logger: db.logger)
                    let claiming = Task {
                        try await store.claim(queue: "order", limit: 1, worker: "w", lease: .seconds(30),
                                              recording: [JobOutcome(id: running, attempt: 1, state: .completed)], on: producer)
                    }
                    let waiting = try await eventually(timeout: .seconds(20), every: .milliseconds(20)) {
                        try await db.scalar("""
                            SELECT count(*) FROM pg_stat_activity
                            WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE '%recorded%'
                            """, as: Int64.self) == 1
                    }
                    #expect(waiting, "the claim never waited for the outcome's row")
                    // Had the claim locked the queued job before it waited, this would wait for it
                    // in turn, and PostgreSQL would end one of the two as a deadlock.
                    _ = try await holder.run("SELECT 1 FROM loco_jobs WHERE id = \(queued) FOR UPDATE", logger: db.logger)
                    return claiming
                }
                return try await claiming.value
            }
            let outcome: Result<([ClaimedJob], [Int64: JobState]), any Error>
            do { outcome = .success(try await claimBesideHolder()) } catch { outcome = .failure(error) }
            await producer.close()
            let (jobs, recorded) = try outcome.get()
            #expect(recorded == [running: .completed])
            #expect(jobs.map(\.id) == [queued])
        }
    }

    @Test("a busy pool's outcomes ride on its next claim and none are left waiting when the queue empties, with a 30 s poll")
    func busyPoolCarriesOutcomes() async throws {
        try await TestDatabase.with { db in
            let runs = Tally<Int64>()
            var handlers = JobHandlers()
            handlers.register(kind: "test.carried") { _, context in
                try await Task.sleep(for: .milliseconds(20))
                runs.record(context.id)
            }
            var configuration = fastConfiguration([("carried", 3)])
            // Outcomes left behind would wait for a poll; this one would come after the test's wait.
            configuration.pollInterval = .seconds(30)
            try await db.withWorker(configuration, handlers: handlers) { worker in
                await worker.waitUntilListening()
                for round in 1...3 {
                    // Full claims (3 of 3), then claims that come back empty: the last outcomes
                    // must be written by the claim that finds nothing, not by a poll.
                    let ids = try await db.store.enqueueMany(Array(repeating: NewJob(queue: "carried", kind: "test.carried"), count: 9),
                                                             on: db.client).map(\.id)
                    let done = try await eventually(timeout: .seconds(20), every: .milliseconds(20)) {
                        try await db.scalar("SELECT count(*) FROM loco_jobs WHERE id = ANY(\(ids)) AND state = 'completed'", as: Int64.self) == 9
                    }
                    #expect(done, "round \(round): not every job was recorded completed within 20 s (a poll would take 30)")
                }
            }
            #expect(runs.snapshot.count == 27)
            #expect(runs.snapshot.values.allSatisfy { $0 == 1 })
        }
    }

    @Test("a heartbeat never waits for a job another transaction holds locked: it renews the rest and calls that one busy, not lost")
    func heartbeatSkipsLockedJobs() async throws {
        try await TestDatabase.with { db in
            let store = db.store
            _ = try await store.enqueueMany((0..<3).map { _ in NewJob(queue: "default", kind: "test.beat") }, on: db.client)
            let claimed = try await store.claim(queue: "default", limit: 3, worker: "w", lease: .seconds(5), on: db.client)
            let ids = claimed.map(\.id).sorted()
            #expect(ids.count == 3)
            let held = claimed.map { (id: $0.id, attempt: $0.attempt) }
            // Another session writes the first job's outcome and has not committed yet: the
            // completer, as a heartbeat runs. Then it goes on to the second job, which the
            // heartbeat has just renewed. A heartbeat that waited for the first lock while it
            // held the second deadlocked with it.
            let answer = try await db.client.transaction { completer in
                _ = try await completer.run("UPDATE loco_jobs SET errors = errors WHERE id = \(ids[0])", logger: db.logger)
                // The lock is held until this transaction ends, after the heartbeat: one that
                // waited for it would be let go only at the 30 s query deadline, with an error.
                // (A bound of 2 s failed once under the full suite's load, at 2.4 s.)
                let began = ContinuousClock.now
                let answer = try await store.heartbeat(held, worker: "w", lease: .seconds(60), on: db.client)
                #expect(ContinuousClock.now - began < .seconds(20))
                _ = try await completer.run("UPDATE loco_jobs SET errors = errors WHERE id = \(ids[1])", logger: db.logger)
                return answer
            }
            #expect(answer == [ids[0]: .busy, ids[1]: .renewed(cancelRequested: false), ids[2]: .renewed(cancelRequested: false)])
            let leases = try await db.client.query("SELECT id, lease_expires_at > now() + interval '30 seconds' FROM loco_jobs ORDER BY id")
            var renewed: [Int64: Bool] = [:]
            for try await (id, long) in leases.decode((Int64, Bool).self) { renewed[id] = long }
            #expect(renewed == [ids[0]: false, ids[1]: true, ids[2]: true])
            // With nothing locked, the next beat renews it, and a requested cancel is reported.
            try await db.client.query("UPDATE loco_jobs SET cancel_requested = true WHERE id = \(ids[2])")
            let next = try await store.heartbeat(held, worker: "w", lease: .seconds(60), on: db.client)
            #expect(next == [ids[0]: .renewed(cancelRequested: false), ids[1]: .renewed(cancelRequested: false), ids[2]: .renewed(cancelRequested: true)])
        }
    }

    @Test("two completers finishing parents of the same two fan-in children, in crossed orders, do not deadlock")
    func crossedFanInCompletions() async throws {
        try await TestDatabase.with { db in
            let store = db.store
            let completerA = ReconnectingConnection(url: db.url, logger: db.logger)
            let completerB = ReconnectingConnection(url: db.url, logger: db.logger)
            func lockWaiters() async throws -> Int64 {
                try await db.scalar("""
                    SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'
                    """, as: Int64.self)
            }
            // Worker a finishes parents p0 and p1, worker b p2 and p3; c's parents are p0 and p3,
            // d's p1 and p2. A completion settles its rows' dependents in the order it updated
            // the rows, ascending ids here, whatever the plan: by lease (made to rise with the
            // id), by the outcomes' order (sorted by id), or by place in the table (rewritten in
            // id order). So a reaches c first, b reaches d first, and each then needs the child
            // the other holds.
            let p = try await store.enqueueMany((0..<4).map { _ in NewJob(queue: "parents", kind: "test.parent") }, on: db.client).map(\.id).sorted()
            let c = try await store.enqueue(NewJob(queue: "children", kind: "test.child", dependsOn: [p[0], p[3]]), on: db.client)
            let d = try await store.enqueue(NewJob(queue: "children", kind: "test.child", dependsOn: [p[1], p[2]]), on: db.client)
            let a = try await store.claim(queue: "parents", limit: 2, worker: "a", lease: .seconds(60), on: db.client)
            let b = try await store.claim(queue: "parents", limit: 2, worker: "b", lease: .seconds(60), on: db.client)
            #expect(a.map(\.id) == [p[0], p[1]] && b.map(\.id) == [p[2], p[3]])
            #expect((a + b).allSatisfy { $0.hasDependents })
            for (rank, id) in p.enumerated() {
                try await db.client.query("UPDATE loco_jobs SET lease_expires_at = now() + make_interval(secs => \(Double(60 + rank))) WHERE id = \(id)")
            }
            // A third session holds c, so both completers line up for it, a first, then b
            // (which by then may hold d); when it lets go, a gets c.
            let (finishedA, finishedB) = try await db.client.transaction { holder in
                _ = try await holder.run("SELECT id FROM loco_jobs WHERE id = \(c.id) FOR UPDATE", logger: db.logger)
                let finishA = Task { try await store.record(a.map { JobOutcome(id: $0.id, attempt: $0.attempt, state: .completed, hasDependents: $0.hasDependents) }, worker: "a", on: completerA) }
                #expect(try await eventually { try await lockWaiters() == 1 })
                let finishB = Task { try await store.record(b.map { JobOutcome(id: $0.id, attempt: $0.attempt, state: .completed, hasDependents: $0.hasDependents) }, worker: "b", on: completerB) }
                #expect(try await eventually { try await lockWaiters() == 2 })
                return (finishA, finishB)
            }
            let (resultA, resultB) = (await finishedA.result, await finishedB.result)
            // Before the fix, one of the two failed here with PostgreSQL's deadlock_detected.
            #expect(try resultA.get() == [p[0]: .completed, p[1]: .completed])
            #expect(try resultB.get() == [p[2]: .completed, p[3]: .completed])
            #expect(try await db.state(of: c.id) == .available)
            #expect(try await db.state(of: d.id) == .available)
            // Jobs without dependents are written by the plain statement, which locks nothing first.
            let leaves = try await store.claim(queue: "children", limit: 2, worker: "e", lease: .seconds(60), on: db.client)
            #expect(leaves.count == 2 && !leaves.contains { $0.hasDependents })
            let finishedLeaves = try await store.record(leaves.map { JobOutcome(id: $0.id, attempt: $0.attempt, state: .completed) }, worker: "e", on: completerA)
            #expect(finishedLeaves.count == 2)
            var prepared: Set<String> = []
            for try await name in try await completerA.run("SELECT name FROM pg_prepared_statements", logger: db.logger).decode(String.self) {
                prepared.insert(name)
            }
            // The parents' completions woke their children's queue after committing, through the
            // connection's handler.
            #expect(prepared == [JobStatements.RecordLockingInIDOrder.name, JobStatements.Record.name, "loco_wake_up_wire"])
            await completerA.close()
            await completerB.close()
        }
    }

    @Test("transactional completion commits the handler's writes with the job, or neither")
    func transactionalCompletion() async throws {
        try await TestDatabase.with { db in
            try await db.client.query("CREATE TABLE results (job_id bigint PRIMARY KEY, digest text)")
            // How attempt 1's transactional completion ended: the test waits for this rather
            // than for a fixed time, which a loaded machine can outlast.
            let firstAttemptError = Mutex<String?>(nil)
            var handlers = JobHandlers()
            handlers.register(kind: "test.tx") { _, context in
                if context.attempt == 1 {
                    // Another worker takes the job over while this one is still working on it.
                    try await db.client.query("UPDATE loco_jobs SET locked_by = 'thief' WHERE id = \(context.id)")
                }
                do {
                    try await db.client.transaction { connection in
                        try await connection.query("INSERT INTO results VALUES (\(context.id), 'sha256:abc')", logger: context.logger)
                        try await context.complete(in: connection)
                    }
                } catch {
                    if context.attempt == 1 { firstAttemptError.withLock { $0 = (error as? QueueError)?.code ?? "\(error)" } }
                    throw error
                }
            }
            let job = try await db.store.enqueue(NewJob(queue: "default", kind: "test.tx"), on: db.client)
            try await db.withWorker(fastConfiguration([("default", 1)]), handlers: handlers) { _ in
                // Attempt 1 lost its lease inside its transaction and rolled back: no row, and
                // the job still belongs to the thief.
                #expect(try await eventually(timeout: .seconds(30)) { firstAttemptError.withLock { $0 } != nil })
                #expect(firstAttemptError.withLock { $0 } == "lease_lost")
                #expect(try await db.scalar("SELECT count(*) FROM results", as: Int64.self) == 0)
                #expect(try await db.state(of: job.id) == .running)
                #expect(try await db.store.job(id: job.id, on: db.client)?.lockedBy == "thief")
                // The rescuer later returns it; attempt 2 writes and completes atomically.
                try await db.client.query("UPDATE loco_jobs SET lease_expires_at = now() - interval '1 second' WHERE id = \(job.id)")
                let done = try await db.wait(for: job.id, toBe: .completed)
                #expect(done.attempt == 2)
            }
            #expect(try await db.scalar("SELECT count(*) FROM results WHERE job_id = \(job.id)", as: Int64.self) == 1)
        }
    }

    @Test("two schedulers on the same cron definition produce exactly one job per slot")
    func cronOncePerSlot() async throws {
        try await TestDatabase.with { db in
            let periodic = PeriodicJob(name: "tick", schedule: try CronSchedule("* * * * * *"), queue: "cron", kind: "test.tick")
            var handlers = JobHandlers()
            handlers.register(kind: "test.tick") { _, _ in }
            var first = fastConfiguration([("unused-a", 1)], workerID: "scheduler-a")
            first.periodicJobs = [periodic]
            var second = fastConfiguration([("unused-b", 1)], workerID: "scheduler-b")
            second.periodicJobs = [periodic]
            try await db.withWorker(first, handlers: handlers) { _ in
                try await db.withWorker(second, handlers: handlers) { _ in
                    // Both schedulers race for at least three slots. Waiting for them, not for a
                    // fixed 4.5 s: under the full suite's load two was all that time held once.
                    let ticks = "SELECT count(*) FROM loco_jobs WHERE kind = 'test.tick'"
                    #expect(try await eventually(timeout: .seconds(30), every: .milliseconds(100)) {
                        try await db.scalar(PostgresQuery(unsafeSQL: ticks), as: Int64.self) >= 3
                    })
                    try await Task.sleep(for: .milliseconds(1500))
                }
            }
            let keys = try await db.client.query("SELECT unique_key FROM loco_jobs WHERE kind = 'test.tick' ORDER BY unique_key")
            var slots: [String] = []
            for try await key in keys.decode(String.self) { slots.append(key) }
            #expect(slots.count >= 3)
            #expect(Set(slots).count == slots.count)
            let seconds = slots.compactMap { Int64($0.split(separator: ":").last ?? "") }.sorted()
            // No second twice. A second may be missing: slots that passed while no scheduler
            // ticked are caught up with one run, not one per slot (as Oban's and River's cron
            // do), and under the full suite's load on 2 cores both schedulers were seen to miss
            // one, so "every second" is not something this test can ask for.
            #expect(Set(seconds).count == seconds.count && seconds.count == slots.count)

            // Many callers racing for one slot (as system cron on several hosts would): one wins.
            let scheduler = PeriodicScheduler(store: db.store, logger: db.logger)
            let hourly = PeriodicJob(name: "hourly", schedule: try CronSchedule("@hourly"), queue: "cron", kind: "test.tick")
            let slot = hourly.schedule.slot(containing: Date())
            let winners = try await withThrowingTaskGroup(of: Int64?.self) { group in
                for _ in 0..<8 { group.addTask { try await scheduler.enqueue(hourly, slot: slot, database: db.client) } }
                return try await group.reduce(into: [Int64]()) { if let id = $1 { $0.append(id) } }
            }
            #expect(winners.count == 1)
        }
    }

    @Test("a schedule set, a pause and a resume at run time reach a running scheduler without a restart")
    func cronSettingsAtRunTime() async throws {
        try await TestDatabase.with { db in
            // Declared yearly: nothing of it runs during the test unless its schedule is changed.
            let declared = PeriodicJob(name: "settable", schedule: try CronSchedule("0 0 1 1 *"), queue: "cron", kind: "test.settable")
            var handlers = JobHandlers()
            handlers.register(kind: "test.settable") { _, _ in }
            var configuration = fastConfiguration([("unused", 1)], workerID: "scheduler-settings")
            configuration.periodicJobs = [declared]
            let count = "SELECT count(*) FROM loco_jobs WHERE kind = 'test.settable'"
            func enqueued() async throws -> Int64 { try await db.scalar(PostgresQuery(unsafeSQL: count), as: Int64.self) }
            /// The slots enqueued, from the jobs' unique keys (`cron:settable:<unix seconds>`).
            func slots() async throws -> [Date] {
                var found: [Date] = []
                for try await key in try await db.client.query("SELECT unique_key FROM loco_jobs WHERE kind = 'test.settable'").decode(String.self) {
                    if let seconds = key.split(separator: ":").last.flatMap({ Double($0) }) { found.append(Date(timeIntervalSince1970: seconds)) }
                }
                return found
            }
            try await db.withWorker(configuration, handlers: handlers) { _ in
                try await Task.sleep(for: .milliseconds(1500))
                #expect(try await enqueued() == 0)

                let everySecond = try CronSchedule("CRON_TZ=Europe/Berlin * * * * * *")
                let set = try await db.store.setCronSchedule(declared, to: everySecond, by: "test", on: db.client)
                #expect(set.schedule == everySecond.expression && set.changedBy == "test" && set.pausedAt == nil)
                #expect(try await eventually(timeout: .seconds(30), every: .milliseconds(100)) { try await enqueued() >= 2 })

                let paused = try await db.store.setCronPaused(declared, true, by: "test", on: db.client)
                #expect(paused.changed && paused.setting?.pausedAt != nil)
                #expect(try await db.store.setCronPaused(declared, true, by: nil, on: db.client).changed == false)
                let never = PeriodicJob(name: "never-changed", schedule: declared.schedule, queue: "cron", kind: "test.settable")
                let notPaused = try await db.store.setCronPaused(never, false, by: nil, on: db.client)
                #expect(!notPaused.changed && notPaused.setting == nil, "resuming what was never paused writes nothing")
                // A tick that read the settings just before the pause may still enqueue the slot it
                // was in, even late under load; no slot after the pause (and a margin) may appear.
                let pausedAt = try #require(paused.setting?.pausedAt)
                try await Task.sleep(for: .milliseconds(4500))
                #expect(try await slots().filter { $0 > pausedAt.addingTimeInterval(3) }.isEmpty, "enqueued while paused")
                let whilePaused = try await enqueued()

                let resumed = try await db.store.setCronPaused(declared, false, by: nil, on: db.client)
                #expect(resumed.changed && resumed.setting?.pausedAt == nil)
                #expect(try await eventually(timeout: .seconds(30), every: .milliseconds(100)) { try await enqueued() >= whilePaused + 2 })

                // Back to the declared yearly schedule: nothing more is enqueued.
                let reset = try await db.store.setCronSchedule(declared, to: nil, by: nil, on: db.client)
                try await Task.sleep(for: .milliseconds(4500))
                #expect(try await slots().filter { $0 > reset.updatedAt.addingTimeInterval(3) }.isEmpty, "enqueued after the reset")
            }
            // What /metrics shows of it: the newest slot enqueued, and no pause.
            let metrics = QueueMetrics()
            metrics.updatePeriodic(lastSlots: try await db.store.cronSlots(on: db.client), settings: try await db.store.cronSettings(on: db.client))
            let lastSlot = try #require(try await db.store.cronSlots(on: db.client)["settable"])
            #expect(metrics.render().contains(#"loco_queue_cron_last_slot_timestamp_seconds{name="settable"} \#(lastSlot.timeIntervalSince1970)"#), "\(metrics.render())")
            #expect(metrics.render().contains(#"loco_queue_cron_paused{name="settable"} 0"#))
            _ = try await db.store.setCronPaused(declared, true, by: nil, on: db.client)
            metrics.updatePeriodic(lastSlots: [:], settings: try await db.store.cronSettings(on: db.client))
            #expect(metrics.render().contains(#"loco_queue_cron_paused{name="settable"} 1"#), "\(metrics.render())")
            // Every slot once: the unique keys name distinct seconds.
            let keys = try await db.client.query("SELECT unique_key FROM loco_jobs WHERE kind = 'test.settable'")
            var slots: [String] = []
            for try await key in keys.decode(String.self) { slots.append(key) }
            #expect(Set(slots).count == slots.count && slots.allSatisfy { $0.hasPrefix("cron:settable:") })
        }
    }

    @Test("finished jobs are pruned in batches after their state's retention period; others stay")
    func prune() async throws {
        try await TestDatabase.with { db in
            func finish(_ jobs: [Int64], as state: JobState, hoursAgo: Int) async throws {
                try await db.client.query("""
                    UPDATE loco_jobs SET state = \(state.rawValue), finalized_at = now() - make_interval(secs => \(Double(hoursAgo * 3600))) WHERE id = ANY(\(jobs))
                    """)
            }
            let old = try await db.store.enqueueMany(Array(repeating: NewJob(queue: "default", kind: "test.old"), count: 2500), on: db.client)
            try await finish(old.map(\.id), as: .completed, hoursAgo: 2)
            let newer = try await db.store.enqueue(NewJob(queue: "default", kind: "test.newer"), on: db.client)
            try await finish([newer.id], as: .completed, hoursAgo: 0)
            let cancelled = try await db.store.enqueue(NewJob(queue: "default", kind: "test.cancelled"), on: db.client)
            try await finish([cancelled.id], as: .cancelled, hoursAgo: 2)
            // Failed jobs are kept longer: the 2-hour-old one stays, the 4-hour-old one goes.
            let failedRecently = try await db.store.enqueue(NewJob(queue: "default", kind: "test.failed"), on: db.client)
            try await finish([failedRecently.id], as: .failed, hoursAgo: 2)
            let failedLongAgo = try await db.store.enqueue(NewJob(queue: "default", kind: "test.failed"), on: db.client)
            try await finish([failedLongAgo.id], as: .failed, hoursAgo: 4)
            let live = try await db.store.enqueue(NewJob(queue: "waiting", kind: "test.live"), on: db.client)
            var configuration = fastConfiguration([("default", 1)])
            configuration.pruneInterval = .milliseconds(50)
            configuration.retention = Retention(completed: .seconds(3600), cancelled: .seconds(3600), failed: .seconds(3 * 3600))
            try await db.withWorker(configuration, handlers: JobHandlers()) { _ in
                let pruned = try await eventually { try await db.scalar("SELECT count(*) FROM loco_jobs", as: Int64.self) == 3 }
                #expect(pruned)
            }
            #expect(try await db.state(of: newer.id) == .completed)
            #expect(try await db.state(of: failedRecently.id) == .failed)
            #expect(try await db.state(of: live.id) == .available)
            #expect(Retention() == Retention(completed: .seconds(86_400), cancelled: .seconds(86_400), failed: .seconds(7 * 86_400)),
                    "River's defaults: a day, a day, a week")
        }
    }

    @Test("migrations run from several processes at once apply exactly once")
    func concurrentMigrations() async throws {
        try await TestDatabase.with(migrations: []) { db in
            let migrator = Migrator(database: db.client, logger: db.logger)
            let applied = try await withThrowingTaskGroup(of: [String].self) { group in
                for _ in 0..<6 { group.addTask { try await migrator.migrate([(QueueSchema.component, QueueSchema.migrations)]) } }
                return try await group.reduce(into: [String]()) { $0 += $1 }
            }
            #expect(applied == QueueSchema.migrations.map { "queue/\($0.version)_\($0.name)" })
            #expect(try await db.scalar("SELECT count(*) FROM loco_schema_migrations", as: Int64.self) == Int64(QueueSchema.migrations.count))
        }
    }

    @Test("upgrading the schema keeps the jobs already queued, with their dependencies")
    func upgradeKeepsJobs() async throws {
        try await TestDatabase.with(migrations: []) { db in
            let migrator = Migrator(database: db.client, logger: db.logger)
            _ = try await migrator.migrate([(QueueSchema.component, Array(QueueSchema.migrations.prefix(1)))])
            let parent = try await db.store.enqueue(NewJob(queue: "default", kind: "test.parent", maxAttempts: 3), on: db.client)
            let child = try await db.store.enqueue(NewJob(queue: "default", kind: "test.child", dependsOn: [parent.id]), on: db.client)
            _ = try await migrator.migrate([(QueueSchema.component, QueueSchema.migrations)])
            #expect(try await db.state(of: parent.id) == .available)
            #expect(try await db.state(of: child.id) == .blocked)
            var handlers = JobHandlers()
            handlers.register(kind: "test.parent") { _, _ in }
            handlers.register(kind: "test.child") { _, _ in }
            try await db.withWorker(fastConfiguration([("default", 2)]), handlers: handlers) { _ in
                _ = try await db.wait(for: child.id, toBe: .completed)
            }
            let stored = try #require(try await db.store.job(id: parent.id, on: db.client))
            #expect(stored.maxAttempts == 3)
        }
    }

    @Test("the table refuses an unknown state or an attempt limit out of range, whoever writes it")
    func schemaRules() async throws {
        try await TestDatabase.with { db in
            for (column, value) in [("state", "'finished'"), ("max_attempts", "0"), ("max_attempts", "1001")] {
                let values = column == "state" ? "(\(value), 10)" : "('available', \(value))"
                do {
                    let rows = try await db.client.run(PostgresQuery(unsafeSQL: """
                        INSERT INTO loco_jobs (queue, kind, state, max_attempts) SELECT 'default', 'test.raw', s, m FROM (VALUES \(values)) v(s, m)
                        """), logger: db.logger)
                    for try await _ in rows {}
                    Issue.record("\(column) = \(value) was accepted")
                } catch let error as PSQLError {
                    #expect(error.serverInfo?[.sqlState] == "23514", "\(column) = \(value): \(String(reflecting: error))")
                }
            }
            let fine = try await db.store.enqueue(NewJob(queue: "default", kind: "test.raw", maxAttempts: 1000), on: db.client)
            #expect(try await db.state(of: fine.id) == .available)
        }
    }

    @Test("an idle worker is woken by NOTIFY long before its poll interval")
    func notifyWakes() async throws {
        try await TestDatabase.with { db in
            var handlers = JobHandlers()
            handlers.register(kind: "test.ping") { _, _ in }
            var configuration = fastConfiguration([("default", 1)])
            configuration.pollInterval = .seconds(30)
            try await db.withWorker(configuration, handlers: handlers) { worker in
                await worker.waitUntilListening()
                let job = try await db.store.enqueue(NewJob(queue: "default", kind: "test.ping"), on: db.client)
                // Half the poll interval: only the notification can have woken it.
                try await db.wait(for: job.id, toBe: .completed, timeout: .seconds(15))
            }
        }
    }

    @Test("a completed job's dependent, released in another queue, wakes that queue's idle worker long before its poll interval")
    func notifyWakesDependents() async throws {
        try await TestDatabase.with { db in
            var handlers = JobHandlers()
            handlers.register(kind: "test.ping") { _, _ in }
            var configuration = fastConfiguration([("default", 1), ("second", 1)])
            configuration.pollInterval = .seconds(30)
            try await db.withWorker(configuration, handlers: handlers) { worker in
                await worker.waitUntilListening()
                let parent = try await db.store.enqueue(NewJob(queue: "default", kind: "test.ping", runAt: Date().addingTimeInterval(1)), on: db.client)
                let child = try await db.store.enqueue(NewJob(queue: "second", kind: "test.ping", dependsOn: [parent.id]), on: db.client)
                #expect(child.state == .blocked)
                // The parent waits a second to be due; then its completion, on the worker's
                // connection, wakes "second" once it has committed.
                try await db.wait(for: child.id, toBe: .completed, timeout: .seconds(15))
            }
        }
    }

    @Test("a paused queue starts nothing: its running job finishes, enqueues wait, and resume wakes the idle worker at once")
    func pauseAndResume() async throws {
        try await TestDatabase.with { db in
            let release = Mutex(false)
            var handlers = JobHandlers()
            handlers.register(kind: "test.hold") { _, _ in
                while !release.withLock({ $0 }) { try await Task.sleep(for: .milliseconds(10)) }
            }
            handlers.register(kind: "test.ping") { _, _ in }
            var configuration = fastConfiguration([("default", 2)])
            // Only a notification can wake the worker within this test's waits.
            configuration.pollInterval = .seconds(30)
            try await db.withWorker(configuration, handlers: handlers) { worker in
                await worker.waitUntilListening()
                let held = try await db.store.enqueue(NewJob(queue: "default", kind: "test.hold"), on: db.client)
                try await db.wait(for: held.id, toBe: .running)

                let pause = try await db.store.pause(queue: "default", by: "ann: registry down", on: db.client)
                #expect(!pause.wasPaused && pause.pausedBy == "ann: registry down")
                let again = try await db.store.pause(queue: "default", by: "bob", on: db.client)
                #expect(again.wasPaused && again.pausedAt == pause.pausedAt && again.pausedBy == "ann: registry down", "the first pause stands")
                await #expect(throws: QueueError.invalidQueueName("Bad Queue")) { try await db.store.pause(queue: "Bad Queue", by: nil, on: db.client) }

                // Each enqueue notifies the worker, which has a free slot, and still claims nothing.
                var pings: [Int64] = []
                for _ in 0..<3 { pings.append(try await db.store.enqueue(NewJob(queue: "default", kind: "test.ping"), on: db.client).id) }
                release.withLock { $0 = true }
                _ = try await db.wait(for: held.id, toBe: .completed)
                try await Task.sleep(for: .seconds(1))
                for id in pings { #expect(try await db.state(of: id) == .available) }
                let stats = try await db.store.stats(on: db.client)
                #expect(stats.queues.first { $0.name == "default" }?.pausedAt == pause.pausedAt)
                let metrics = QueueMetrics()
                metrics.update(from: stats)
                #expect(metrics.render().contains(#"loco_queue_paused{queue="default"} 1"#), "\(metrics.render())")

                #expect(try await db.store.resume(queue: "default", on: db.client))
                #expect(try await !db.store.resume(queue: "default", on: db.client), "resuming twice is a no-op")
                for id in pings { _ = try await db.wait(for: id, toBe: .completed, timeout: .seconds(60)) }
                #expect(try await db.store.pausedQueues(on: db.client).isEmpty)
            }
        }
    }

    @Test("a queue scaled at run time: a running worker applies it at once, a worker's own scale beats the one for every worker, reset returns to --concurrency")
    func queueScale() async throws {
        try await TestDatabase.with { db in
            let probe = ConcurrencyProbe()
            let handlers = probe.handlers
            func phase(_ jobs: Int = 12, expecting target: Int) async throws -> Int { try await probe.most(running: jobs, target: target, on: db) }
            // Set before the worker starts, with jobs waiting: read as it starts, and before its
            // first claim (which, sent as the worker connected, once took 5 jobs at once).
            _ = try await db.store.scale(queue: "default", to: 2, by: "ann: registry slow", on: db.client)
            let backlog = try await probe.enqueue(12, target: 2, on: db)
            var configuration = fastConfiguration([("default", 5)], workerID: "w-scale")
            // Only the notification can bring a change within the test: the periodic read is a minute away.
            configuration.scaleCheckInterval = .seconds(60)
            try await db.withWorker(configuration, handlers: handlers) { worker in
                await worker.waitUntilListening()
                let atStart = try await probe.most(among: backlog, on: db)
                #expect(atStart == 2)
                #expect(worker.pools["default"]?.concurrency == 2)
                let atTwo = try await phase(expecting: 2)
                #expect(atTwo == 2)
                #expect(worker.shared.metrics.render().contains(#"loco_queue_concurrency{queue="default"} 2"#))
                // Its own scale beats the one for every worker; another worker's does nothing here.
                _ = try await db.store.scale(queue: "default", to: 3, worker: "w-scale", on: db.client)
                _ = try await db.store.scale(queue: "default", to: 1, worker: "w-other", on: db.client)
                #expect(await eventually { worker.pools["default"]?.concurrency == 3 })
                let atThree = try await phase(expecting: 3)
                #expect(atThree == 3)
                // Without its own, the one for every worker again; without either, --concurrency.
                #expect(try await db.store.resetScale(queue: "default", worker: "w-scale", on: db.client))
                #expect(await eventually { worker.pools["default"]?.concurrency == 2 })
                #expect(try await db.store.resetScale(queue: "default", on: db.client))
                #expect(await eventually { worker.pools["default"]?.concurrency == 5 })
                let atFive = try await phase(15, expecting: 5)
                #expect(atFive == 5)
                #expect(try await !db.store.resetScale(queue: "default", on: db.client))
            }
            #expect(try await db.store.queueScales(on: db.client).map { "\($0.queue) \($0.worker ?? "*") \($0.concurrency)" } == ["default w-other 1"])
            // Out of range or unnamed: refused, nothing stored.
            for (concurrency, worker) in [(0, nil), (10_001, nil), (2, "")] as [(Int, String?)] {
                await #expect(throws: QueueError.self) { try await db.store.scale(queue: "default", to: concurrency, worker: worker, on: db.client) }
            }
            await #expect(throws: QueueError.self) { try await db.store.scale(queue: "no such queue!", to: 2, on: db.client) }
            #expect(try await db.store.queueScales(on: db.client).count == 1)
        }
    }

    @Test("a queue's limit across workers: two workers of concurrency 2 run at most 3 of its jobs at once between them (not 4), both take part, and removing the limit frees them")
    func queueGlobalLimit() async throws {
        try await TestDatabase.with { db in
            let probe = ConcurrencyProbe()
            let handlers = probe.handlers
            func phase(_ jobs: Int, expecting target: Int) async throws -> Int { try await probe.most(running: jobs, target: target, on: db) }
            _ = try await db.store.limit(queue: "default", to: 3, by: "ann: one registry", on: db.client)
            // Concurrency 2 each: 3 at once takes both workers, so the phase below waits for the
            // second one to claim under the limit (with 4 each, one worker could hold all 3 slots
            // and the other take part only by the luck of its rechecks: a run once saw it take none).
            try await db.withWorker(fastConfiguration([("default", 2)], workerID: "w-limit-a"), handlers: handlers) { (a: QueueWorker) async throws -> Void in
                try await db.withWorker(fastConfiguration([("default", 2)], workerID: "w-limit-b"), handlers: handlers) { (b: QueueWorker) async throws -> Void in
                    await a.waitUntilListening()
                    await b.waitUntilListening()
                    #expect(await eventually { a.pools["default"]?.globalLimit == 3 && b.pools["default"]?.globalLimit == 3 })
                    // Stats and /metrics show it.
                    let stats = try await db.store.stats(on: db.client, includingFinished: false)
                    #expect(stats.queues.first { $0.name == "default" }?.globalLimit == 3)
                    let metrics = QueueMetrics()
                    metrics.update(from: stats)
                    #expect(metrics.render().contains(#"loco_queue_global_limit{queue="default"} 3"#))
                    let limited = try await phase(12, expecting: 3)
                    #expect(limited == 3)
                    // Both took part: the limit is shared, not one worker's.
                    #expect(try await db.scalar("SELECT count(DISTINCT locked_by) FROM loco_jobs WHERE state = 'completed'", as: Int64.self) == 2)
                    #expect(try await db.store.removeLimit(queue: "default", on: db.client))
                    #expect(await eventually { a.pools["default"]?.globalLimit == nil && b.pools["default"]?.globalLimit == nil })
                    #expect(try await db.store.stats(on: db.client, includingFinished: false).queues.first { $0.name == "default" }?.globalLimit == nil)
                    let unlimited = try await phase(12, expecting: 4)
                    #expect(unlimited == 4)
                    #expect(try await !db.store.removeLimit(queue: "default", on: db.client))
                }
            }
            await #expect(throws: QueueError.self) { try await db.store.limit(queue: "default", to: 0, on: db.client) }
            #expect(try await db.store.queueLimits(on: db.client).isEmpty)
        }
    }

    @Test("a worker that missed the notification applies a scale at its next periodic read")
    func queueScalePolled() async throws {
        try await TestDatabase.with { db in
            var configuration = fastConfiguration([("default", 4)], workerID: "w-scale-poll")
            configuration.pollOnly = true
            configuration.scaleCheckInterval = .milliseconds(300)
            try await db.withWorker(configuration, handlers: JobHandlers()) { worker in
                // Read at start or at a periodic read: either way, the next change needs a periodic read.
                _ = try await db.store.scale(queue: "default", to: 3, on: db.client)
                #expect(await eventually(timeout: .seconds(60)) { worker.pools["default"]?.concurrency == 3 })
                _ = try await db.store.scale(queue: "default", to: 7, on: db.client)
                #expect(await eventually(timeout: .seconds(60)) { worker.pools["default"]?.concurrency == 7 })
            }
        }
    }

    @Test("poll-only mode (for PgBouncer) runs jobs without LISTEN")
    func pollOnly() async throws {
        try await TestDatabase.with { db in
            var handlers = JobHandlers()
            handlers.register(kind: "test.ping") { _, _ in }
            var configuration = fastConfiguration([("default", 2)])
            configuration.pollOnly = true
            configuration.pollInterval = .milliseconds(100)
            try await db.withWorker(configuration, handlers: handlers) { _ in
                let job = try await db.store.enqueue(NewJob(queue: "default", kind: "test.ping"), on: db.client)
                try await db.wait(for: job.id, toBe: .completed, timeout: .seconds(60))
            }
        }
    }

    @Test("shutdown lets running jobs finish within the grace period and releases the rest")
    func gracefulShutdown() async throws {
        try await TestDatabase.with { db in
            var handlers = JobHandlers()
            handlers.register(kind: "test.short") { _, _ in try await Task.sleep(for: .milliseconds(300)) }
            handlers.register(kind: "test.endless") { _, _ in try await Task.sleep(for: .seconds(120)) }
            let short = try await db.store.enqueue(NewJob(queue: "default", kind: "test.short"), on: db.client)
            let endless = try await db.store.enqueue(NewJob(queue: "default", kind: "test.endless"), on: db.client)
            var configuration = fastConfiguration([("default", 2)], workerID: "w-shutdown")
            configuration.gracePeriod = .seconds(1)
            configuration.runMaintenance = false
            let stopAsked = try await db.withWorker(configuration, handlers: handlers) { _ in
                try await db.wait(for: short.id, toBe: .running)
                try await db.wait(for: endless.id, toBe: .running)
                return ContinuousClock.now
            }
            // From the stop, not the start: a CI run's load once made start and claims take most of
            // the old 15 s. The endless handler would hold the worker for 120 s without the grace period.
            #expect(ContinuousClock.now - stopAsked < .seconds(10))
            #expect(try await db.state(of: short.id) == .completed)
            let released = try #require(try await db.store.job(id: endless.id, on: db.client))
            #expect(released.state == .available)
            #expect(released.attempt == 0)
            #expect(released.lockedBy == nil)
            #expect(released.errors.last?.code == "worker_shutdown")
        }
    }

    @Test("a worker whose task is cancelled (as a ServiceGroup does when another service fails) stops without the grace period: run() returns and its running job goes back to the queue")
    func cancelledWorker() async throws {
        try await TestDatabase.with { db in
            var handlers = JobHandlers()
            handlers.register(kind: "test.endless") { _, _ in try await Task.sleep(for: .seconds(120)) }
            let endless = try await db.store.enqueue(NewJob(queue: "default", kind: "test.endless"), on: db.client)
            var configuration = fastConfiguration([("default", 2)], workerID: "w-cancelled")
            configuration.gracePeriod = .seconds(120)
            let worker = try QueueWorker(databaseURL: db.url, handlers: handlers, configuration: configuration, logger: db.logger)
            let running = Task { try await worker.run() }
            let returned = Mutex(false)
            let waiter = Task {
                _ = try? await running.value
                returned.withLock { $0 = true }
            }
            try await db.wait(for: endless.id, toBe: .running)
            running.cancel()
            // Cancelled along with the worker, its parts' waits returned at once and the producers
            // and the completer spun: run() never returned (a locod worker whose metrics port was
            // taken sat at 100% of a core). The 120 s grace period does not apply.
            let ended = await eventually(timeout: .seconds(60)) { returned.withLock { $0 } }
            #expect(ended, "run() did not return within 60 s of its task's cancellation")
            if !ended { worker.stop() }
            await waiter.value
            let released = try #require(try await db.store.job(id: endless.id, on: db.client))
            #expect(released.state == .available)
            #expect(released.attempt == 0)
            #expect(released.lockedBy == nil)
            #expect(released.errors.last?.code == "worker_shutdown")
        }
    }

    @Test("hot statements are prepared once per connection, and sent unprepared for poolers")
    func preparedOrNot() async throws {
        try await TestDatabase.with { db in
            for prepare in [true, false] {
                let connection = ReconnectingConnection(url: db.url, logger: db.logger, usePreparedStatements: prepare)
                for _ in 0..<3 {
                    _ = try await db.store.claim(queue: "default", limit: 5, worker: "w", lease: .seconds(30), on: connection)
                    // Single enqueues prepare a statement of their own (see futureEnqueuePath); for a pooler, none.
                    if !prepare { _ = try await db.store.enqueue(NewJob(queue: "other", kind: "k"), on: connection) }
                }
                var statements: [String] = []
                for try await name in try await connection.run("SELECT name FROM pg_prepared_statements", logger: db.logger).decode(String.self) {
                    statements.append(name)
                }
                #expect(statements == (prepare ? [JobStatements.Claim.name] : []))
                await connection.close()
            }
        }
    }

    @Test("stats count the live jobs through their indexes, at the cost of the live jobs and not of the finished ones kept for retention")
    func statsReadOnlyLiveJobs() async throws {
        try await TestDatabase.with { db in
            // A week of retention on a busy queue: finished jobs outnumber the live ones by far.
            _ = try await db.client.query("""
                INSERT INTO loco_jobs (queue, kind, state, finalized_at, attempt)
                SELECT 'busy', 'k', 'completed', now() - n * interval '1 second', 1 FROM generate_series(1, 40000) n
                """)
            _ = try await db.client.query("""
                INSERT INTO loco_jobs (queue, kind, state, finalized_at, run_at, locked_by, lease_expires_at, pending_deps)
                VALUES ('busy', 'k', 'failed', now() - interval '5 minutes', now(), NULL, NULL, 0),
                       ('busy', 'k', 'failed', now() - interval '50 minutes', now(), NULL, NULL, 0),
                       ('busy', 'k', 'failed', now() - interval '2 hours', now(), NULL, NULL, 0),
                       ('busy', 'k', 'cancelled', now(), now(), NULL, NULL, 0),
                       ('busy', 'k', 'available', NULL, now() - interval '90 seconds', NULL, NULL, 0),
                       ('busy', 'k', 'available', NULL, now() - interval '10 seconds', NULL, NULL, 0),
                       ('busy', 'k', 'scheduled', NULL, now() + interval '1 hour', NULL, NULL, 0),
                       ('busy', 'k', 'running', NULL, now(), 'w', now() + interval '30 seconds', 0),
                       ('busy', 'k', 'blocked', NULL, now(), NULL, NULL, 1),
                       ('busy', 'k', 'blocked', NULL, now(), NULL, NULL, 2),
                       ('quiet', 'k', 'blocked', NULL, now(), NULL, NULL, 1)
                """)
            _ = try await db.client.query("ANALYZE loco_jobs")

            let live = try await db.store.stats(on: db.client, includingFinished: false)
            #expect(live.queues.map(\.name) == ["busy", "quiet"])
            let busy = try #require(live.queues.first)
            #expect(busy.depth == ["available": 2, "scheduled": 1, "running": 1, "blocked": 2])
            #expect(try #require(busy.oldestAvailableSeconds) >= 90)
            #expect(busy.failedLastHour == 2)
            #expect(live.queues.last?.depth == ["blocked": 1] && live.queues.last?.oldestAvailableSeconds == nil)
            let all = try await db.store.stats(on: db.client)
            #expect(all.queues.first?.depth == ["available": 2, "scheduled": 1, "running": 1, "blocked": 2,
                                                "completed": 40000, "failed": 3, "cancelled": 1])

            // What each statement reads, in shared buffers, against the table's size in pages.
            func buffersRead(_ sql: String) async throws -> Int {
                var text = ""
                for try await plan in try await db.client.query(PostgresQuery(unsafeSQL: "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql)).decode(String.self) {
                    text = plan
                }
                let plans = try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [[String: Any]])
                let top = try #require(plans.first?["Plan"] as? [String: Any])
                return (top["Shared Hit Blocks"] as? Int ?? 0) + (top["Shared Read Blocks"] as? Int ?? 0)
            }
            let pages = Int(try await db.scalar("SELECT pg_relation_size('loco_jobs') / current_setting('block_size')::int8", as: Int64.self))
            // The measure itself: counting the finished jobs reads the whole table.
            #expect(try await buffersRead("SELECT state, count(*) FROM loco_jobs WHERE state = 'completed' GROUP BY state") >= pages)
            let liveRead = try await buffersRead(JobStore.liveDepthSQL)
            let failuresRead = try await buffersRead(JobStore.failedLastHourSQL)
            #expect(liveRead * 10 < pages, "live depth read \(liveRead) of \(pages) pages")
            #expect(failuresRead * 10 < pages, "the hour's failures read \(failuresRead) of \(pages) pages")
        }
    }

    @Test("the depth gauges cover the live states, and a queue that empties reads 0, not its last depth")
    func depthGauges() {
        let metrics = QueueMetrics()
        var queue = QueueStats.Queue(name: "build")
        queue.depth = ["available": 3, "running": 2, "completed": 9]
        queue.oldestAvailableSeconds = 4
        metrics.update(from: QueueStats(queues: [queue]))
        let before = metrics.render()
        #expect(before.contains(#"loco_queue_depth{queue="build",state="available"} 3"#), "\(before)")
        #expect(before.contains(#"loco_queue_depth{queue="build",state="running"} 2"#))
        #expect(before.contains(#"loco_queue_depth{queue="build",state="blocked"} 0"#))
        #expect(!before.contains(#"state="completed""#), "finished states have no gauge")
        #expect(before.contains(#"loco_queue_oldest_available_age_seconds{queue="build"} 4"#))

        metrics.update(from: QueueStats(queues: []))
        let after = metrics.render()
        #expect(after.contains(#"loco_queue_depth{queue="build",state="available"} 0"#), "\(after)")
        #expect(after.contains(#"loco_queue_depth{queue="build",state="running"} 0"#))
        #expect(after.contains(#"loco_queue_oldest_available_age_seconds{queue="build"} 0"#))
    }

    @Test("a producer's connection keeps one claim plan, made on an empty table, and it stays index scans with a backlog")
    func claimKeepsOnePlan() async throws {
        try await TestDatabase.with { db in
            let claims = ReconnectingConnection(url: db.url, logger: db.logger, sessionSettings: JobStatements.Claim.sessionSettings)
            // The worst start: statistics that say the table is empty, as after VACUUM on a new
            // install. The kept plan is made now, on the first claim.
            _ = try await db.client.query("VACUUM ANALYZE loco_jobs")
            _ = try await db.client.query("VACUUM ANALYZE loco_queue_pauses")
            #expect(try await db.store.claim(queue: "q", limit: 10, worker: "w", lease: .seconds(30), on: claims).isEmpty)
            // A copy of the statement under a name of its own, planned now too, whose plan can be read.
            _ = try await claims.run(PostgresQuery(unsafeSQL: "PREPARE claim_shape(text, int8, text, float8) AS " + JobStatements.Claim.sql), logger: db.logger)
            func shape() async throws -> [String] {
                let rows = try await claims.run("EXPLAIN (FORMAT JSON) EXECUTE claim_shape('q', 10, 'w', 30)", logger: db.logger)
                var text = ""
                for try await plan in rows.decode(String.self) { text = plan }
                let plans = try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [[String: Any]])
                var nodes: [String] = []
                func walk(_ node: [String: Any]) {
                    nodes.append([node["Node Type"] as? String, node["Index Name"] as? String].compactMap { $0 }.joined(separator: " "))
                    for child in node["Plans"] as? [[String: Any]] ?? [] { walk(child) }
                }
                walk(try #require(plans.first?["Plan"] as? [String: Any]))
                return nodes
            }
            let indexScansOnly = ["ModifyTable", "Limit", "Index Only Scan loco_queue_pauses_pkey", "LockRows", "Result",
                                  "Index Scan loco_jobs_claim", "CTE Scan", "Index Scan loco_jobs_pkey"]
            let onEmpty = try await shape()
            #expect(onEmpty == indexScansOnly)

            // A backlog arrives in another queue, and a few jobs in this one, in priority order.
            _ = try await db.client.query("""
                INSERT INTO loco_jobs (queue, kind, args, state) SELECT 'backlog', 'k', '{}', 'available' FROM generate_series(1, 100000)
                """)
            _ = try await db.client.query("""
                INSERT INTO loco_jobs (queue, kind, args, state, priority) SELECT 'q', 'k', '{}', 'available', 30 - n FROM generate_series(1, 30) n
                """)
            var claimed: [Set<Int64>] = []
            for _ in 0..<3 {
                claimed.append(Set(try await db.store.claim(queue: "q", limit: 10, worker: "w", lease: .seconds(30), on: claims).map(\.id)))
            }
            let byPriority = try await db.client.query("SELECT id FROM loco_jobs WHERE queue = 'q' ORDER BY priority, id")
            var expected: [Int64] = []
            for try await id in byPriority.decode(Int64.self) { expected.append(id) }
            #expect(claimed == [Set(expected[0..<10]), Set(expected[10..<20]), Set(expected[20..<30])])
            let kept = try await shape()
            #expect(kept == indexScansOnly)
            // Statistics that now know the backlog make PostgreSQL plan again: the same shape.
            _ = try await db.client.query("ANALYZE loco_jobs")
            let replanned = try await shape()
            #expect(replanned == indexScansOnly)

            // The claims themselves ran on the kept plan, never one made for their parameters.
            let counts = try await claims.run(
                "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE name = \(JobStatements.Claim.name)", logger: db.logger)
            for try await (generic, custom) in counts.decode((Int64, Int64).self) {
                #expect(generic == 4 && custom == 0)
            }
            for try await jit in try await claims.run("SELECT current_setting('jit')", logger: db.logger).decode(String.self) {
                #expect(jit == "off")
            }
            await claims.close()
        }
    }

    @Test("a session setting PostgreSQL refuses fails the connect with a coded error that names it, every time")
    func refusedSessionSettings() async throws {
        try await TestDatabase.with { db in
            let connection = ReconnectingConnection(url: db.url, logger: db.logger,
                                                    sessionSettings: [("jit", "off"), ("loco_no_such_setting", "on")])
            for _ in 0..<2 {
                do {
                    _ = try await connection.run("SELECT 1", logger: db.logger)
                    Issue.record("a connection with a refused setting was used")
                } catch let error as QueueError {
                    guard case let .sessionSettingsRefused(settings, reason) = error else { throw error }
                    #expect(settings == ["jit", "loco_no_such_setting"])
                    #expect(reason.contains("loco_no_such_setting"))
                    #expect(error.code == "session_settings_refused" && error.hint.contains("PostgreSQL 12"))
                }
            }
            await connection.close()
        }
    }

    @Test("single enqueues on a connection (the future-based path): every field stored, duplicates found, one statement prepared, server errors and dropped sessions reported")
    func futureEnqueuePath() async throws {
        try await TestDatabase.with { db in
            let connection = ReconnectingConnection(url: db.url, logger: db.logger)
            let later = Date(timeIntervalSince1970: (Date().timeIntervalSince1970 + 3600).rounded())
            let scheduled = try await db.store.enqueue(NewJob(queue: "fast", kind: "test.fast", args: #"{"n": 1, "name": "ünï"}"#, priority: -3,
                                                              runAt: later, maxAttempts: 7, uniqueKey: "fast-1"), on: connection)
            #expect(scheduled.state == .scheduled && !scheduled.duplicate)
            let stored = try #require(try await db.store.job(id: scheduled.id, on: db.client))
            #expect(stored.queue == "fast" && stored.kind == "test.fast" && stored.priority == -3 && stored.maxAttempts == 7)
            #expect(stored.args.contains("ünï") && stored.runAt == later && stored.uniqueKey == "fast-1")
            let again = try await db.store.enqueue(NewJob(queue: "fast", kind: "test.fast", uniqueKey: "fast-1"), on: connection)
            #expect(again.id == scheduled.id && again.duplicate && again.state == .scheduled)
            let now = try await db.store.enqueue(NewJob(queue: "fast", kind: "test.fast"), on: connection)
            #expect(now.state == .available && now.id > scheduled.id)
            // Prepared once on this connection, whatever the number of enqueues: the insert for
            // jobs with a unique key, the one without ON CONFLICT for the rest, and the wake-up
            // each is followed by (the inserts notify no one themselves).
            for _ in 0..<3 { _ = try await db.store.enqueue(NewJob(queue: "fast", kind: "test.fast"), on: connection) }
            _ = try await db.store.enqueue(NewJob(queue: "fast", kind: "test.fast", uniqueKey: "fast-2"), on: connection)
            var statements: [String] = []
            for try await sql in try await connection.run("SELECT statement FROM pg_prepared_statements", logger: db.logger).decode(String.self) {
                statements.append(sql)
            }
            let inserts = [JobStatements.EnqueueOne.insert, JobStatements.EnqueueUnique.insert].map { $0 + "\n" + JobStatements.EnqueueOne.returningWithoutNotify }
            #expect(statements.sorted() == (inserts + [JobStatements.wakeUp]).sorted())
            #expect(!JobStore.singleEnqueueStatement.contains("ON CONFLICT") && !JobStore.singleEnqueueStatement.contains("unique_key"))

            // A session the server ends: the enqueue that finds it gone fails with a coded
            // error naming the server, and the next one reconnects and prepares again.
            let backend = try #require(try await connection.run("SELECT pg_backend_pid()", logger: db.logger).decode(Int32.self).first { _ in true })
            _ = try await db.scalar("SELECT pg_terminate_backend(\(backend))", as: Bool.self)
            var failures = 0
            for _ in 0..<2 {
                do { _ = try await db.store.enqueue(NewJob(queue: "fast", kind: "test.fast"), on: connection) } catch {
                    failures += 1
                    #expect(db.url.describe(error).contains(db.url.endpoint), "\(db.url.describe(error))")
                }
            }
            #expect(failures <= 1)
            let after = try await db.store.enqueue(NewJob(queue: "fast", kind: "test.fast"), on: connection)
            #expect(after.state == .available)
            await connection.close()
        }
        // A database without the schema: PostgreSQL's own message and SQLSTATE, not a blank.
        try await TestDatabase.with(migrations: []) { db in
            let connection = ReconnectingConnection(url: db.url, logger: db.logger)
            let error = await #expect(throws: DatabaseServerError.self) {
                _ = try await db.store.enqueue(NewJob(queue: "fast", kind: "test.fast"), on: connection)
            }
            #expect(error?.sqlState == "42P01")
            #expect("\(error.map(String.init(describing:)) ?? "")" == #"PostgreSQL said: relation "loco_jobs" does not exist (SQLSTATE 42P01)"#)
            await connection.close()
        }
    }

    @Test("a single enqueue that gets no answer is abandoned at the deadline with a coded error, and the next one reconnects")
    func singleEnqueueDeadline() async throws {
        try await TestDatabase.with { db in
            let connection = ReconnectingConnection(url: db.url, logger: db.logger, queryTimeout: .milliseconds(800))
            // Under a full run's load a query on an idle server once took longer than this short
            // deadline (the whole test failed on an enqueue outside the lock): the enqueues before
            // and after the locked one may take a few tries; the locked one must give up.
            #expect(await eventually(timeout: .seconds(15), every: .milliseconds(100)) {
                (try? await db.store.enqueue(NewJob(queue: "slow", kind: "k"), on: connection)) != nil
            })
            let began = ContinuousClock.now
            // The table stays locked until the enqueue has given up.
            let error: (any Error)? = try await db.client.transaction { locked in
                _ = try await locked.run("LOCK TABLE loco_jobs IN ACCESS EXCLUSIVE MODE", logger: db.logger)
                // Without a deadline the enqueue would wait as long as the lock, and the lock as
                // long as the enqueue: after 10 s the connection is closed under it instead, so
                // that the test fails (a different error, too late) rather than hangs.
                let backstop = Task {
                    try await Task.sleep(for: .seconds(10))
                    await connection.close()
                }
                defer { backstop.cancel() }
                do {
                    _ = try await db.store.enqueue(NewJob(queue: "slow", kind: "k"), on: connection)
                    return nil
                } catch {
                    return error
                }
            }
            let explained = try #require(error as? QueueError, "\(String(describing: error))")
            #expect(explained.code == "database_unreachable" && explained.message.contains(db.url.endpoint), "\(explained.message)")
            #expect(ContinuousClock.now - began < .seconds(5))
            var after: EnqueuedJob?
            #expect(await eventually(timeout: .seconds(15), every: .milliseconds(100)) {
                after = try? await db.store.enqueue(NewJob(queue: "slow", kind: "k"), on: connection)
                return after != nil
            }, "the connection recovers")
            #expect(after?.state == .available)
            await connection.close()
        }
    }

    @Test("a pinned producer runs on its connection's event loop, its enqueues land in order, and it survives a reconnect")
    func pinnedProducer() async throws {
        try await TestDatabase.with { db in
            let connection = ReconnectingConnection(url: db.url, logger: db.logger)
            for round in 0..<2 {
                let loop = try await connection.connection().eventLoop
                let ids = try await connection.pinned {
                    var ids: [Int64] = []
                    for index in 0..<50 {
                        #expect(loop.inEventLoop)
                        let job = NewJob(queue: "pinned", kind: "test.pinned", args: #"{"round": \#(round), "n": \#(index)}"#)
                        ids.append(try await db.store.enqueue(job, on: connection).id)
                    }
                    return ids
                }
                #expect(ids == ids.sorted())
                var stored: [Int64] = []
                let rows = try await connection.run(
                    "SELECT id FROM loco_jobs WHERE queue = 'pinned' AND (args->>'round')::int = \(round) ORDER BY (args->>'n')::int",
                    logger: db.logger)
                for try await id in rows.decode(Int64.self) { stored.append(id) }
                #expect(stored == ids)
                // Close it underneath: the next round must reconnect before it pins.
                try await connection.connection().close()
            }
            await connection.close()
        }
    }

    @Test("a query that hangs is abandoned at the deadline and the next call reconnects")
    func queryDeadline() async throws {
        try await TestDatabase.with { db in
            let connection = ReconnectingConnection(url: db.url, logger: db.logger, queryTimeout: .milliseconds(800))
            // Connected before the clock starts (see the transaction time-limit test below).
            #expect(await answersSelectOne(connection, logger: db.logger))
            let began = ContinuousClock.now
            let error = await #expect(throws: (any Error).self) {
                for try await _ in try await connection.run("SELECT pg_sleep(30)", logger: db.logger) {}
            }
            // The caller is let go with a coded error naming the server, not left waiting.
            let explained = try #require(error as? QueueError)
            #expect(explained.code == "database_unreachable")
            #expect(explained.message.contains(db.url.endpoint))
            #expect(ContinuousClock.now - began < .seconds(5))
            // Under a full run's load the reconnect and query once took longer than this short
            // deadline: the next call may take a few tries; it must get through.
            #expect(await answersSelectOne(connection, logger: db.logger))
            await connection.close()
        }
    }

    @Test("a transaction past its time limit has its connection closed: a coded error, nothing committed, the next one reconnects; no limit lets one run")
    func transactionTimeLimit() async throws {
        try await TestDatabase.with { db in
            let connection = ReconnectingConnection(url: db.url, logger: db.logger, queryTimeout: .milliseconds(800))
            // On the test's pool: a first call on `connection` includes its connect, which under a
            // full run's load once took longer than the 800 ms query deadline (a CI failure here).
            // The transaction's connect is outside its time limit.
            _ = try await db.client.run("CREATE TABLE tx_limit (n int)", logger: db.logger)
            // Connected before the clock starts, and the clock starts in the transaction: a CI run
            // under a full load once took 4.6 s from before the connect, past the old bound.
            #expect(await answersSelectOne(connection, logger: db.logger))
            let began = Mutex<ContinuousClock.Instant?>(nil)
            let error = await #expect(throws: QueueError.self) {
                try await connection.transaction(timeLimit: .seconds(1)) { tx in
                    began.withLock { $0 = .now }
                    _ = try await tx.run("INSERT INTO tx_limit VALUES (1)", logger: db.logger)
                    // A server that stops answering, as far as the client can tell.
                    _ = try await tx.run("SELECT pg_sleep(8)", logger: db.logger)
                }
            }
            #expect(error?.code == "database_unreachable")
            #expect(error?.message == "cannot reach PostgreSQL at \(db.url.endpoint): no answer to a transaction within 1 s; reconnecting",
                    "\(String(describing: error?.message))")
            let heldFor = began.withLock { $0 }.map { ContinuousClock.now - $0 }
            #expect(heldFor.map { $0 < .seconds(6) } == true,
                    "let go before the 8 s statement ended on its own: held for \(String(describing: heldFor))")
            let rows = try await db.scalar("SELECT count(*) FROM tx_limit", as: Int.self)
            #expect(rows == 0)
            // The next transaction gets a new connection. With no limit, one that runs longer than
            // the query deadline (a migration waiting on another process's) is left alone.
            let value = try await connection.transaction(timeLimit: nil) { tx in
                _ = try await tx.run("SELECT pg_sleep(1.5)", logger: db.logger)
                _ = try await tx.run("INSERT INTO tx_limit VALUES (2)", logger: db.logger)
                return 2
            }
            #expect(value == 2)
            #expect(try await db.scalar("SELECT count(*) FROM tx_limit", as: Int.self) == 1)
            await connection.close()
        }
    }

    @Test("sessions ended by the server again and again: each call after reconnects once, and no session is left open beside the one in use")
    func repeatedlyDropped() async throws {
        try await TestDatabase.with { db in
            // Named, so that its sessions can be told from the test pool's.
            let connection = ReconnectingConnection(url: db.url, logger: db.logger, sessionSettings: [("application_name", "dropped-again")])
            func backend() async throws -> Int32 {
                for try await pid in try await connection.run("SELECT pg_backend_pid()", logger: db.logger).decode(Int32.self) { return pid }
                throw TestSetupError("no row")
            }
            var pids: Set<Int32> = []
            for _ in 0..<20 {
                let pid = try await backend()
                pids.insert(pid)
                _ = try await db.scalar("SELECT pg_terminate_backend(\(pid))", as: Bool.self)
                // The FATAL arrives with (or before) the close: this call fails and drops the connection.
                _ = try? await connection.run("SELECT 1", logger: db.logger)
            }
            #expect(pids.count == 20, "a new session after every termination")
            let last = try await backend()
            var sessions: [Int32] = []
            let one = try await eventually(timeout: .seconds(10), every: .milliseconds(200)) {
                sessions = []
                let rows = try? await db.client.query("SELECT pid FROM pg_stat_activity WHERE application_name = 'dropped-again'")
                if let rows { for try await pid in rows.decode(Int32.self) { sessions.append(pid) } }
                return sessions == [last]
            }
            #expect(one, "sessions left open: \(sessions), in use: \(last)")
            await connection.close()
        }
    }

    @Test("a connection let go without close() closes what it held, instead of tripping PostgresNIO's assertion (which ended a debug test run)")
    func releasedWithoutClose() async throws {
        try await TestDatabase.with { db in
            do {
                let connection = ReconnectingConnection(url: db.url, logger: db.logger, sessionSettings: [("application_name", "let-go")])
                // The single-enqueue path caches its prepared statement; a query pins the loop's executor.
                _ = try await db.store.enqueue(NewJob(queue: "let-go", kind: "k"), on: connection)
                for try await _ in try await connection.run("SELECT 1", logger: db.logger) {}
            }
            let gone = try await eventually(timeout: .seconds(10), every: .milliseconds(100)) {
                try await db.scalar("SELECT count(*)::int FROM pg_stat_activity WHERE application_name = 'let-go'", as: Int32.self) == 0
            }
            #expect(gone, "its session ended")
        }
    }

    @Test("close() is for good: a call made afterwards fails instead of opening a connection nobody closes")
    func closedForGood() async throws {
        try await TestDatabase.with { db in
            // A maintenance loop still running as its worker stopped did reconnect after close(),
            // and the open connection it left crashed a debug build when freed.
            let connection = ReconnectingConnection(url: db.url, logger: db.logger)
            for try await _ in try await connection.run("SELECT 1", logger: db.logger) {}
            let original = try await connection.connection()
            await connection.close()
            for _ in 0..<3 {
                let error = await #expect(throws: QueueError.self) {
                    for try await _ in try await connection.run("SELECT 1", logger: db.logger) {}
                }
                #expect(error?.message == "cannot reach PostgreSQL at \(db.url.endpoint): the connection was closed")
            }
            await #expect(throws: QueueError.self) { try await connection.transaction { _ in 1 } }
            await #expect(throws: QueueError.self) { _ = try await connection.connection() }
            // The connection it had is closed too. (Checked here rather than in pg_stat_activity:
            // in one full CI run the server still listed the backend 10 s later, cause unknown.)
            #expect(original.isClosed)
        }
    }

    @Test("a statement sent on a connection that has closed fails at once instead of waiting forever")
    func closedConnection() async throws {
        try await TestDatabase.with { db in
            // PostgresNIO drops a query written to a closed connection, and its caller would wait forever.
            let bare = try await PostgresConnection.connect(configuration: db.url.connectionConfiguration(), id: 1, logger: db.logger)
            try await bare.close()
            let refused = try await ReconnectingConnection.deadline(.seconds(10)) { () -> String in
                do { _ = try await bare.run("SELECT 1", logger: db.logger) } catch { return (db.url.explain(error) as? QueueError)?.message ?? "\(error)" }
                return "answered"
            }
            #expect(refused == "cannot reach PostgreSQL at \(db.url.endpoint): the connection was closed")

            // A transaction whose connection closes part-way (as maintenance's does when a worker
            // stops) fails instead of hanging, keeps none of its writes, and the next one reconnects.
            let connection = ReconnectingConnection(url: db.url, logger: db.logger)
            let failed = try await ReconnectingConnection.deadline(.seconds(10)) { () -> String in
                do {
                    try await connection.transaction { open in
                        _ = try await db.store.enqueue(NewJob(queue: "closing", kind: "test.closing"), on: open)
                        try await open.close()
                        _ = try await db.store.enqueue(NewJob(queue: "closing", kind: "test.closing"), on: open)
                    }
                } catch { return (db.url.explain(error) as? QueueError)?.message ?? "\(error)" }
                return "committed"
            }
            #expect(failed == "cannot reach PostgreSQL at \(db.url.endpoint): the connection was closed")
            #expect(try await db.scalar("SELECT count(*) FROM loco_jobs WHERE queue = 'closing'", as: Int64.self) == 0)
            let job = try await connection.transaction { try await db.store.enqueue(NewJob(queue: "closing", kind: "test.closing"), on: $0) }
            #expect(try await db.state(of: job.id) == .available)
            await connection.close()
        }
    }

    @Test("a worker that takes long to stop says which of its parts it waits for")
    func stragglersNamed() async throws {
        let log = CapturedLog()
        let logger = Logger(label: "test") { _ in log }
        let parts = WorkerParts()
        let release = OneShotEvent()
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await parts.run(parts.activity("heartbeat")) { _ in } }
            group.addTask { await parts.run(parts.activity("periodic jobs")) { _ in await release.wait() } }
            let reporter = Task { await parts.reportStragglers(every: .milliseconds(50), logger: logger) }
            let said = try await eventually { log.messages.contains { $0.contains("waiting for periodic jobs") } }
            #expect(said)
            #expect(parts.names == ["periodic jobs"])
            release.set()
            try await group.waitForAll()
            reporter.cancel()
            #expect(parts.names.isEmpty)
        }
    }

    @Test("a listening connection that goes silent is noticed by its check and replaced: wake-ups do not wait for the poll")
    func silentListener() async throws {
        try await TestDatabase.with { db in
            // Through a proxy that can make the LISTEN connection go silent without closing it.
            let silent = try await SilentProxy.start(before: db.url)
            defer { silent.process.stop() }

            let log = CapturedLog()
            let logger = Logger(label: "test") { _ in log }
            var handlers = JobHandlers()
            handlers.register(kind: "test.woken") { _, _ in }
            var configuration = fastConfiguration([("default", 1)])
            // A poll this slow would show: every wake-up must come by notification.
            configuration.pollInterval = .seconds(60)
            configuration.listenerCheckInterval = .seconds(1)
            let worker = try QueueWorker(databaseURL: silent.url, handlers: handlers, configuration: configuration, logger: logger)
            let running = Task { try await worker.run() }
            defer { worker.stop() }
            await worker.waitUntilListening()
            let first = try await db.store.enqueue(NewJob(queue: "default", kind: "test.woken"), on: db.client)
            _ = try await db.wait(for: first.id, toBe: .completed, timeout: .seconds(60))

            // Under load a check can replace the connection on its own; then the new one is silenced.
            var silenced = 0
            #expect(try await eventually(timeout: .seconds(10), every: .milliseconds(200)) {
                silenced = try await silent.silence()
                return silenced == 1
            }, "silenced \(silenced) connections")
            // The check (every second, answered within a second) replaces the connection and the new
            // listener wakes the pool: seconds, where the first poll comes 48 s or more after start.
            let second = try await db.store.enqueue(NewJob(queue: "default", kind: "test.woken"), on: db.client)
            _ = try await db.wait(for: second.id, toBe: .completed, timeout: .seconds(60))
            #expect(log.messages.contains("the connection for job notifications did not answer a check within 1 s; replacing it"),
                    "\(log.messages)")
            #expect(log.messages.contains("listening for job notifications again"), "\(log.messages)")
            worker.stop()
            try await running.value
        }
    }

    @Test("a LISTEN that gets no answer is given up within 5 s and tried again; jobs still start by poll meanwhile")
    func unansweredListen() async throws {
        try await TestDatabase.with { db in
            // Every connection goes silent as it sends LISTEN: PostgresNIO's LISTEN has no
            // deadline of its own, and without one the listener waited for good.
            let silent = try await SilentProxy.start(before: db.url, atOnce: true)
            defer { silent.process.stop() }
            let log = CapturedLog()
            let logger = Logger(label: "test") { _ in log }
            var handlers = JobHandlers()
            handlers.register(kind: "test.polled") { _, _ in }
            var configuration = fastConfiguration([("default", 1)])
            configuration.pollInterval = .milliseconds(200)
            let job = try await db.store.enqueue(NewJob(queue: "default", kind: "test.polled"), on: db.client)
            try await db.withWorker(configuration, handlers: handlers, url: silent.url, logger: logger) { _ in
                _ = try await db.wait(for: job.id, toBe: .completed, timeout: .seconds(60))
                let gaveUp = try await eventually(timeout: .seconds(30)) {
                    log.detailed.contains { $0.hasPrefix("job notifications unavailable; polling meanwhile") && $0.contains("LISTEN got no answer within 5 s; reconnecting") }
                }
                #expect(gaveUp, "\(log.detailed)")
                // And it tries again, on a new connection.
                #expect(try await eventually(timeout: .seconds(20)) { silent.process.output.contains("silent at once 2") },
                        "\(silent.process.output)")
                #expect(!log.messages.contains { $0.hasPrefix("worker part listener") }, "\(log.messages)")
            }
        }
    }

    @Test("a heartbeat connection that goes silent is given up within one heartbeat interval: the leases are renewed on a new one before they run out")
    func silentHeartbeat() async throws {
        try await TestDatabase.with { db in
            // The presence lock is the heartbeat connection's first statement, and only its.
            let silent = try await SilentProxy.start(before: db.url, marker: "pg_try_advisory_lock")
            defer { silent.process.stop() }
            let log = CapturedLog()
            let logger = Logger(label: "test") { _ in log }
            let started = OneShotEvent()
            let release = Mutex(false)
            var handlers = JobHandlers()
            handlers.register(kind: "test.long") { _, _ in
                started.set()
                while !release.withLock({ $0 }) { try await Task.sleep(for: .milliseconds(50)) }
            }
            var configuration = fastConfiguration([("default", 1)])
            // The job runs until 25 s after the silence: past the lease, however late the silence
            // came (a job of a fixed 12 s and a 10 s lease failed once in CI, the test taking 55 s).
            configuration.leaseDuration = .seconds(20)
            configuration.heartbeatInterval = .milliseconds(2500)
            let job = try await db.store.enqueue(NewJob(queue: "default", kind: "test.long"), on: db.client)
            try await db.withWorker(configuration, handlers: handlers, url: silent.url, logger: logger) { worker in
                await started.wait()
                // Once the worker is listed, its heartbeat connection has sent the marker.
                let listed = try await eventually(timeout: .seconds(10)) {
                    try await db.scalar("SELECT count(*)::int FROM loco_workers WHERE id = \(worker.workerID)", as: Int32.self) == 1
                }
                #expect(listed)
                var silenced = 0
                #expect(try await eventually(timeout: .seconds(10), every: .milliseconds(200)) {
                    silenced = try await silent.silence()
                    return silenced == 1
                }, "silenced \(silenced): \(silent.process.output)")
                // A renewal waiting 30 s for an answer would let the 20 s lease run out: the job
                // would be rescued (lease_expired) and run a second time.
                try await Task.sleep(for: .seconds(25))
                release.withLock { $0 = true }
                let done = try await db.wait(for: job.id, toBe: .completed, timeout: .seconds(40))
                #expect(done.attempt == 1 && done.errors.isEmpty, "\(done.errors)")
                #expect(log.messages.contains("heartbeat failed; leases run out unless the next one succeeds"), "\(log.messages)")
            }
        }
    }

    @Test("a worker runs jobs over a Unix-socket URL")
    func unixSocket() async throws {
        try await TestDatabase.with { db in
            guard let text = ProcessInfo.processInfo.environment["LOCO_DATABASE_SOCKET_URL"] else {
                throw TestSetupError("LOCO_DATABASE_SOCKET_URL is not set; scripts/test exports it (scripts/services start prints it)")
            }
            let socketURL = try DatabaseURL(text).with(database: db.url.database)
            var handlers = JobHandlers()
            handlers.register(kind: "test.socket") { _, _ in }
            let connection = ReconnectingConnection(url: socketURL, logger: db.logger)
            let job = try await db.store.enqueue(NewJob(queue: "default", kind: "test.socket"), on: connection)
            await connection.close()
            let worker = try QueueWorker(databaseURL: socketURL, handlers: handlers, configuration: fastConfiguration([("default", 1)]), logger: db.logger)
            let running = Task { try await worker.run() }
            let done = try await db.wait(for: job.id, toBe: .completed)
            worker.stop()
            try await running.value
            #expect(done.attempt == 1)
        }
    }

    @Test("an unreachable database is reported with host and port, never the password")
    func unreachable() async throws {
        let url = try DatabaseURL("postgres://loco:hunter2@127.0.0.1:1/loco")
        do {
            _ = try await PostgresConnection.connect(configuration: url.connectionConfiguration(), id: 9, logger: TestDatabase.testLogger)
            Issue.record("connecting to port 1 should fail")
        } catch {
            let explained = try #require(url.explain(error) as? QueueError)
            #expect(explained.code == "database_unreachable")
            #expect(explained.message.contains("127.0.0.1:1"))
            #expect(!explained.message.contains("hunter2"))
            #expect(!explained.hint.contains("hunter2"))
        }
        // The same through ReconnectingConnection, which connects the socket itself (NIO's error).
        let db = ReconnectingConnection(url: url, logger: TestDatabase.testLogger)
        let error = await #expect(throws: (any Error).self) { _ = try await db.connection() }
        await db.close()
        let explained = try #require(error.map(url.explain) as? QueueError, "\(String(describing: error))")
        #expect(explained.code == "database_unreachable" && explained.message.contains("127.0.0.1:1"), "\(explained.message)")
        #expect(!explained.message.contains("hunter2") && !explained.hint.contains("hunter2"))

        // With busy polling, which connects the socket by itself (BusyPoll.connect): the same
        // words, and a host name that resolves to nothing says so, both ways.
        for text in ["postgres://loco:hunter2@127.0.0.1:1/loco?busy_poll=500", "postgres://loco:hunter2@no-such-host.invalid:5432/loco?busy_poll=500",
                     "postgres://loco:hunter2@no-such-host.invalid:5432/loco"] {
            let url = try DatabaseURL(text)
            let db = ReconnectingConnection(url: url, logger: TestDatabase.testLogger)
            let error = await #expect(throws: (any Error).self) { _ = try await db.connection() }
            await db.close()
            let explained = try #require(error.map(url.explain) as? QueueError, "\(text): \(String(describing: error))")
            let words = url.host == "127.0.0.1" ? "127.0.0.1:1: connection refused" : "no-such-host.invalid:5432: the host name resolves to no address"
            #expect(explained.code == "database_unreachable" && explained.message.contains(words), "\(explained.message)")
            #expect(!explained.message.contains("hunter2") && !explained.hint.contains("hunter2"))
        }
        // A socket folder too long for a Unix socket's address: said so, with busy polling's own
        // connect and with NIO's.
        let folder = "/tmp/" + String(repeating: "d", count: 120)
        for text in ["postgres://loco@/loco?host=\(folder)&port=5432&busy_poll=500", "postgres://loco@/loco?host=\(folder)&port=5432"] {
            let url = try DatabaseURL(text)
            let db = ReconnectingConnection(url: url, logger: TestDatabase.testLogger)
            let error = await #expect(throws: (any Error).self) { _ = try await db.connection() }
            await db.close()
            let explained = try #require(error.map(url.explain) as? QueueError, "\(text): \(String(describing: error))")
            #expect(explained.code == "database_unreachable" && explained.message.contains("is longer than a Unix socket's address holds"),
                    "\(explained.message)")
        }
    }
}

/// Keeps what is logged, for tests that check what a component says.
/// Counts how many `test.busy` handlers (400 ms each, long enough to overlap under a loaded
/// machine) run at once, at most.
final class ConcurrencyProbe: Sendable {
    private let running = Mutex((now: 0, most: 0, target: 0))

    /// Each job runs 400 ms, and then on until `target` jobs have run at once in this phase (for
    /// at most 5 s more): a pool that allows more than it should shows it within the 400 ms, while
    /// a loaded machine that starts a claim's second job late cannot make the count fall short
    /// (a CI run saw `phase() == 2` fail with fixed-length jobs).
    var handlers: JobHandlers {
        var handlers = JobHandlers()
        handlers.register(kind: "test.busy") { [self] _, _ in
            running.withLock { $0.now += 1; $0.most = max($0.most, $0.now) }
            defer { running.withLock { $0.now -= 1 } }
            try await Task.sleep(for: .milliseconds(400))
            let deadline = ContinuousClock.now + .seconds(5)
            while running.withLock({ $0.most < $0.target }), ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(20))
            }
        }
        return handlers
    }

    /// Enqueues `jobs` busy jobs in queue default, waits until all completed, and returns how
    /// many ran at once at most meanwhile; jobs wait for `target` of them to run at once.
    func most(running jobs: Int, target: Int, on db: TestDatabase) async throws -> Int {
        try await most(among: try await enqueue(jobs, target: target, on: db), on: db)
    }

    /// Enqueues the jobs of a phase, for `most(among:)` to wait for.
    func enqueue(_ jobs: Int, target: Int, on db: TestDatabase) async throws -> [Int64] {
        running.withLock { $0.most = 0; $0.target = target }
        return try await db.store.enqueueMany(Array(repeating: NewJob(queue: "default", kind: "test.busy"), count: jobs), on: db.client).map(\.id)
    }

    func most(among ids: [Int64], on db: TestDatabase) async throws -> Int {
        for id in ids { _ = try await db.wait(for: id, toBe: .completed, timeout: .seconds(60)) }
        return running.withLock { $0.most }
    }
}

/// `Fixtures/silent_proxy.py` in front of the test database: its connections that sent a marker
/// can be made to go silent (nothing closed, nothing through), as a link that died does.
struct SilentProxy {
    let process: ChildProcess
    let url: DatabaseURL
    let trigger: String

    /// `atOnce`: a connection goes silent as its client sends `marker`, unanswered.
    static func start(before database: DatabaseURL, marker: String = "LISTEN", atOnce: Bool = false) async throws -> SilentProxy {
        let script = Repo.root.appending(path: "Tests/LocoQueueTests/Fixtures/silent_proxy.py").path
        let trigger = FileManager.default.temporaryDirectory.appending(path: "loco-silence-\(UUID().uuidString)").path
        for _ in 0..<5 {
            let port = try freePort()
            let started = try ChildProcess(URL(fileURLWithPath: "/usr/bin/python3"), [script, "\(port)", "\(database.port)", trigger, marker] + (atOnce ? ["at-once"] : []))
            if try await eventually(timeout: .seconds(10), { started.output.contains("listening") || started.exitStatusIfExited() != nil }),
               started.output.contains("listening") {
                var url = database
                url.port = port
                return SilentProxy(process: started, url: url, trigger: trigger)
            }
            started.stop()
        }
        throw TestSetupError("the silent proxy did not start (python3 Tests/LocoQueueTests/Fixtures/silent_proxy.py)")
    }

    /// Silences the marked connections; returns how many.
    func silence() async throws -> Int {
        let said = { process.output.split(separator: "\n").filter { $0.hasPrefix("silenced ") } }
        let before = said().count
        FileManager.default.createFile(atPath: trigger, contents: nil)
        var count: Int?
        _ = try await eventually(timeout: .seconds(10)) {
            let lines = said()
            count = lines.count > before ? lines.last.flatMap { Int($0.dropFirst("silenced ".count)) } : nil
            return count != nil
        }
        guard let count else {
            throw TestSetupError("the silent proxy did not answer (exit status \(String(describing: process.exitStatusIfExited()))): \(process.output)")
        }
        return count
    }
}

/// Whether `connection` answers `SELECT 1` within 15 s, asked every 100 ms: under a full run's
/// load its (re)connect and first query can outlast a short query deadline, so a few tries may fail.
private func answersSelectOne(_ connection: ReconnectingConnection, logger: Logger) async -> Bool {
    await eventually(timeout: .seconds(15), every: .milliseconds(100)) {
        guard let rows = try? await connection.run("SELECT 1", logger: logger) else { return false }
        var value = 0
        do { for try await one in rows.decode(Int.self) { value = one } } catch { return false }
        return value == 1
    }
}
