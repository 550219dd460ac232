import Foundation
import Logging
import NIOCore
import PostgresNIO
import Synchronization

/// Sends the single-enqueue statement itself, on a connection PostgresNIO opened and still uses.
///
/// It sits in the channel's pipeline between the socket (or TLS) and PostgresNIO. An enqueue is
/// one Bind/Execute/Sync of a statement it prepared once on the session, followed by the queue's
/// wake-up as a transaction of its own (`JobStatements.wakeUp`, so that enqueues on many
/// connections do not commit one at a time behind NOTIFY's lock); both answers are read here,
/// and the enqueue's caller has its row once the first has come. The wake-up goes in the same
/// write when the producer was idle; from a producer that enqueues again right away it is owed,
/// and one wake-up per queue covers every job enqueued within `WakeUpTiming.delay` (see `owe`).
/// Through `JobStore.enqueue` from a producer pinned to the connection's thread, 8 alternating
/// rounds of 3,000 on one durable cluster: 1.21× the rate of PostgresNIO's future-based
/// prepared statements (median of the rounds' ratios, 1.16–1.27×), whose state machine, row
/// stream and generic decoding this skips (README, "Benchmarks").
///
/// PostgresNIO's own queries pass through untouched. The server answers requests in the order
/// they were written and ends each with one ReadyForQuery, so a list of who wrote each
/// outstanding Sync or Query says whose every answer is: PostgresNIO's bytes go to PostgresNIO,
/// this handler's are read here. Notifications and parameter changes, which belong to no
/// request, always go to PostgresNIO. Used on the connection's event loop only.
final class SingleEnqueueHandler: ChannelDuplexHandler, @unchecked Sendable {
    // @unchecked: every member is touched on the channel's event loop only.
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// The statements it prepares: the insert of `JobStatements.EnqueueOne`, or for a job with a
    /// unique key of `EnqueueUnique`, without their notify; and `JobStatements.wakeUp`.
    private enum Statement: Int, CaseIterable {
        case keyless, unique, wakeUp

        var name: String {
            switch self {
            case .keyless: "loco_enqueue_one_wire"
            case .unique: "loco_enqueue_unique_wire"
            case .wakeUp: "loco_wake_up_wire"
            }
        }

        var sql: String {
            switch self {
            case .keyless: JobStatements.QuietEnqueue<JobStatements.EnqueueOne>.sql
            case .unique: JobStatements.QuietEnqueue<JobStatements.EnqueueUnique>.sql
            case .wakeUp: JobStatements.wakeUp
            }
        }

        /// text, text, text, int8, int8, timestamptz, and for the unique key text; the wake-up's
        /// queue (text) and run-at time (timestamptz). Made once: every Bind counts them.
        private static let parameterTypes: [[UInt32]] = [[25, 25, 25, 20, 20, 1184], [25, 25, 25, 20, 20, 1184, 25], [25, 1184]]
        var parameterTypes: [UInt32] { Self.parameterTypes[rawValue] }
    }

    private enum Owner {
        /// PostgresNIO is waiting for this many ReadyForQuery messages.
        case postgresNIO(Int)
        case enqueue(Request)
    }

    /// Who waits for a request's answer.
    private enum Reply {
        /// An enqueue's caller, for its row.
        case enqueue(EventLoopPromise<(id: Int64, state: String)?>)
        /// No one: the wake-up after an enqueue, whose refusal is logged here.
        case owedWakeUp
        /// The wake-up after a transaction's commit (`wakeUp(_:)`), whose caller logs a refusal.
        case wakeUp(EventLoopPromise<Void>)
    }

    /// An enqueue or a wake-up.
    private final class Request {
        let reply: Reply
        let statement: Statement
        /// The queue a wake-up is for (what its refusal is logged with).
        let queue: String
        let parses: Bool
        var parsed = false
        var row: (id: Int64, state: String)?
        var error: DatabaseServerError?
        var malformed: QueueError?

