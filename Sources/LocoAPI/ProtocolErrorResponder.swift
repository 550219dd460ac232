import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdCore
import LocoCore
import NIOCore
import NIOHTTP1
import NIOHTTPTypes

/// Answers requests the HTTP parser rejects (headers over 80 KB, garbage on the wire) with the API's
/// error shape — `431 headers_too_large` or `400 invalid_request` — instead of a silent close.
final class ProtocolErrorResponder: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    private var responding = false

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .head = unwrapInboundIn(data) { responding = true }
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        if case .end = unwrapOutboundIn(data) { responding = false }
        context.write(data, promise: promise)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard let parserError = error as? HTTPParserError, !responding else {
            context.fireErrorCaught(error)
            return
        }
        let tooLarge = parserError == .headerOverflow
        let body = tooLarge
            ? #"{"error":{"code":"headers_too_large","hint":"Keep request headers under 80 KB in all.","message":"the request headers are too large"}}"#
            : #"{"error":{"code":"invalid_request","hint":"Send a well-formed HTTP/1.1 request.","message":"the request is not valid HTTP"}}"#
        let head = HTTPResponse(status: tooLarge ? .init(code: 431) : .badRequest,
                                headerFields: [.contentType: "application/json", .contentLength: "\(body.utf8.count)", .connection: "close"])
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        context.write(wrapOutboundOut(.body(ByteBuffer(string: body))), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in context.close(promise: nil) }
    }
}

extension API {
    /// The HTTP/1.1 server with the protocol error responder in its pipeline.
    public static var server: HTTPServerBuilder {
        .http1(configuration: .init(additionalChannelHandlers: [ProtocolErrorResponder()]))
    }
}
