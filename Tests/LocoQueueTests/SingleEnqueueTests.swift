import Foundation
import Logging
@testable import LocoQueue
import LocoTestSupport
import NIOConcurrencyHelpers
import NIOCore
import NIOEmbedded
import PostgresNIO
import Testing

/// Single enqueues on a `ReconnectingConnection` are written and read by `SingleEnqueueHandler`,
/// in the pipeline of the connection PostgresNIO uses for everything else.
@Suite("Single enqueues on the wire")
struct SingleEnqueueTests {
    /// Runs `body` with a fresh database, a `ReconnectingConnection` to it and a store.
    static func withConnection(migrated: Bool = true, queryTimeout: Duration = .seconds(30),
                               _ body: (TestDatabase, ReconnectingConnection, JobStore) async throws -> Void) async throws {
        try await TestDatabase.with(migrations: migrated ? [(QueueSchema.component, QueueSchema.migrations)] : []) { database in
            let db = ReconnectingConnection(url: database.url, logger: database.logger, queryTimeout: queryTimeout)
            do {
                try await body(database, db, JobStore(logger: database.logger))
            } catch {
                await db.close()
                throw error
            }
        }
    }

    /// The first `count` notifications of the queue's channel that `db`'s session hears while
    /// `enqueue` runs on it, or one line saying they did not come within 10 s.
    static func heard(_ count: Int, on db: ReconnectingConnection, while enqueue: @escaping @Sendable () async throws -> Void) async throws -> [String] {
        try await db.connection().listen(on: JobStore.channel) { notifications in
            // The LISTEN is under way once this runs.
            try await withThrowingTaskGroup(of: [String]?.self) { group in
                group.addTask {
                    var heard: [String] = []
                    for try await notification in notifications {
                        heard.append(notification.payload)
                        if heard.count == count { break }
                    }
                    return heard
                }
                group.addTask {
                    try await enqueue()
                    try await Task.sleep(for: .seconds(10))  // the notifications' deadline
                    return nil
                }
                let first = try await group.next() ?? nil
                group.cancelAll()
                return first ?? ["no \(count) notifications within 10 s of the enqueues"]
            }
        }
    }

    /// Has the server end every other session of the test's database (waiting until they are
    /// gone), then enqueues three times on `db` into `queue`: what each said, `ok` or its code as
    /// the worker and the API say it (explained by `url`), or PostgreSQL's SQLSTATE.
    static func enqueuesAfterKillingSessions(_ database: TestDatabase, _ db: ReconnectingConnection, _ store: JobStore,
                                             queue: String, url: DatabaseURL) async throws -> [String] {
        let killed: Int64 = try await database.scalar(
            "SELECT count(pg_terminate_backend(pid, 5000))::int8 FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")
        #expect(killed >= 1)
        var outcomes: [String] = []
        for _ in 0..<3 {
            do {
                _ = try await store.enqueue(NewJob(queue: queue, kind: "k"), on: db)
                outcomes.append("ok")
            } catch {
                let explained = url.explain(error)
                outcomes.append((explained as? QueueError)?.code ?? (explained as? DatabaseServerError)?.sqlState ?? "\(explained)")
            }
        }
        return outcomes
    }

    /// Messages of the protocol, built and read for the handler's tests on an EmbeddedChannel.
    enum Wire {
        static func message(_ type: Character, _ build: (inout ByteBuffer) -> Void = { _ in }) -> ByteBuffer {
            var body = ByteBuffer()
            build(&body)
            var out = ByteBuffer()
            out.writeInteger(type.asciiValue!)
            out.writeInteger(Int32(body.readableBytes + 4))
            out.writeBuffer(&body)
            return out
        }

        /// The type of each message written, the SQL of each Parse, and each Bind's statement
        /// with its first parameter (as text), and for a wake-up whether it has a run-at time.
        static func written(_ buffer: ByteBuffer) -> (types: String, parsed: [String], bound: [String]) {
            var buffer = buffer
            var types = "", parsed: [String] = [], bound: [String] = []
            while let type = buffer.readInteger(as: UInt8.self), let length = buffer.readInteger(as: Int32.self),
                  var body = buffer.readSlice(length: Int(length) - 4) {
                types.append(Character(Unicode.Scalar(type)))
                if type == UInt8(ascii: "P") {
                    _ = body.readNullTerminatedString()
                    parsed.append(body.readNullTerminatedString() ?? "")
                }
                if type == UInt8(ascii: "B") {
                    _ = body.readNullTerminatedString()
                    let statement = body.readNullTerminatedString() ?? ""
                    let formats = Int(body.readInteger(as: Int16.self) ?? 0)
                    body.moveReaderIndex(forwardBy: 2 * formats)
                    _ = body.readInteger(as: Int16.self)
                    let length = Int(body.readInteger(as: Int32.self) ?? -1)
                    var entry = statement + ":" + (length < 0 ? "NULL" : body.readString(length: length) ?? "")
                    if statement == "loco_wake_up_wire" {
                        // The run-at time it checks: none (now) or one (later, maybe).
                        entry += (body.readInteger(as: Int32.self) ?? -1) < 0 ? "@now" : "@later"
                    }
                    bound.append(entry)
                }
            }
            return (types, parsed, bound)
        }

        static func answer(id: Int64, parsed: Bool) -> ByteBuffer {
            var out = ByteBuffer()
            if parsed { out.writeImmutableBuffer(message("1")) }
            out.writeImmutableBuffer(message("2"))
            out.writeImmutableBuffer(message("D") {
                $0.writeInteger(Int16(2)); $0.writeInteger(Int32(8)); $0.writeInteger(id); $0.writeInteger(Int32(9)); $0.writeString("available")
            })
            out.writeImmutableBuffer(message("C") { $0.writeString("INSERT 0 1"); $0.writeInteger(UInt8(0)) })
            out.writeImmutableBuffer(readyForQuery)
            return out
        }

        /// A wake-up's answer: its SELECT's one row (pg_notify returns void) or none.
        static func wokeUp(parsed: Bool) -> ByteBuffer {
            var out = ByteBuffer()
            if parsed { out.writeImmutableBuffer(message("1")) }
            out.writeImmutableBuffer(message("2"))
            out.writeImmutableBuffer(message("C") { $0.writeString("SELECT 1"); $0.writeInteger(UInt8(0)) })
            out.writeImmutableBuffer(readyForQuery)
            return out
        }

        static var readyForQuery: ByteBuffer { message("Z") { $0.writeInteger(UInt8(ascii: "I")) } }
    }

