import Foundation
import HTTPTypes
import Hummingbird
import LocoCore
import LocoQueue
import Logging
import NIOCore
import PostgresNIO

/// Renders any `CoreError` as `{"error": {"code", "message", "hint"}}` with its status.
struct ErrorBody: Encodable {
    struct Detail: Encodable {
        var code: String
        var message: String
        var hint: String
    }
    var error: Detail
}

func errorResponse(_ error: CoreError, headers: HTTPFields = [:]) -> Response {
    let body = ErrorBody(error: .init(code: error.code, message: error.message, hint: error.hint))
    var fields = headers
    fields[.contentType] = "application/json"
    let data = (try? CoreJSON.encoder.encode(body)) ?? Data()
    return Response(status: .init(code: error.httpStatus), headers: fields, body: .init(byteBuffer: ByteBuffer(bytes: data)))
}

/// Turns every error a route throws into the documented error shape: coded errors as they are,
/// Hummingbird's own (no route, body too large) into their codes, database outages into 503,
/// anything else into `internal` with the request id (the detail goes to the log only).
struct ErrorMiddleware: RouterMiddleware {
    typealias Context = BasicRequestContext
    let routes: [APIRoute]

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let error as CoreError {
            return errorResponse(error)
        } catch let error as QueueError {
            if error.isDatabaseUnavailable { return errorResponse(.databaseUnavailable) }
            // Any other queue error here is Loco's own bug, not the caller's input.
            context.logger.error("queue error", metadata: ["error": "\(error)"])
            return errorResponse(.internalError(requestID: context.id))
        } catch let error as HTTPError {
            switch error.status.code {
            case 404:
                let path = request.uri.path
                if routes.contains(where: { $0.matches(path: path) }) {
                    return errorResponse(.methodNotAllowed(method: request.method.rawValue, path: String(path.prefix(200))))
                }
                return errorResponse(.routeNotFound(method: request.method.rawValue, path: String(path.prefix(200))))
            case 413: return errorResponse(.payloadTooLarge(limit: Int64(context.maxUploadSize)))
            case 400: return errorResponse(.invalidJSON(reason: error.body ?? "bad request"))
            default:
                context.logger.error("unexpected HTTP error", metadata: ["error": "\(error)"])
                return errorResponse(.internalError(requestID: context.id))
            }
        } catch let error as PSQLError where error.serverInfo == nil {
            context.logger.error("database unavailable", metadata: ["error": "\(String(reflecting: error.code))"])
            return errorResponse(.databaseUnavailable)
        } catch is CancellationError {
            throw CancellationError()
        } catch {
            context.logger.error("request failed", metadata: ["error": "\(Self.loggable(error))"])
            return errorResponse(.internalError(requestID: context.id))
        }
    }

    /// An unexpected error as the log shows it. PostgreSQL's errors give their message and
    /// SQLSTATE only: their detail can quote a row's values ("Key (name)=(…)", "Failing row
    /// contains …"), an environment variable's among them, and secrets never reach the log.
    static func loggable(_ error: any Error) -> String {
        if let psql = error as? PSQLError { return DatabaseServerError.text(of: psql) }
        return String(reflecting: error)
    }
}
