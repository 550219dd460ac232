import Dispatch
import Foundation
import HTTPTypes
import Hummingbird
import LocoCore
import LocoQueue
import Logging
import NIOCore

/// The HTTP API: everything a route needs, and the routes themselves (see `APIRoutes`).
public struct API: Sendable {
    public let database: ConnectionPool
    public let store: CoreStore
    public let contexts: ContextStore
    public let registry: RegistryTokenIssuer?
    public let metrics: APIMetrics
    let principals: PrincipalCache
    let logger: Logger
    /// How often an SSE stream looks for new events.
    let eventPollInterval: Duration
    /// The runtime, as far as the API asks it: apps' output (`/logs`) and containers (`/instances`); nil when none is configured.
    let runtime: (any AppRuntimeView)?

    public init(database: ConnectionPool, contexts: ContextStore, registry: RegistryTokenIssuer?, logger: Logger,
                metrics: APIMetrics = APIMetrics(), eventPollInterval: Duration = .milliseconds(200), runtime: (any AppRuntimeView)? = nil) {
        self.runtime = runtime
        self.database = database
        self.store = CoreStore(logger: logger)
        self.contexts = contexts
        self.registry = registry
        self.metrics = metrics
        self.principals = PrincipalCache()
        self.logger = logger
        self.eventPollInterval = eventPollInterval
    }

    /// The router with every route of `APIRoutes.all`, the error renderer and the metrics.
    public func router() -> Router<BasicRequestContext> {
        let router = Router()
        router.add(middleware: metrics.middleware())
        router.add(middleware: ErrorMiddleware(routes: APIRoutes.all))
        router.add(middleware: StorableQueryMiddleware())
        for route in APIRoutes.all {
            let api = self
            router.on(RouterPath(route.routerPath), method: route.method) { request, context in
                try await route.handler(api, request, context)
            }
        }
        return router
    }

    /// Ends deployments whose jobs died without a result, tells waiting deployments about paused
    /// queues, and deletes the build contexts of deployments that ended. `locod api` runs it
    /// every few seconds; any number of API processes may.
    public func reconcile() async throws {
        let released = try await store.reconcile(on: database)
        try await store.announcePausedStages(on: database)
        try await store.removeContexts(released + store.recentlyReleasedContexts(on: database), from: contexts, on: database)
    }

    /// Deletes stored files no unfinished deployment names (an upload whose submit never
    /// committed, a context whose deployment ended while no API ran), once they are an hour old,
    /// and uploads abandoned half-way. It lists the whole folder, so `locod api` runs it rarely
    /// (every 10 minutes).
    public func sweepContexts() async throws -> Int {
        let contexts = self.contexts
        // Directory listing blocks; keep it off the threads that serve requests.
        let (abandoned, old) = await withCheckedContinuation { continuation in
            DispatchQueue.global(qos: .utility).async {
                continuation.resume(returning: (contexts.sweepIncoming(minimumAge: 3600), contexts.storedDigests(olderThan: 3600)))
            }
        }
        return abandoned + (try await store.removeContexts(old, from: contexts, on: database)).count
    }
}

extension Request {
    func query(_ name: String) -> String? {
        uri.queryParameters[name[...]].map(String.init)
    }
}