    @Test("every field arrives as given (3 MB of args too), and a unique key held by a live job returns the holder")
    func fields() async throws {
        try await Self.withConnection { database, db, store in
            let runAt = Date(timeIntervalSince1970: 1_900_000_000.123456)
            let job = NewJob(queue: "wire", kind: "wire.check", args: #"{"name":"Zoë ✓","n":[1,2]}"#, priority: -3, runAt: runAt,
                             maxAttempts: 7, uniqueKey: "wire-1")
            let first = try await store.enqueue(job, on: db)
            #expect(first.state == .scheduled && !first.duplicate)
            let row = try await db.run("""
                SELECT queue, kind, args::text, priority::int8, max_attempts::int8, (extract(epoch FROM run_at) * 1000000)::int8, unique_key
                FROM loco_jobs WHERE id = \(first.id)
                """, logger: database.logger).collect().first
            let fields = try #require(row).decode((String, String, String, Int64, Int64, Int64, String).self)
            #expect(fields.0 == "wire" && fields.1 == "wire.check" && fields.2 == #"{"n": [1, 2], "name": "Zoë ✓"}"#)
            #expect(fields.3 == -3 && fields.4 == 7 && fields.5 == 1_900_000_000_123_456 && fields.6 == "wire-1")
            let again = try await store.enqueue(job, on: db)
            #expect(again.id == first.id && again.duplicate)
            let now = try await store.enqueue(NewJob(queue: "wire", kind: "wire.check"), on: db)
            #expect(now.state == .available && now.id > first.id)
            // Args of 3 MB: a Bind written in many pieces.
            let large = #"{"blob":""# + String(repeating: "x", count: 3_000_000) + #""}"#
            let big = try await store.enqueue(NewJob(queue: "wire", kind: "wire.check", args: large), on: db)
            let stored = try await DatabaseConnectionTests.scalar("SELECT octet_length(args->>'blob')::int8 FROM loco_jobs WHERE id = \(big.id)",
                                                                  as: Int64.self, on: db)
            #expect(stored == 3_000_000)
        }
    }

    static let interleavedRequests = 160