        init(reply: Reply, statement: Statement, queue: String, parses: Bool) {
            self.reply = reply
            self.statement = statement
            self.queue = queue
            self.parses = parses
        }
    }

    private var context: ChannelHandlerContext?
    private let logger: Logger
    /// Refused wake-ups: a full NOTIFY queue refuses every one, so they are logged at most every
    /// 10 s, with how many were refused.
    private let refusals = RepeatedWarning()
    /// Who wrote each request still unanswered, oldest first; a ring, since answers take from
    /// the front while requests join at the back (many at once on a busy connection).
    private var owners = CircularBuffer<Owner>()
    /// Inbound bytes of a message not yet whole.
    private var partial: ByteBuffer?
    private var outbound = OutboundScanner()
    /// Whether each statement is prepared on this session, or its Parse is on the way.
    private var prepared = Array(repeating: false, count: Statement.allCases.count)

    /// When wake-ups are owed rather than sent with their jobs.
    struct WakeUpTiming: Sendable {
        /// An enqueue that comes this soon after the last one's answer (or while another is on
        /// its way) is from a busy producer: its wake-up is owed. A loop that enqueues comes back
        /// within tens of microseconds; a producer pacing itself at up to a few thousand jobs a
        /// second comes later, and its jobs are announced at once.
        var busyGap: TimeAmount
        /// How long a wake-up may be owed: the most a busy producer's job waits, past its commit,
        /// for its queue's workers to be told.
        var delay: TimeAmount

        static let standard = WakeUpTiming(busyGap: .microseconds(200), delay: .milliseconds(1))
    }
    private let timing: WakeUpTiming
    /// Wake-ups owed, one per queue in the order first owed, with the earliest run-at (nil: now)
    /// of the jobs each covers, and the timer that sends them `timing.delay` after the first.
    private var owed: [(queue: String, runAt: Int64?)] = []
    private var owedTimer: Scheduled<Void>?
    /// Enqueues written and not yet answered, and when the last answer came.
    private var enqueuesUnanswered = 0
    private var lastAnswered: NIODeadline?

    /// Set when the URL asks for busy polling (`BusyPoll`), on the connection's event loop.
    var busyPoll: BusyPoll?
    private var polling = false
    /// Answers that busy polling saw arrive (for the tests).
    private(set) var answersFoundPolling = 0

    init(logger: Logger, wakeUps timing: WakeUpTiming = .standard) {
        self.logger = logger
        self.timing = timing
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        failAll(ConnectionClosed())
        self.context = nil
    }

    // MARK: Enqueue

    /// Enqueues `job` by the insert of `JobStatements.EnqueueOne` or `EnqueueUnique`, and wakes
    /// its queue's workers by `JobStatements.wakeUp` after it (see `owe`); the row the insert
    /// returned (nil when a live job holds its unique key), as soon as its transaction has
    /// committed. Call on the channel's event loop.
    func enqueue(_ job: NewJob) -> EventLoopFuture<(id: Int64, state: String)?> {
        guard let context, context.channel.isActive else {
            return (context?.eventLoop ?? PostgresConnection.defaultEventLoopGroup.any()).makeFailedFuture(ConnectionClosed())
        }
        let statement: Statement = job.uniqueKey == nil ? .keyless : .unique
        let promise = context.eventLoop.makePromise(of: (id: Int64, state: String)?.self)
        var out = context.channel.allocator.buffer(capacity: 220 + job.args.utf8.count + job.queue.utf8.count)
        let runAt = job.runAt.map(Self.postgresMicroseconds)
        write(statement, reply: .enqueue(promise), queue: job.queue, into: &out) { body in
            body.writeParameter(job.queue)
            body.writeParameter(job.kind)
            body.writeParameter(job.args)
            body.writeParameter(Int64(job.priority))
            body.writeParameter(Int64(job.maxAttempts))
            body.writeParameter(runAt)
            if statement == .unique { body.writeParameter(job.uniqueKey) }
        }
        enqueuesUnanswered += 1
        if busyPoll != nil, enqueuesUnanswered == 1 { BusyPoll.began(on: context.eventLoop) }
        owe(job.queue, runAt: runAt, context: context, into: &out)
        context.writeAndFlush(wrapOutboundOut(out), promise: nil)
        pollForAnswer(on: context.eventLoop)
        return promise.futureResult
    }

