import Glibc
import NIOCore
import NIOPosix
import Synchronization

/// Waiting for an enqueue's answer by polling its socket on the connection's thread, rather than
/// sleeping in the event loop until the kernel wakes it (`busy_poll=MICROSECONDS` in the
/// database URL; off by default).
///
/// On these virtual machines a thread that sleeps for a round trip leaves its CPU halted, and
/// the server's answer has to wake it with an interrupt sent across: a cost several times the
/// client's own work per enqueue (docs/queue-benchmarks.md). A producer that polls its socket
/// for the answer keeps its CPU awake and reads the answer as it lands, at the price of that
/// CPU, up to the budget per enqueue, and of its event loop serving nothing else meanwhile. So
/// it polls only while it is the one connection on its event loop with an enqueue under way,
/// and it yields the CPU at every turn, so that a process woken onto it (the server's backend)
/// runs at once.
struct BusyPoll: Sendable {
    /// The socket, connected by `connect` (NIO does not share its own).
    let descriptor: CInt
    /// How long one enqueue may poll before its thread goes to sleep as usual.
    let budget: Duration

    /// How many connections with busy polling have an enqueue under way, by event loop. Read and
    /// written on that loop's thread only, but kept in one table.
    private static let busyByLoop = Mutex<[ObjectIdentifier: Int]>([:])

    static func began(on loop: any EventLoop) {
        busyByLoop.withLock { $0[ObjectIdentifier(loop), default: 0] += 1 }
    }

    static func ended(on loop: any EventLoop) {
        busyByLoop.withLock { table in
            let key = ObjectIdentifier(loop)
            if let count = table[key], count > 1 { table[key] = count - 1 } else { table[key] = nil }
        }
    }

    static func alone(on loop: any EventLoop) -> Bool {
        underWay(on: loop) <= 1
    }

    static func underWay(on loop: any EventLoop) -> Int {
        busyByLoop.withLock { $0[ObjectIdentifier(loop)] ?? 0 }
    }

    /// Polls the socket until it has something to read (true), `stillWaiting` turns false, or
    /// the budget is spent; the event loop then reads it as usual. Call on the connection's
    /// event loop, with `stillWaiting` false once the session has ended: NIO closes the socket
    /// and tells the handler (`channelInactive`) in one go on that thread, so the descriptor is
    /// still the socket's whenever enqueues are under way.
    func poll(while stillWaiting: () -> Bool) -> Bool {
        let clock = ContinuousClock()
        let until = clock.now.advanced(by: budget)
        var socket = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
        while stillWaiting(), clock.now < until {
            let ready = Glibc.poll(&socket, 1, 0)
            if ready > 0 { return true }
            if ready < 0, errno != EINTR { return false }
            sched_yield()
        }
        return false
    }

    /// The host name resolves to no address (`DatabaseURL.explain` names host and port).
    struct UnresolvedHost: Error {}

    /// A socket connected to `host:port` (each address it resolves to, in turn, as libpq does)
    /// or to the Unix socket at `path`, for `ClientBootstrap.withConnectedSocket`. Blocking: run
    /// it on a thread pool. Fails as NIO's own connect does (`IOError`, `ChannelError.connectTimeout`),
    /// so that `DatabaseURL.explain` says the same.
    static func connect(host: String, port: Int, unixSocketPath path: String?, timeout: TimeAmount) throws -> CInt {
        if let path {
            let descriptor = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard descriptor >= 0 else { throw IOError(errnoCode: errno, reason: "socket") }
            var address = sockaddr_un()
            address.sun_family = sa_family_t(AF_UNIX)
            let bytes = Array(path.utf8)
            guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
                close(descriptor)
                throw IOError(errnoCode: ENAMETOOLONG, reason: "connect")
            }
            withUnsafeMutableBytes(of: &address.sun_path) { raw in
                raw.copyBytes(from: bytes)
                raw[bytes.count] = 0
            }
            let result = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
            guard result == 0 else {
                let code = errno
                close(descriptor)
                throw IOError(errnoCode: code, reason: "connect")
            }
            return descriptor
        }
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var found: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, String(port), &hints, &found) == 0, let first = found else {
            throw UnresolvedHost()
        }
        defer { freeaddrinfo(first) }
        let deadline = NIODeadline.now() + timeout
        var lastError: any Error = UnresolvedHost()
        var next: UnsafeMutablePointer<addrinfo>? = first
        while let entry = next {
            next = entry.pointee.ai_next
            let descriptor = socket(entry.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
            guard descriptor >= 0 else { lastError = IOError(errnoCode: errno, reason: "socket"); continue }
            do {
                try finishConnecting(descriptor, to: entry.pointee, deadline: deadline, timeout: timeout)
                var on: CInt = 1
                _ = setsockopt(descriptor, CInt(IPPROTO_TCP), TCP_NODELAY, &on, socklen_t(MemoryLayout<CInt>.size))
                return descriptor
            } catch {
                close(descriptor)
                lastError = error
                if error is ChannelError { throw error }
            }
        }
        throw lastError
    }

    private static func finishConnecting(_ descriptor: CInt, to entry: addrinfo, deadline: NIODeadline, timeout: TimeAmount) throws {
        if Glibc.connect(descriptor, entry.ai_addr, entry.ai_addrlen) == 0 { return }
        guard errno == EINPROGRESS else { throw IOError(errnoCode: errno, reason: "connect") }
        var socket = pollfd(fd: descriptor, events: Int16(POLLOUT), revents: 0)
        while true {
            let left = deadline - NIODeadline.now()
            guard left > .zero else { throw ChannelError.connectTimeout(timeout) }
            let ready = Glibc.poll(&socket, 1, CInt(max(1, left.nanoseconds / 1_000_000)))
            if ready > 0 { break }
            if ready < 0, errno != EINTR { throw IOError(errnoCode: errno, reason: "poll") }
        }
        var failure: CInt = 0
        var length = socklen_t(MemoryLayout<CInt>.size)
        guard getsockopt(descriptor, SOL_SOCKET, SO_ERROR, &failure, &length) == 0 else { throw IOError(errnoCode: errno, reason: "getsockopt") }
        if failure != 0 { throw IOError(errnoCode: failure, reason: "connect") }
    }
}