    @Test("enqueues and PostgresNIO's own queries (some answering with megabytes), sent at once on one connection, each get their own answer")
    func interleaved() async throws {
        // PostgresNIO runs its queries one after another, each once the one before was read to
        // the end, and the query deadline counts that wait: in a full test run, 200 queries
        // took over 30 s. Fewer requests and a long deadline keep this about answers, not time.
        try await Self.withConnection(queryTimeout: .seconds(300)) { database, db, store in
            let answers = try await withThrowingTaskGroup(of: (Int, Int64).self) { group in
                for index in 0..<Self.interleavedRequests {
                    group.addTask {
                        if index % 2 == 0 {
                            let job = try await store.enqueue(NewJob(queue: "mixed", kind: "k", args: #"{"i":\#(index)}"#), on: db)
                            return (index, job.id)
                        }
                        // Every 25th request or so is a query answering with about 2 MB, so the answers before and after
                        // enqueues arrive cut anywhere across reads.
                        if index % 50 == 1 || index % 50 == 25 {
                            var bytes: Int64 = 0
                            for try await text in try await db.run("SELECT repeat('y', 1000) FROM generate_series(1, 2000)", logger: database.logger)
                                .decode(String.self) { bytes += Int64(text.utf8.count) }
                            return (index, bytes == 2_000_000 ? Int64(index * (index + 1) / 2) : -bytes)
                        }
                        // A query whose answer spans several messages (rows, a notice-free completion).
                        var sum: Int64 = 0
                        for try await value in try await db.run("SELECT g::int8 FROM generate_series(1, \(index)) g", logger: database.logger)
                            .decode(Int64.self) { sum += value }
                        return (index, sum)
                    }
                }
                return try await group.reduce(into: [Int: Int64]()) { $0[$1.0] = $1.1 }
            }
            for index in stride(from: 1, to: Self.interleavedRequests, by: 2) {
                #expect(answers[index] == Int64(index * (index + 1) / 2), "query \(index)")
            }
            // Each enqueue got the id of the job holding its own args.
            for index in stride(from: 0, to: Self.interleavedRequests, by: 2) {
                let id = try #require(answers[index])
                let args = try await DatabaseConnectionTests.scalar("SELECT (args->>'i')::int8 FROM loco_jobs WHERE id = \(id)", as: Int64.self, on: db)
                #expect(args == Int64(index))
            }
        }
    }

    @Test("a session that LISTENs gets its own enqueues' notifications, which arrive inside the answers of their wake-ups")
    func notificationsInsideAnswers() async throws {
        try await Self.withConnection { database, db, store in
            // Each enqueue's wake-up notifies this session before its ReadyForQuery, so the
            // handler must pass those on.
            let payloads = try await Self.heard(50, on: db) {
                for index in 0..<50 { _ = try await store.enqueue(NewJob(queue: "heard-\(index)", kind: "k"), on: db) }
            }
            #expect(payloads == (0..<50).map { "heard-\($0)" })
        }
    }

    @Test("a single enqueue wakes its queue after it committed, in a transaction of its own; a job due later wakes no one")
    func wakeUpAfterCommit() async throws {
        try await Self.withConnection { database, db, store in
            let heard = try await Self.heard(2, on: db) {
                _ = try await store.enqueue(NewJob(queue: "later", kind: "k", runAt: Date() + 3600), on: db)
                _ = try await store.enqueue(NewJob(queue: "keyed", kind: "k", uniqueKey: "keyed-1"), on: db)
                _ = try await store.enqueue(NewJob(queue: "now", kind: "k"), on: db)
            }
            #expect(heard == ["keyed", "now"])
            let states = try await DatabaseConnectionTests.scalar("SELECT string_agg(queue || ':' || state, ',' ORDER BY id) FROM loco_jobs", as: String.self, on: db)
            #expect(states == "later:scheduled,keyed:available,now:available")
        }
    }

    @Test("jobs enqueued in a transaction Loco runs wake their queues once it has committed: a single enqueue, a batch, one whose parent had completed; not a job due later, and not a rolled-back transaction's")
    func wakeUpsAfterTransaction() async throws {
        try await Self.withConnection { database, db, store in
            let parent = try await store.enqueue(NewJob(queue: "parents", kind: "k"), on: db)
            _ = try await db.run("UPDATE loco_jobs SET state = 'completed', finalized_at = now() WHERE id = \(parent.id)", logger: database.logger)
            let listener = ReconnectingConnection(url: database.url, logger: database.logger)
            struct Refused: Error {}
            let heard = try await Self.heard(4, on: listener) {
                await #expect(throws: Refused.self) {
                    try await db.transaction { connection in
                        _ = try await store.enqueue(NewJob(queue: "rolled-back", kind: "k"), on: connection)
                        throw Refused()
                    }
                }
                try await db.transaction { connection in
                    _ = try await store.enqueue(NewJob(queue: "tx-single", kind: "k"), on: connection)
                    _ = try await store.enqueueMany([NewJob(queue: "tx-batch", kind: "k"), NewJob(queue: "tx-batch", kind: "k"),
                                                     NewJob(queue: "tx-later", kind: "k", runAt: Date() + 3600)], on: connection)
                    let child = try await store.enqueue(NewJob(queue: "tx-child", kind: "k", dependsOn: [parent.id]), on: connection)
                    #expect(child.state == .available)
                }
                // Heard last: anything the transaction woke wrongly would come before it.
                _ = try await store.enqueue(NewJob(queue: "after", kind: "k"), on: db)
            }
            #expect(heard.prefix(3).sorted() == ["tx-batch", "tx-child", "tx-single"] && heard.last == "after", "\(heard)")
            let rolledBack = try await DatabaseConnectionTests.scalar("SELECT count(*) FROM loco_jobs WHERE queue = 'rolled-back'", as: Int64.self, on: db)
            #expect(rolledBack == 0)
            await listener.close()
        }
    }

    @Test("a busy producer's wake-ups are owed, one per queue, and sent after the jobs they announce: an idle worker polling every 30 s runs every job within seconds")
    func owedWakeUpsReachWorkers() async throws {
        try await TestDatabase.with { database in
            let runs = Tally<Int64>()
            var handlers = JobHandlers()
            handlers.register(kind: "test.owed") { _, context in runs.record(context.id) }
            var configuration = fastConfiguration([("owed-a", 4), ("owed-b", 4)])
            // A job whose wake-up went missing would wait for this poll, long after the test's wait.
            configuration.pollInterval = .seconds(30)
            // Stretched, so that what is owed hardly depends on the machine's speed: every enqueue after
            // the first is from a busy producer, and its wake-up is owed for 300 ms.
            let producer = ReconnectingConnection(url: database.url, logger: database.logger, connectTimeout: .seconds(5),
                                                  queryTimeout: .seconds(30), usePreparedStatements: true, sessionSettings: [],
                                                  wakeUps: .init(busyGap: .seconds(10), delay: .milliseconds(300)))
            let listener = ReconnectingConnection(url: database.url, logger: database.logger)
            let store = JobStore(logger: database.logger)
            let owedFor = Duration.milliseconds(300)
            let heard = Tally<String>()
            let bursts = NIOLockedValueBox<[Duration]>([])
            try await listener.connection().listen(on: JobStore.channel) { notifications in
                try await withThrowingTaskGroup(of: Void.self) { group in
                    group.addTask { for try await notification in notifications { heard.record(notification.payload) } }
                    try await database.withWorker(configuration, handlers: handlers) { worker in
                        await worker.waitUntilListening()
                        for round in 1...2 {
                            var ids: [Int64] = []
                            let took = try await ContinuousClock().measure {
                                for index in 0..<30 {
                                    let queue = index.isMultiple(of: 2) ? "owed-a" : "owed-b"
                                    ids.append(try await store.enqueue(NewJob(queue: queue, kind: "test.owed"), on: producer).id)
                                }
                            }
                            bursts.withLockedValue { $0.append(took) }
                            let done = try await eventually(timeout: .seconds(20), every: .milliseconds(20)) {
                                try await database.scalar("SELECT count(*) FROM loco_jobs WHERE id = ANY(\(ids)) AND state = 'completed'", as: Int64.self) == 30
                            }
                            #expect(done, "round \(round): not every job ran within 20 s (the poll comes after 30)")
                        }
                    }
                    try await Task.sleep(for: owedFor * 2)  // anything still owed has gone out
                    group.cancelAll()
                }
            }
            // The first job's wake-up went with it; the others were owed, one per queue and
            // timer. A quick burst (under 300 ms) sends 1 + 2 of them, a slow one (a loaded
            // machine) one pair per 300 ms it takes; 60 jobs never need more than that.
            let most = bursts.withLockedValue { $0 }.reduce(0) { most, took in most + 1 + 2 * (Int((took / owedFor).rounded(.up)) + 1) }
            #expect(heard.sequence.first == "owed-a")
            #expect(heard.sequence.count <= most, "\(heard.sequence.count) wake-ups for 60 jobs in bursts of \(bursts.withLockedValue { $0 })")
            #expect(Set(heard.sequence) == ["owed-a", "owed-b"])
            #expect(runs.snapshot.count == 60)
            #expect(runs.snapshot.values.allSatisfy { $0 == 1 })
            await producer.close()
            await listener.close()
        }
    }

    /// Migrates `postgres` and has a session of its own hold NOTIFY's lock (an object lock on
    /// database 0) until it is cancelled: a commit that waits for a standby that never comes
    /// holds every lock it took until then, NOTIFY's among them. Only sessions asking for
    /// synchronous commit wait for it, and only for a transaction that wrote more than its
    /// commit record.
    static func holdNotifyLock(on postgres: PrivatePostgres, admin: ReconnectingConnection)
        async throws -> (holder: ReconnectingConnection, pid: Int32, holding: Task<PostgresRowSequence, any Error>) {
        let logger = TestDatabase.testLogger
        try await Migrator(database: admin, logger: logger).migrate([(QueueSchema.component, QueueSchema.migrations)])
        _ = try await admin.run("ALTER SYSTEM SET synchronous_standby_names = 'nobody'", logger: logger)
        _ = try await admin.run("SELECT pg_reload_conf()", logger: logger)
        let holder = ReconnectingConnection(url: postgres.url, logger: logger, queryTimeout: .seconds(120))
        let pid = try await DatabaseConnectionTests.scalar("SELECT pg_backend_pid()", as: Int32.self, on: holder)
        _ = try await holder.run("SET synchronous_commit = on", logger: logger)
        let holding = Task {
            try await holder.run("INSERT INTO loco_jobs (queue, kind, state) VALUES ('elsewhere', 'k', 'available') RETURNING pg_notify('elsewhere', 'held')",
                                 logger: logger)
        }
        let waiting = try await eventually(timeout: .seconds(20)) {
            try await DatabaseConnectionTests.scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = \(pid) AND wait_event = 'SyncRep'", as: Int64.self, on: admin) == 1
        }
        #expect(waiting, "the holder's commit never waited for the standby")
        return (holder, pid, holding)
    }

    @Test("a single enqueue, and a transaction Loco runs, commit while another session holds NOTIFY's lock; their wake-ups wait for the lock and go out once it is free, or, given up, are logged")
    func enqueueBesideNotifyLock() async throws {
        try await PrivatePostgres.with { postgres in
            let logger = TestDatabase.testLogger
            let admin = ReconnectingConnection(url: postgres.url, logger: logger)
            let (holder, holderPID, holding) = try await Self.holdNotifyLock(on: postgres, admin: admin)

            // The producer's own commits do not wait for a standby (synchronous_commit is off on
            // this cluster, as on every test cluster); its deadline says so if the enqueue hangs.
            let producer = ReconnectingConnection(url: postgres.url, logger: logger, queryTimeout: .seconds(20))
            let producerPID = try await DatabaseConnectionTests.scalar("SELECT pg_backend_pid()", as: Int32.self, on: producer)
            let listener = ReconnectingConnection(url: postgres.url, logger: logger)
            let txProducer = ReconnectingConnection(url: postgres.url, logger: logger, queryTimeout: .seconds(20))
            let txPID = try await DatabaseConnectionTests.scalar("SELECT pg_backend_pid()", as: Int32.self, on: txProducer)
            let heard = try await Self.heard(3, on: listener) {
                let job = try await JobStore(logger: logger).enqueue(NewJob(queue: "beside", kind: "k"), on: producer)
                #expect(job.state == .available)
                // Its wake-up is the one waiting, for NOTIFY's lock (an object lock on database 0).
                let blocked = try await eventually(timeout: .seconds(20)) {
                    try await DatabaseConnectionTests.scalar(
                        "SELECT count(*) FROM pg_locks WHERE pid = \(producerPID) AND NOT granted AND locktype = 'object' AND database = 0",
                        as: Int64.self, on: admin) == 1
                }
                #expect(blocked, "the wake-up did not wait for NOTIFY's lock")

                // A session that waits for no lock long: its job is in, its wake-up given up and logged.
                let log = CapturedLog(level: .warning)
                let impatient = ReconnectingConnection(url: postgres.url, logger: Logger(label: "loco.test") { _ in log }, queryTimeout: .seconds(20))
                _ = try await impatient.run("SET lock_timeout = '200ms'", logger: logger)
                let other = try await JobStore(logger: logger).enqueue(NewJob(queue: "impatient", kind: "k"), on: impatient)
                #expect(other.state == .available)
                let logged = await eventually(timeout: .seconds(20)) { !log.messages.isEmpty }
                #expect(logged && log.detailed.first?.contains("queue=impatient") == true
                        && log.detailed.first?.contains("(SQLSTATE 55P03)") == true, "\(log.detailed)")
                // The same for a transaction Loco runs: it commits, and its wake-up is logged.
                try await impatient.transaction { connection in
                    _ = try await JobStore(logger: logger).enqueue(NewJob(queue: "impatient-tx", kind: "k"), on: connection)
                }
                let loggedAfterCommit = await eventually(timeout: .seconds(20)) { log.messages.count == 2 }
                #expect(loggedAfterCommit && log.detailed.last?.hasPrefix("jobs became available but their queues' workers were not woken") == true
                        && log.detailed.last?.contains("queues=impatient-tx") == true
                        && log.detailed.last?.contains("(SQLSTATE 55P03)") == true
                        && log.detailed.last?.hasSuffix("refused=1") == true, "\(log.detailed)")
                // Refused again within 10 s: counted, not logged (a full NOTIFY queue would log a
                // line for every transaction that enqueued).
                try await impatient.transaction { connection in
                    _ = try await JobStore(logger: logger).enqueue(NewJob(queue: "impatient-tx", kind: "k"), on: connection)
                }
                #expect(log.messages.count == 2, "\(log.detailed)")
                await impatient.close()

                // A transaction Loco runs commits beside the lock too: its jobs' wake-ups go
                // after its commit, and they are what waits.
                let committing = Task {
                    try await txProducer.transaction { connection in
                        _ = try await JobStore(logger: logger).enqueue(NewJob(queue: "in-tx", kind: "k"), on: connection)
                        _ = try await JobStore(logger: logger).enqueueMany([NewJob(queue: "in-tx-batch", kind: "k")], on: connection)
                    }
                }
                let committed = try await eventually(timeout: .seconds(20)) {
                    try await DatabaseConnectionTests.scalar(
                        "SELECT count(*) FROM loco_jobs WHERE queue IN ('in-tx', 'in-tx-batch')", as: Int64.self, on: admin) == 2
                }
                #expect(committed, "the transaction did not commit while another session held NOTIFY's lock")
                let txWaits = try await eventually(timeout: .seconds(20)) {
                    try await DatabaseConnectionTests.scalar(
                        "SELECT count(*) FROM pg_locks WHERE pid = \(txPID) AND NOT granted AND locktype = 'object' AND database = 0",
                        as: Int64.self, on: admin) == 1
                }
                #expect(txWaits, "the transaction's wake-up did not wait for NOTIFY's lock")

                _ = try await admin.run("SELECT pg_cancel_backend(\(holderPID))", logger: logger)
                try await committing.value
            }
            #expect(heard.sorted() == ["beside", "in-tx", "in-tx-batch"])
            _ = try? await holding.value
            let stored = try await DatabaseConnectionTests.scalar("SELECT string_agg(queue, ',' ORDER BY id) FROM loco_jobs", as: String.self, on: admin)
            #expect(stored == "elsewhere,beside,impatient,impatient-tx,impatient-tx,in-tx,in-tx-batch")
            for connection in [admin, holder, producer, listener, txProducer] { await connection.close() }
        }
    }

    @Test("enqueues outside a transaction, single or batched, with the handler or behind a pooler, are in when PostgreSQL refuses their wake-ups: a NOTIFY in their own statement would roll them back at its commit, after answers that said they were in")
    func enqueuesOutsideTransactionsBesideRefusedNotify() async throws {
        try await PrivatePostgres.with { postgres in
            let logger = TestDatabase.testLogger
            let admin = ReconnectingConnection(url: postgres.url, logger: logger)
            // Sessions with a short lock_timeout are refused NOTIFY's lock while it is held.
            let (holder, holderPID, holding) = try await Self.holdNotifyLock(on: postgres, admin: admin)

            let store = JobStore(logger: logger)
            let log = CapturedLog(level: .warning)
            let quiet = Logger(label: "loco.test") { _ in log }
            var pooledURL = postgres.url
            pooledURL.transactionPooler = true
            func impatient(_ url: DatabaseURL) async throws -> ReconnectingConnection {
                let db = ReconnectingConnection(url: url, logger: quiet, queryTimeout: .seconds(20))
                _ = try await db.run("SET lock_timeout = '200ms'", logger: logger)
                return db
            }
            // A NOTIFY in the batch's statement, refused at its commit after its answer, left
            // PostgresNIO waiting for good: the batch was reported unreachable at its deadline,
            // its jobs rolled back.
            var returned: [Int64] = []
            for (url, prefix) in [(postgres.url, "direct"), (pooledURL, "pooled")] {
                let db = try await impatient(url)
                let batch = try await store.enqueueMany((1...3).map { NewJob(queue: "\(prefix)-batch", kind: "k", args: #"{"n":\#($0)}"#) }, on: db)
                #expect(batch.map(\.state) == [.available, .available, .available])
                returned += batch.map(\.id)
                if url.transactionPooler {
                    // Behind a pooler single enqueues go through PostgresNIO, not the handler.
                    returned.append(try await store.enqueue(NewJob(queue: "\(prefix)-single", kind: "k"), on: db).id)
                }
                await db.close()
            }
            let stored = try await DatabaseConnectionTests.scalar(
                "SELECT coalesce(array_agg(id ORDER BY id), '{}') FROM loco_jobs WHERE queue <> 'elsewhere'", as: [Int64].self, on: admin)
            #expect(stored == returned.sorted(), "returned \(returned), stored \(stored)")

            // The statements that make jobs available or ask a running one to stop wake after
            // their commit too: promoting due jobs, retry, resume, cancel, scale and limit
            // changes, and a completion that releases a dependent.
            // Each connection logs one refusal in 10 s: the cancel and the scales get their own,
            // to show what each line says.
            let ops = try await impatient(postgres.url), stopper = try await impatient(postgres.url)
            let scaler = try await impatient(postgres.url)
            func job(_ queue: String, _ state: String, lockedBy: String = "NULL, NULL") async throws -> Int64 {
                try await DatabaseConnectionTests.scalar(
                    "INSERT INTO loco_jobs (queue, kind, state, run_at, locked_by, lease_expires_at) VALUES ('\(queue)', 'k', '\(state)', now() - interval '1 second', \(lockedBy)) RETURNING id",
                    as: Int64.self, on: admin)
            }
            let due = try await job("due", "scheduled")
            let failed = try await job("again", "failed")
            let running = try await job("stop", "running", lockedBy: "'w', now() + interval '1 hour'")
            #expect(try await store.promoteDue(limit: 10, on: ops) == 1)
            try await store.retry(id: failed, on: ops)
            #expect(try await store.cancel(id: running, on: stopper) == .running)
            _ = try await store.pause(queue: "paused", by: nil, on: ops)
            #expect(try await store.resume(queue: "paused", on: ops))
            #expect(try await store.scale(queue: "paused", to: 3, on: scaler).concurrency == 3)
            #expect(try await store.resetScale(queue: "paused", on: scaler))
            #expect(try await store.limit(queue: "paused", to: 4, on: scaler).limit == 4)
            #expect(try await store.removeLimit(queue: "paused", on: scaler))
            // Completing a job releases its dependent, whose queue is woken after the commit.
            let parent = try await job("parent", "running", lockedBy: "'w', now() + interval '1 hour'")
            let child = try await job("child", "blocked")
            _ = try await admin.run("UPDATE loco_jobs SET has_dependents = true, attempt = 1 WHERE id = \(parent)", logger: logger)
            _ = try await admin.run("UPDATE loco_jobs SET pending_deps = 1 WHERE id = \(child)", logger: logger)
            _ = try await admin.run("INSERT INTO loco_job_dependencies (job_id, depends_on) VALUES (\(child), \(parent))", logger: logger)
            let recorded = try await store.record([JobOutcome(id: parent, attempt: 1, state: .completed, hasDependents: true)], worker: "w", on: ops)
            #expect(recorded[parent] == .completed)
            let states = try await DatabaseConnectionTests.scalar(
                "SELECT string_agg(state || ':' || cancel_requested, ',' ORDER BY id) FROM loco_jobs WHERE id IN (\(due), \(failed), \(running), \(parent), \(child))",
                as: String.self, on: admin)
            #expect(states == "available:false,available:false,running:true,completed:false,available:false")
            #expect(try await DatabaseConnectionTests.scalar("SELECT count(*) FROM loco_queue_pauses", as: Int64.self, on: admin) == 0)
            for db in [ops, stopper, scaler] { await db.close() }
            // Two batch connections and the promotion's: jobs available; the cancel's and the
            // scales': what those workers were not told, and when they find out anyway.
            let refusedLogged = await eventually(timeout: .seconds(20)) { log.detailed.count >= 5 }
            let lines = log.detailed
            #expect(refusedLogged && lines.allSatisfy { $0.contains("SQLSTATE 55P03") }, "\(lines)")
            #expect(lines.filter { $0.hasPrefix("jobs became available but their queues' workers were not woken") }.count == 3, "\(lines)")
            #expect(lines.contains { $0.hasPrefix("the cancel of running job \(running) was recorded but its worker was not told; it sees the request at the job's next heartbeat") }, "\(lines)")
            #expect(lines.contains { $0.hasPrefix("the scale or limit of queue paused changed but its workers were not told") }, "\(lines)")

            _ = try await admin.run("SELECT pg_cancel_backend(\(holderPID))", logger: logger)
            _ = try? await holding.value
            for connection in [admin, holder] { await connection.close() }
        }
    }

    @Test("a refused wake-up's line says what its workers were not told and how they find out: jobs at the next poll, a running job's cancel at its next heartbeat, a queue's scale or limit at the next periodic read")
    func refusedWakeUpWording() {
        #expect(WakeUpsAfterCommit.unannounced(["build", "push"])
                == "jobs became available but their queues' workers were not woken; idle ones find them at their next poll")
        #expect(WakeUpsAfterCommit.unannounced(["cancel:7", "cancel:9"])
                == "the cancel of running job 7, 9 was recorded but its worker was not told; it sees the request at the job's next heartbeat")
        #expect(WakeUpsAfterCommit.unannounced(["scale:build"])
                == "the scale or limit of queue build changed but its workers were not told; they read it at their next periodic read (every 5 s by default)")
        let mixed = WakeUpsAfterCommit.unannounced(["build", "cancel:7", "scale:push"])
        #expect(mixed.hasPrefix("jobs became available") && mixed.contains("; and the cancel of running job 7") && mixed.contains("; and the scale or limit of queue push"))
    }

    @Test("an enqueue and its wake-up go in one write as two requests, each with its own Sync; the enqueue's answer does not wait for the wake-up's, and a wake-up that fails fails nothing and is logged, at most every 10 s")
    func wakeUpOnTheWire() throws {
        let outcomes = NIOLockedValueBox<[Int64]>([])
        let channel = EmbeddedChannel()
        let log = CapturedLog(level: .debug)
        let handler = SingleEnqueueHandler(logger: Logger(label: "loco.test") { _ in log })
        try channel.pipeline.syncOperations.addHandler(handler)
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 5432)).wait()

        handler.enqueue(NewJob(queue: "q", kind: "k")).whenSuccess { row in outcomes.withLockedValue { $0.append(row?.id ?? -1) } }
        let first = Wire.written(try #require(try channel.readOutbound(as: ByteBuffer.self)))
        #expect(first.types == "PBESPBES")
        #expect(first.parsed.count == 2 && !first.parsed[0].contains("pg_notify") && first.parsed[0].hasPrefix("INSERT INTO loco_jobs"))
        #expect(first.parsed.last == JobStatements.wakeUp)
        try channel.writeInbound(Wire.answer(id: 7, parsed: true))
        #expect(outcomes.withLockedValue { $0 } == [7])
        // The wake-up's answer: PostgreSQL refused it. The enqueue it followed stands.
        var refused = Wire.message("1")
        refused.writeImmutableBuffer(Wire.message("E") {
            for (field, value) in [("S", "ERROR"), ("C", "54000"), ("M", "too many notifications in the NOTIFY queue")] {
                $0.writeInteger(Character(field).asciiValue!); $0.writeString(value); $0.writeInteger(UInt8(0))
            }
            $0.writeInteger(UInt8(0))
        })
        refused.writeImmutableBuffer(Wire.message("Z") { $0.writeInteger(UInt8(ascii: "I")) })
        try channel.writeInbound(refused)
        #expect(log.detailed == [
            "a job was enqueued but its queue's workers were not woken; idle ones find it at their next poll "
                + "error=PostgreSQL said: too many notifications in the NOTIFY queue (SQLSTATE 54000) queue=q refused=1",
        ])

        // The next enqueue, from a producer idle since, prepares nothing again, and its answer is its own.
        channel.embeddedEventLoop.advanceTime(by: SingleEnqueueHandler.WakeUpTiming.standard.busyGap)
        handler.enqueue(NewJob(queue: "q", kind: "k")).whenSuccess { row in outcomes.withLockedValue { $0.append(row?.id ?? -1) } }
        #expect(Wire.written(try #require(try channel.readOutbound(as: ByteBuffer.self))).types == "BESBES")
        var both = Wire.answer(id: 8, parsed: false)
        refused.moveReaderIndex(forwardBy: 5)  // no ParseComplete this time
        both.writeImmutableBuffer(refused)
        try channel.writeInbound(both)
        #expect(outcomes.withLockedValue { $0 } == [7, 8])
        // Refused again within 10 s: counted, not logged.
        #expect(log.messages.count == 1)
        // Nothing was passed on to PostgresNIO.
        #expect(try channel.readInbound(as: ByteBuffer.self) == nil)
        _ = try? channel.finish()
    }

    @Test("a producer that enqueues again right away owes its wake-ups: one per queue, sent a millisecond after the first was owed, after the inserts they announce; an idle producer's goes with its job")
    func owedWakeUpsOnTheWire() throws {
        let channel = EmbeddedChannel()
        let handler = SingleEnqueueHandler(logger: Logger(label: "loco.test"))
        try channel.pipeline.syncOperations.addHandler(handler)
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 5432)).wait()
        let loop = channel.embeddedEventLoop
        func nextWrite() throws -> (types: String, parsed: [String], bound: [String])? {
            try channel.readOutbound(as: ByteBuffer.self).map(Wire.written)
        }
        let insert = "loco_enqueue_one_wire", wakeUp = "loco_wake_up_wire"

        // Idle: the wake-up goes with the job.
        _ = handler.enqueue(NewJob(queue: "a", kind: "k"))
        #expect(try nextWrite()?.bound == ["\(insert):a", "\(wakeUp):a@now"])
        var answers = Wire.answer(id: 1, parsed: true)
        answers.writeImmutableBuffer(Wire.wokeUp(parsed: true))
        try channel.writeInbound(answers)

        // Right after that answer, and then with an enqueue still unanswered: busy. Only the
        // inserts are written; the wake-ups are owed, one per queue.
        _ = handler.enqueue(NewJob(queue: "b", kind: "k"))
        _ = handler.enqueue(NewJob(queue: "a", kind: "k"))
        _ = handler.enqueue(NewJob(queue: "b", kind: "k"))
        #expect(try nextWrite()?.bound == ["\(insert):b"])
        #expect(try nextWrite()?.bound == ["\(insert):a"])
        #expect(try nextWrite()?.bound == ["\(insert):b"])
        loop.advanceTime(by: SingleEnqueueHandler.WakeUpTiming.standard.delay - .microseconds(1))
        #expect(try nextWrite() == nil)
        // A millisecond after the first was owed: both, in one write, in the order owed.
        loop.advanceTime(by: .microseconds(1))
        let owed = try #require(try nextWrite())
        #expect(owed.types == "BESBES" && owed.bound == ["\(wakeUp):b@now", "\(wakeUp):a@now"])
        #expect(try nextWrite() == nil)
        answers = Wire.answer(id: 2, parsed: false)
        answers.writeImmutableBuffer(Wire.answer(id: 3, parsed: false))
        answers.writeImmutableBuffer(Wire.answer(id: 4, parsed: false))
        answers.writeImmutableBuffer(Wire.wokeUp(parsed: false))
        answers.writeImmutableBuffer(Wire.wokeUp(parsed: false))
        try channel.writeInbound(answers)

        // Owed again; then an idle producer's enqueue takes the owed wake-up with its own, and
        // no timer sends it a second time.
        _ = handler.enqueue(NewJob(queue: "c", kind: "k"))
        #expect(try nextWrite()?.bound == ["\(insert):c"])
        try channel.writeInbound(Wire.answer(id: 5, parsed: false))
        loop.advanceTime(by: SingleEnqueueHandler.WakeUpTiming.standard.busyGap)
        #expect(try nextWrite() == nil)
        _ = handler.enqueue(NewJob(queue: "d", kind: "k"))
        #expect(try nextWrite()?.bound == ["\(insert):d", "\(wakeUp):c@now", "\(wakeUp):d@now"])
        loop.advanceTime(by: .seconds(1))
        #expect(try nextWrite() == nil)
        answers = Wire.answer(id: 6, parsed: false)
        answers.writeImmutableBuffer(Wire.wokeUp(parsed: false))
        answers.writeImmutableBuffer(Wire.wokeUp(parsed: false))
        try channel.writeInbound(answers)

        // A job due later and one due now in the same queue: one wake-up, with the earlier
        // run-at (none: now), which the server checks.
        loop.advanceTime(by: SingleEnqueueHandler.WakeUpTiming.standard.busyGap)
        _ = handler.enqueue(NewJob(queue: "e", kind: "k", runAt: Date() + 3600))
        #expect(try nextWrite()?.bound == ["\(insert):e", "\(wakeUp):e@later"])
        try channel.writeInbound(Wire.answer(id: 7, parsed: false))
        _ = handler.enqueue(NewJob(queue: "e", kind: "k", runAt: Date() + 3600))
        _ = handler.enqueue(NewJob(queue: "e", kind: "k"))
        _ = handler.enqueue(NewJob(queue: "e", kind: "k", runAt: Date() + 60))
        for _ in 0..<3 { #expect(try nextWrite()?.bound == ["\(insert):e"]) }
        loop.advanceTime(by: SingleEnqueueHandler.WakeUpTiming.standard.delay)
        let due = try #require(try nextWrite())
        #expect(due.bound == ["\(wakeUp):e@now"])

        // The session ends with a wake-up owed: it is dropped (the poll finds its job), and
        // nothing is written after.
        _ = handler.enqueue(NewJob(queue: "f", kind: "k"))
        #expect(try nextWrite()?.bound == ["\(insert):f"])
        _ = try? channel.finish()
        loop.advanceTime(by: .seconds(1))
        #expect(try nextWrite() == nil)
    }

    @Test("with busy_poll, single enqueues poll their socket for the answers, over TCP and the Unix socket: every job is in, most answers are found by polling, a killed session reconnects, an enqueue under way on a killed session fails and is counted off, and producers sharing an event loop all finish")
    func busyPolling() async throws {
        try await TestDatabase.with(migrations: [(QueueSchema.component, QueueSchema.migrations)]) { database in
            guard let text = ProcessInfo.processInfo.environment["LOCO_DATABASE_SOCKET_URL"] else {
                throw TestSetupError("LOCO_DATABASE_SOCKET_URL is not set; scripts/test exports it (scripts/services start prints it)")
            }
            var tcp = database.url
            tcp.busyPoll = .milliseconds(10)
            var socket = try DatabaseURL(text).with(database: database.url.database)
            socket.busyPoll = .milliseconds(10)
            let store = JobStore(logger: database.logger)
            var expected = ["shared=400"]
            for (queue, url) in [("tcp", tcp), ("socket", socket)] {
                let db = ReconnectingConnection(url: url, logger: database.logger)
                let run = { () async throws -> Int in
                    let polled = try await db.pinned {
                        for _ in 0..<200 { _ = try await store.enqueue(NewJob(queue: queue, kind: "k"), on: db) }
                        return try await db.answersFoundPolling()
                    }
                    // A round trip takes well under a millisecond here: unless the machine is
                    // badly overloaded, nearly every answer lands while its enqueue polls.
                    #expect(polled >= 100, "\(queue): \(polled) of 200 answers found by polling")

                    let outcomes = try await Self.enqueuesAfterKillingSessions(database, db, store, queue: queue, url: url)
                    #expect(outcomes.last == "ok" && outcomes.allSatisfy { ["ok", "database_unreachable"].contains($0) }, "\(queue): \(outcomes)")
                    let afterwards = try await db.pinned {
                        for _ in 0..<50 { _ = try await store.enqueue(NewJob(queue: queue, kind: "k"), on: db) }
                        return try await db.answersFoundPolling()
                    }
                    #expect(afterwards >= 25, "\(queue), reconnected: \(afterwards) of 50 answers found by polling")
                    return 250 + outcomes.count { $0 == "ok" }
                }
                do {
                    expected.append("\(queue)=\(try await run())")
                    await db.close()
                } catch {
                    await db.close()
                    throw error
                }
            }

            // Four producers on the machine's event loops (two here): where two share one, only
            // one of them may poll at a time, and none waits on another's polling for long.
            let producers = (0..<4).map { _ in ReconnectingConnection(url: tcp, logger: database.logger) }
            do {
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for producer in producers {
                        group.addTask {
                            try await producer.pinned { for _ in 0..<100 { _ = try await store.enqueue(NewJob(queue: "shared", kind: "k"), on: producer) } }
                        }
                    }
                    try await group.waitForAll()
                }
                for producer in producers { await producer.close() }
            } catch {
                for producer in producers { await producer.close() }
                throw error
            }

            // An enqueue under way (waiting for a lock) when its session is killed fails.
            let blocked = ReconnectingConnection(url: tcp, logger: database.logger)
            do {
                _ = try await store.enqueue(NewJob(queue: "blocked", kind: "k"), on: blocked)
                var pid: Int32 = 0
                for try await value in try await blocked.run("SELECT pg_backend_pid()", logger: database.logger).decode(Int32.self) { pid = value }
                let failure: String = try await database.client.transaction(timeLimit: .seconds(30)) { tx in
                    _ = try await tx.query("LOCK TABLE loco_jobs IN EXCLUSIVE MODE", logger: database.logger)
                    let waiting = Task { try await store.enqueue(NewJob(queue: "blocked", kind: "k"), on: blocked) }
                    let waits = try await eventually {
                        try await database.scalar("SELECT count(*)::int8 FROM pg_stat_activity WHERE pid = \(pid) AND wait_event_type = 'Lock'") as Int64 == 1
                    }
                    #expect(waits, "the enqueue never waited for the lock")
                    _ = try await tx.query("SELECT pg_terminate_backend(\(pid), 5000)", logger: database.logger)
                    switch await waiting.result {
                    case .success: return "succeeded"
                    case .failure(let error): return (tcp.explain(error) as? QueueError)?.code ?? "\(error)"
                    }
                }
                #expect(failure == "database_unreachable")
                await blocked.close()
            } catch {
                await blocked.close()
                throw error
            }
            expected.append("blocked=1")

            // Every enqueue under way was counted off again, answered or failed with its session:
            // a count left behind would stop polling on its event loop for good.
            let left = PostgresConnection.defaultEventLoopGroup.makeIterator().map { BusyPoll.underWay(on: $0) }
            #expect(left.allSatisfy { $0 == 0 }, "enqueues still counted as under way, by event loop: \(left)")

            let counts: String = try await database.scalar(
                "SELECT string_agg(queue || '=' || n, ' ' ORDER BY queue) FROM (SELECT queue, count(*) AS n FROM loco_jobs GROUP BY queue) c")
            // An enqueue that failed on the killed session (gone before the enqueues: the kill
            // waited for it) never ran.
            #expect(counts == expected.sorted().joined(separator: " "))
        }
    }

    @Test("a failed enqueue says PostgreSQL's words; the statement is prepared again once the table exists; a killed session reconnects")
    func failures() async throws {
        try await Self.withConnection(migrated: false) { database, db, store in
            let missing = await #expect(throws: DatabaseServerError.self) {
                try await store.enqueue(NewJob(queue: "q", kind: "k"), on: db)
            }
            #expect(missing?.sqlState == "42P01")
            try await Migrator(database: db, logger: database.logger).migrate([(QueueSchema.component, QueueSchema.migrations)])
            let job = try await store.enqueue(NewJob(queue: "q", kind: "k"), on: db)
            #expect(job.state == .available)

            // The server ends the session: the next enqueue is told so, the one after reconnects.
            let outcomes = try await Self.enqueuesAfterKillingSessions(database, db, store, queue: "q", url: database.url)
            #expect(outcomes.last == "ok", "\(outcomes)")
            #expect(outcomes.allSatisfy { ["ok", "database_unreachable"].contains($0) }, "\(outcomes)")
        }
    }

    @Test("PostgreSQL's errors name their next step where the SQLSTATE says what it is: a read-only database (a standby), a full NOTIFY queue")
    func hintsBySQLState() async throws {
        // A read-only database, for real: the handler's enqueue, a batch through PostgresNIO,
        // and an enqueue inside a transaction all say so.
        try await TestDatabase.with(migrations: [(QueueSchema.component, QueueSchema.migrations)]) { database in
            let db = ReconnectingConnection(url: database.url, logger: database.logger,
                                            sessionSettings: [(name: "default_transaction_read_only", value: "on")])
            let store = JobStore(logger: database.logger)
            var refusals: [DatabaseServerError?] = []
            refusals.append(await #expect(throws: DatabaseServerError.self) { try await store.enqueue(NewJob(queue: "q", kind: "k"), on: db) })
            refusals.append(await #expect(throws: DatabaseServerError.self) { try await store.enqueueMany([NewJob(queue: "q", kind: "k")], on: db) })
            refusals.append(await #expect(throws: DatabaseServerError.self) {
                try await db.transaction { connection in try await store.enqueue(NewJob(queue: "q", kind: "k"), on: connection) }
            })
            for refusal in refusals {
                #expect(refusal?.sqlState == "25006")
                #expect(refusal?.hint == "This database refuses writes: the URL points at a read-only standby, or default_transaction_read_only is on. "
                    + "Point the database URL at the primary.")
            }
            await db.close()
        }
        // A full NOTIFY queue cannot be made here (8 GB); its answer is fed to the handler.
        let channel = EmbeddedChannel()
        let handler = SingleEnqueueHandler(logger: Logger(label: "loco.test"))
        try channel.pipeline.syncOperations.addHandler(handler)
        try await channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 5432)).get()
        let failure = NIOLockedValueBox<DatabaseServerError?>(nil)
        handler.enqueue(NewJob(queue: "q", kind: "k")).whenFailure { error in failure.withLockedValue { $0 = error as? DatabaseServerError } }
        var answer = Wire.message("1")
        answer.writeImmutableBuffer(Wire.message("E") {
            for (field, value) in [("S", "ERROR"), ("C", "54000"), ("M", "too many notifications in the NOTIFY queue")] {
                $0.writeInteger(Character(field).asciiValue!); $0.writeString(value); $0.writeInteger(UInt8(0))
            }
            $0.writeInteger(UInt8(0))
        })
        answer.writeImmutableBuffer(Wire.readyForQuery)
        try channel.writeInbound(answer)
        let full = try #require(failure.withLockedValue { $0 })
        #expect(full.code == "database_error" && full.sqlState == "54000")
        #expect(full.hint.hasPrefix("PostgreSQL's NOTIFY queue is full: a session that ran LISTEN sits in a long transaction and holds it."))
        #expect(full.hint.contains("pg_terminate_backend"))
        // Another program limit keeps the general next step.
        #expect(DatabaseServerError.hint(sqlState: "54000", serverMessage: "row is too big") == DatabaseServerError.nextStep)
        _ = try? channel.finish()
    }

    @Test("a loco_jobs table altered by hand: an integer id still reads; rows Loco cannot read are schema_mismatch, coded, through the handler and through PostgresNIO")
    func alteredTable() async throws {
        try await Self.withConnection { database, db, store in
            // Changed before this connection's first enqueue prepares the statement.
            _ = try await database.client.query("ALTER TABLE loco_jobs ALTER COLUMN id TYPE integer")
            let job = try await store.enqueue(NewJob(queue: "altered", kind: "k", args: #"{"n":1}"#), on: db)
            let stored = try await DatabaseConnectionTests.scalar("SELECT (args->>'n')::int8 FROM loco_jobs WHERE id = \(job.id)", as: Int64.self, on: db)
            #expect(job.id > 0 && job.state == .available && stored == 1)

            // A column PostgresNIO cannot decode, on a read: the column and the types, no value.
            _ = try await database.client.query("ALTER TABLE loco_jobs ALTER COLUMN priority TYPE text")
            let mismatch = await #expect(throws: QueueError.self) { try await store.job(id: job.id, on: db) }
            #expect(mismatch?.code == "schema_mismatch", "\(String(describing: mismatch))")
            #expect(mismatch?.message.contains("column 'priority'") == true, "\(mismatch?.message ?? "")")
            #expect(mismatch?.hint.contains("locod migrate sql") == true)
        }
        // Rows of another shape than the enqueue statement's, as the handler reads them.
        func row(_ build: (inout ByteBuffer) -> Void) -> Result<(id: Int64, state: String), QueueError> {
            var body = ByteBuffer()
            build(&body)
            return SingleEnqueueHandler.row(&body)
        }
        let good = row { $0.writeInteger(Int16(3)); $0.writeInteger(Int32(2)); $0.writeInteger(Int16(7)); $0.writeInteger(Int32(9)); $0.writeString("available") }
        #expect((try? good.get())?.id == 7 && (try? good.get())?.state == "available")
        let shapes: [(String, Result<(id: Int64, state: String), QueueError>)] = [
            ("has 1 column(s)", row { $0.writeInteger(Int16(1)); $0.writeInteger(Int32(8)); $0.writeInteger(Int64(1)) }),
            ("came as 16 bytes", row { $0.writeInteger(Int16(3)); $0.writeInteger(Int32(16)); $0.writeBytes([UInt8](repeating: 0, count: 16)) }),
            ("came as NULL, not", row { $0.writeInteger(Int16(3)); $0.writeInteger(Int32(-1)) }),
            ("ends early", row { $0.writeInteger(Int16(3)); $0.writeInteger(Int32(8)); $0.writeInteger(Int32(1)) }),
            ("state came as NULL", row { $0.writeInteger(Int16(3)); $0.writeInteger(Int32(8)); $0.writeInteger(Int64(1)); $0.writeInteger(Int32(-1)) }),
        ]
        for (expected, result) in shapes {
            guard case .failure(let error) = result else {
                Issue.record("read a row that \(expected)")
                continue
            }
            #expect(error.code == "schema_mismatch" && error.message.contains(expected), "\(error.message)")
        }
    }

    @Test("PostgresNIO's writes are counted by the messages the server answers, across writes")
    func outboundCounting() {
        func message(_ type: Character, _ body: [UInt8]) -> [UInt8] {
            let length = UInt32(body.count + 4)
            return [type.asciiValue!] + withUnsafeBytes(of: length.bigEndian, Array.init) + body
        }
        let stream = message("P", Array("SELECT 1".utf8) + [0, 0, 0]) + message("B", [0, 0, 0, 0]) + message("E", [0, 0, 0, 0, 0])
            + message("S", []) + message("Q", Array("SELECT 2".utf8) + [0]) + message("H", []) + message("S", [])
        // Every way of cutting the stream in two gives the same count.
        for cut in 0...stream.count {
            var scanner = OutboundScanner()
            let counted = scanner.answersExpected(from: ByteBuffer(bytes: stream[..<cut]))
                + scanner.answersExpected(from: ByteBuffer(bytes: stream[cut...]))
            #expect(counted == 3, "cut at \(cut)")
        }
        var scanner = OutboundScanner()
        #expect(stream.reduce(0) { $0 + scanner.answersExpected(from: ByteBuffer(bytes: [$1])) } == 3)
    }
}