    /// With busy polling, waits for the answer by polling the socket once the event loop has run
    /// what it has queued (the caller's wait among it); only while no other connection with busy
    /// polling on this loop has an enqueue under way, whose answer it would hold up.
    private func pollForAnswer(on loop: any EventLoop) {
        guard let busyPoll, !polling, BusyPoll.alone(on: loop) else { return }
        polling = true
        loop.execute {
            if busyPoll.poll(while: { self.enqueuesUnanswered > 0 }) { self.answersFoundPolling += 1 }
            self.polling = false
        }
    }

    /// Owes `queue` a wake-up for a job whose insert was just written to `out`, and writes the
    /// wake-ups owed after it when the producer was idle; otherwise a timer sends them
    /// `timing.delay` after the first was owed. A wake-up written after an insert runs after
    /// that insert's commit (one session answers in order), so it announces every job written
    /// before it. Each wake-up is a transaction of its own on the server: a producer that
    /// enqueues in a loop sent as many as jobs, and one pinned producer got 1.06× the jobs a
    /// second with none at all (median of 6 alternating pairs); owing them, it sends about one
    /// a millisecond per queue.
    private func owe(_ queue: String, runAt: Int64?, context: ChannelHandlerContext, into out: inout ByteBuffer) {
        if let index = owed.firstIndex(where: { $0.queue == queue }) {
            if let earlier = owed[index].runAt { owed[index].runAt = runAt.map { min($0, earlier) } }
        } else {
            owed.append((queue, runAt))
        }
        let now = context.eventLoop.now
        let busy = enqueuesUnanswered > 1 || lastAnswered.map { now - $0 < timing.busyGap } ?? false
        guard busy else { return writeOwed(into: &out) }
        if owedTimer == nil {
            owedTimer = context.eventLoop.scheduleTask(in: timing.delay) { [weak self] in self?.sendOwed() }
        }
    }

    /// The timer's end: the wake-ups still owed, in a write of their own.
    private func sendOwed() {
        owedTimer = nil
        guard let context, context.channel.isActive, !owed.isEmpty else { return }
        var out = context.channel.allocator.buffer(capacity: 64 * owed.count)
        writeOwed(into: &out)
        context.writeAndFlush(wrapOutboundOut(out), promise: nil)
    }

    /// Wakes the workers of `queues` now, each by `JobStatements.wakeUp` as a transaction of its
    /// own, all in one write: the wake-ups after the commit of a transaction Loco ran
    /// (`WakeUpsAfterCommit`). The server's refusal of one (at its commit, after its statement's
    /// answer, where PostgresNIO would drop it) fails the future. Call on the channel's event loop.
    func wakeUp(_ queues: [String]) -> EventLoopFuture<Void> {
        guard let context, context.channel.isActive else {
            return (context?.eventLoop ?? PostgresConnection.defaultEventLoopGroup.any()).makeFailedFuture(ConnectionClosed())
        }
        var out = context.channel.allocator.buffer(capacity: 64 * queues.count)
        var answers: [EventLoopFuture<Void>] = []
        for queue in queues {
            let answered = context.eventLoop.makePromise(of: Void.self)
            write(.wakeUp, reply: .wakeUp(answered), queue: queue, into: &out) { body in
                body.writeParameter(queue)
                body.writeParameter(Int64?.none)
            }
            answers.append(answered.futureResult)
        }
        context.writeAndFlush(wrapOutboundOut(out), promise: nil)
        return EventLoopFuture.andAllSucceed(answers, on: context.eventLoop)
    }

    private func writeOwed(into out: inout ByteBuffer) {
        for (queue, runAt) in owed {
            write(.wakeUp, reply: .owedWakeUp, queue: queue, into: &out) { body in
                body.writeParameter(queue)
                body.writeParameter(runAt)
            }
        }
        owed.removeAll(keepingCapacity: true)
        owedTimer?.cancel()
        owedTimer = nil
    }

