import NIOCore
import PostgresNIO

extension ReconnectingConnection {
    /// Runs `body` on the thread of this connection's event loop, so that queries awaited one
    /// after another never change threads.
    ///
    /// Each query already runs on its connection's thread; a caller elsewhere still hands the
    /// query to that thread and is woken on its own afterwards, two thread hops per call that a
    /// producer enqueueing one job at a time can skip (`scripts/bench queue` measures both
    /// ways). `body` shares the thread with this connection's I/O (and other connections on
    /// the same loop), so it must not block; after a reconnect it still runs correctly, only
    /// without the saving.
    public func pinned<T>(_ body: () async throws -> T) async throws -> T {
        let executor = executor(for: try await connection())
        return try await withTaskExecutorPreference(executor) { try await body() }
    }
}

/// A task executor that runs jobs on one NIO event loop.
final class EventLoopTaskExecutor: TaskExecutor, @unchecked Sendable {
    // @unchecked: holds only an event loop, which is itself thread-safe.
    let loop: any EventLoop

    init(_ loop: any EventLoop) { self.loop = loop }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        loop.execute { job.runSynchronously(on: self.asUnownedTaskExecutor()) }
    }
}
