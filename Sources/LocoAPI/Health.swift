import Foundation
import Hummingbird
import LocoCore
import LocoQueue
import NIOCore
import PostgresNIO
import Prometheus

/// The API's own Prometheus metrics: requests by route and status, their duration, submits.
public final class APIMetrics: Sendable {
    public let registry: PrometheusCollectorRegistry
    let deploymentsSubmitted: Prometheus.Counter

    static let buckets: [Duration] = [
        .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10), .milliseconds(20), .milliseconds(50),
        .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1), .seconds(5),
    ]

    public init(registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry()) {
        self.registry = registry
        deploymentsSubmitted = registry.makeCounter(descriptor: MetricNameDescriptor(
            namespace: "loco", subsystem: "api", metricName: "deployments_submitted", unitName: "total", helpText: "Deployments accepted."))
    }

    func record(method: String, route: String, status: Int, duration: Duration) {
        let labels = [("method", method), ("route", route), ("status", "\(status)")]
        registry.makeCounter(descriptor: MetricNameDescriptor(namespace: "loco", subsystem: "api", metricName: "requests", unitName: "total",
                                                              helpText: "HTTP requests by route and status."), labels: labels).increment()
        registry.makeDurationHistogram(descriptor: MetricNameDescriptor(namespace: "loco", subsystem: "api", metricName: "request_duration",
                                                                        unitName: "seconds", helpText: "Time to the response head, by route."),
                                       labels: [("route", route)], buckets: Self.buckets).record(duration)
    }

    /// A serving container the local runtime's supervisor started again (`app` is team/app).
    public func recordRestart(app: String, service: String) {
        registry.makeCounter(descriptor: MetricNameDescriptor(namespace: "loco", subsystem: "api", metricName: "container_restarts", unitName: "total",
                                                              helpText: "Serving containers started again after they exited (local runtime)."),
                             labels: [("app", app), ("service", service)]).increment()
    }

    func middleware() -> some RouterMiddleware<BasicRequestContext> { RequestMetricsMiddleware(metrics: self) }

    public func render() -> String {
        var buffer: [UInt8] = []
        registry.emit(into: &buffer)
        return String(decoding: buffer, as: UTF8.self)
    }
}

struct RequestMetricsMiddleware: RouterMiddleware {
    typealias Context = BasicRequestContext
    let metrics: APIMetrics

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let start = ContinuousClock.now
        let response = try await next(request, context)
        // The matched route template, not the raw path, so labels stay few.
        let route = context.endpointPath ?? "unmatched"
        metrics.record(method: request.method.rawValue, route: route, status: response.status.code, duration: ContinuousClock.now - start)
        return response
    }
}

extension API {
    func healthz() -> Response {
        Response(status: .ok, headers: [.contentType: "text/plain"], body: .init(byteBuffer: ByteBuffer(string: "ok\n")))
    }

    /// Ready when PostgreSQL answers.
    func readyz() async throws -> Response {
        do {
            for try await _ in try await database.query("SELECT 1") {}
        } catch {
            throw CoreError.databaseUnavailable
        }
        return Response(status: .ok, headers: [.contentType: "text/plain"], body: .init(byteBuffer: ByteBuffer(string: "ready\n")))
    }

    func metricsText() -> Response {
        Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                 body: .init(byteBuffer: ByteBuffer(string: metrics.render())))
    }
}