    /// Appends one request (Parse the first time on the session, Bind, Execute, Sync) to `out`,
    /// and its owner to `owners`.
    private func write(_ statement: Statement, reply: Reply, queue: String,
                       into out: inout ByteBuffer, parameters: (inout ByteBuffer) -> Void) {
        let request = Request(reply: reply, statement: statement, queue: queue, parses: !prepared[statement.rawValue])
        if request.parses {
            Self.message(&out, "P") { body in
                body.writeNullTerminated(statement.name)
                body.writeNullTerminated(statement.sql)
                body.writeInteger(Int16(statement.parameterTypes.count))
                for type in statement.parameterTypes { body.writeInteger(type) }
            }
            prepared[statement.rawValue] = true
        }
        Self.message(&out, "B") { body in
            body.writeNullTerminated("")
            body.writeNullTerminated(statement.name)
            body.writeInteger(Int16(1))
            body.writeInteger(Int16(1))  // every parameter binary
            body.writeInteger(Int16(statement.parameterTypes.count))
            parameters(&body)
            body.writeInteger(Int16(1))
            body.writeInteger(Int16(1))  // every result column binary
        }
        Self.message(&out, "E") { body in
            body.writeNullTerminated("")
            body.writeInteger(Int32(0))
        }
        Self.message(&out, "S") { _ in }
        owners.append(.enqueue(request))
    }

    /// A timestamptz's binary form: microseconds since 2000-01-01 UTC.
    private static func postgresMicroseconds(_ date: Date) -> Int64 {
        Int64(((date.timeIntervalSince1970 - 946_684_800) * 1_000_000).rounded())
    }

    private static func message(_ out: inout ByteBuffer, _ type: Unicode.Scalar, _ body: (inout ByteBuffer) -> Void) {
        out.writeInteger(UInt8(ascii: type))
        let lengthAt = out.writerIndex
        out.writeInteger(Int32(0))
        body(&out)
        out.setInteger(Int32(out.writerIndex - lengthAt), at: lengthAt)
    }

    // MARK: PostgresNIO's writes

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let answers = outbound.answersExpected(from: unwrapOutboundIn(data))
        if answers > 0 {
            if case .postgresNIO(let waiting) = owners.last {
                owners[owners.index(before: owners.endIndex)] = .postgresNIO(waiting + answers)
            } else {
                owners.append(.postgresNIO(answers))
            }
        }
        context.write(data, promise: promise)
    }

    // MARK: The server's answers

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = unwrapInboundIn(data)
        if var held = partial {
            held.writeBuffer(&incoming)
            incoming = held
            partial = nil
        }
        // Read by a cursor: ByteBuffer's get methods see only bytes not yet read. Bytes for
        // PostgresNIO are passed on in runs, not message by message.
        let end = incoming.writerIndex
        var cursor = incoming.readerIndex
        var runStart = cursor
        while end - cursor >= 5,
              let type = incoming.getInteger(at: cursor, as: UInt8.self),
              let length = incoming.getInteger(at: cursor + 1, as: Int32.self).map(Int.init),
              length >= 4, end - cursor >= 1 + length {
            let start = cursor
            cursor += 1 + length
            guard case .enqueue(let request) = owners.first, !Self.belongsToNoRequest(type) else {
                if type == UInt8(ascii: "Z"), case .postgresNIO(let waiting) = owners.first {
                    if waiting > 1 { owners[owners.startIndex] = .postgresNIO(waiting - 1) } else { owners.removeFirst() }
                }
                continue
            }
            forward(incoming.getSlice(at: runStart, length: start - runStart), context: context)
            runStart = cursor
            read(type, body: incoming.getSlice(at: start + 5, length: length - 4) ?? ByteBuffer(), for: request)
        }
        forward(incoming.getSlice(at: runStart, length: cursor - runStart), context: context)
        if cursor < end { partial = incoming.getSlice(at: cursor, length: end - cursor) }
    }

    private func forward(_ bytes: ByteBuffer?, context: ChannelHandlerContext) {
        guard let bytes, bytes.readableBytes > 0 else { return }
        context.fireChannelRead(wrapInboundOut(bytes))
    }

    /// NotificationResponse and ParameterStatus: the server sends them between or within answers.
    private static func belongsToNoRequest(_ type: UInt8) -> Bool {
        type == UInt8(ascii: "A") || type == UInt8(ascii: "S")
    }

    private func read(_ type: UInt8, body: ByteBuffer, for request: Request) {
        var body = body
        switch type {
        case UInt8(ascii: "1"):
            request.parsed = true
        case UInt8(ascii: "D") where request.statement != .wakeUp:
            switch Self.row(&body) {
            case .success(let row): request.row = row
            case .failure(let mismatch): request.malformed = mismatch
            }
        case UInt8(ascii: "E"):
            request.error = DatabaseServerError(fields: Self.errorFields(&body))
        case UInt8(ascii: "Z"):
            owners.removeFirst()
            if request.parses && !request.parsed { prepared[request.statement.rawValue] = false }
            let promise: EventLoopPromise<(id: Int64, state: String)?>
            switch request.reply {
            case .enqueue(let waiting):
                promise = waiting
            case .owedWakeUp:
                // A wake-up that failed is not the enqueue's failure: its job is in, and workers
                // polling find it.
                if let error = request.error { refused(request.queue, error) }
                return
            case .wakeUp(let waiting):
                if let error = request.error { waiting.fail(error) } else { waiting.succeed() }
                return
            }
            enqueuesUnanswered -= 1
            if busyPoll != nil, enqueuesUnanswered == 0, let loop = context?.eventLoop { BusyPoll.ended(on: loop) }
            lastAnswered = context?.eventLoop.now
            if let error = request.error {
                promise.fail(error)
            } else if let malformed = request.malformed {
                promise.fail(malformed)
            } else {
                promise.succeed(request.row)
            }
        default:
            break  // ParseComplete's siblings (BindComplete, CommandComplete) and notices say nothing more
        }
    }

    private func refused(_ queue: String, _ error: DatabaseServerError) {
        guard let refused = refusals.due() else { return }
        logger.warning("a job was enqueued but its queue's workers were not woken; idle ones find it at their next poll",
                       metadata: ["queue": "\(queue)", "error": "\(error.message)", "refused": "\(refused)"])
    }

    /// The enqueue's row: id, state (text), and whether it notified (ignored). The id is read
    /// from two, four or eight bytes, as PostgresNIO reads an Int64 (an id column altered to
    /// integer still works).
    static func row(_ body: inout ByteBuffer) -> Result<(id: Int64, state: String), QueueError> {
        let cut = QueueError.schemaMismatch(reason: "the enqueue's row ends early")
        guard let columns = body.readInteger(as: Int16.self) else { return .failure(cut) }
        guard columns >= 2 else { return .failure(.schemaMismatch(reason: "the enqueue's row has \(columns) column(s), not 3")) }
        guard let idLength = body.readInteger(as: Int32.self) else { return .failure(cut) }
        let id: Int64?
        switch idLength {
        case 8: id = body.readInteger(as: Int64.self)
        case 4: id = body.readInteger(as: Int32.self).map(Int64.init)
        case 2: id = body.readInteger(as: Int16.self).map(Int64.init)
        default:
            let came = idLength < 0 ? "NULL" : "\(idLength) bytes"
            return .failure(.schemaMismatch(reason: "loco_jobs.id came as \(came), not an integer of 2, 4 or 8 bytes"))
        }
        guard let id else { return .failure(cut) }
        guard let length = body.readInteger(as: Int32.self), length >= 0, let state = body.readString(length: Int(length)) else {
            return .failure(.schemaMismatch(reason: "loco_jobs.state came as NULL or cut short"))
        }
        return .success((id, state))
    }

    private static func errorFields(_ body: inout ByteBuffer) -> [PostgresMessage.Error.Field: String] {
        var fields: [PostgresMessage.Error.Field: String] = [:]
        while let code = body.readInteger(as: UInt8.self), code != 0, let value = body.readNullTerminatedString() {
            if let field = PostgresMessage.Error.Field(rawValue: code) { fields[field] = value }
        }
        return fields
    }

    // MARK: The end of the session

    func channelInactive(context: ChannelHandlerContext) {
        failAll(ConnectionClosed())
        context.fireChannelInactive()
    }

    /// Fails every enqueue still waiting; one whose answer had begun with a server error (a
    /// FATAL before the close) fails with it.
    private func failAll(_ error: any Error) {
        let waiting = owners
        owners.removeAll()
        prepared = Array(repeating: false, count: Statement.allCases.count)
        // Wake-ups owed die with the session: their jobs are in, and the poll finds them.
        owed.removeAll()
        owedTimer?.cancel()
        owedTimer = nil
        if busyPoll != nil, enqueuesUnanswered > 0, let loop = context?.eventLoop { BusyPoll.ended(on: loop) }
        enqueuesUnanswered = 0
        for case .enqueue(let request) in waiting {
            switch request.reply {
            case .enqueue(let promise): promise.fail(request.error ?? error)
            case .wakeUp(let promise): promise.fail(request.error ?? error)
            case .owedWakeUp: break
            }
        }
    }
}

/// Counts the messages in PostgresNIO's writes that the server answers with ReadyForQuery (Sync,
/// Query, FunctionCall), following messages across writes.
struct OutboundScanner {
    /// Bytes of the current message still to come in later writes.
    private var skip = 0
    /// The start of a message whose five-byte header was cut by the end of a write.
    private var header: [UInt8] = []

    mutating func answersExpected(from buffer: ByteBuffer) -> Int {
        var answers = 0
        var bytes = buffer.readableBytesView[...]
        while !bytes.isEmpty {
            if skip > 0 {
                let taken = min(skip, bytes.count)
                bytes = bytes.dropFirst(taken)
                skip -= taken
                continue
            }
            let needed = 5 - header.count
            header.append(contentsOf: bytes.prefix(needed))
            bytes = bytes.dropFirst(needed)
            guard header.count == 5 else { break }
            let type = header[0]
            let length = Int(header[1]) << 24 | Int(header[2]) << 16 | Int(header[3]) << 8 | Int(header[4])
            header = []
            skip = max(length - 4, 0)
            if type == UInt8(ascii: "S") || type == UInt8(ascii: "Q") || type == UInt8(ascii: "F") { answers += 1 }
        }
        return answers
    }
}

private extension ByteBuffer {
    mutating func writeNullTerminated(_ string: String) {
        writeString(string)
        writeInteger(UInt8(0))
    }

    mutating func writeParameter(_ string: String?) {
        guard let string else {
            writeInteger(Int32(-1))
            return
        }
        let lengthAt = writerIndex
        writeInteger(Int32(0))
        let written = writeString(string)
        setInteger(Int32(written), at: lengthAt)
    }

    mutating func writeParameter(_ value: Int64?) {
        guard let value else {
            writeInteger(Int32(-1))
            return
        }
        writeInteger(Int32(8))
        writeInteger(value)
    }
}

/// The single-enqueue handler of a `ReconnectingConnection`'s current connection; a class, so the
/// connect task can fill it in without holding the connection object.
final class SingleEnqueueSlot: Sendable {
    private let current = Mutex<(connection: PostgresConnection, handler: SingleEnqueueHandler)?>(nil)

    func set(_ connection: PostgresConnection, _ handler: SingleEnqueueHandler) {
        current.withLock { $0 = (connection, handler) }
    }

    /// The handler in `connection`'s pipeline, if it is the one this slot holds.
    func handler(for connection: PostgresConnection) -> SingleEnqueueHandler? {
        current.withLock { $0?.connection === connection ? $0?.handler : nil }
    }

    var connection: PostgresConnection? { current.withLock { $0?.connection } }
}
