import ArgumentParser
import Foundation
import Hummingbird
import HummingbirdCore
import HummingbirdTLS
import NIOSSL
import Logging
import LocoAPI
import Workers
import LocoCore
import LocoQueue
import ServiceLifecycle
import UnixSignals

struct APICommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "api",
        abstract: "Serve the HTTP API (/v1, /healthz, /readyz, /metrics) and the registry token service.",
        discussion: """
            Example:
              locod api --port 8080 --context-dir /var/lib/loco/contexts --registry-key /etc/loco/registry-token.key
            Several API processes may share one database and one context folder.
            """
    )

    @OptionGroup var database: DatabaseOptions

    @Option(help: "Address to listen on (0.0.0.0: every interface).") var host = "127.0.0.1"
    @Option(help: "Port to listen on.") var port = 8080
    @Option(help: "Where build contexts are stored (default: $LOCO_CONTEXT_DIR or ./.loco/contexts).") var contextDir: String?
    @Option(help: "Largest build context accepted, in MiB.") var maxContextMib = 200
    @Option(help: "PEM RSA private key that signs registry tokens (default: $LOCO_REGISTRY_KEY; none: the token service is off).")
    var registryKey: String?
    @Option(help: "The registry's auth.token.service name.") var registryService = "loco-registry"
    @Option(help: "The registry's auth.token.issuer name.") var registryIssuer = "loco"
    @Option(help: "Database connections.") var poolSize = 8
    @Option(help: "Seconds between reconcile passes (dead stages, unused build contexts).") var reconcileSeconds = 5
    @Option(help: "Where apps run, for their logs and instances: local (podman on this machine) or none. Default: $LOCO_RUNTIME or local.")
    var runtime: String?
    @Option(help: "The workers' --work-dir on this machine (the local runtime's state). Default: $LOCO_WORK_DIR or ./.loco/work.")
    var workDir: String?
    @Option(help: "Serve HTTPS with this PEM certificate (chain), with --tls-key. Default: $LOCO_TLS_CERT.")
    var tlsCert: String?
    @Option(help: "The PEM private key of --tls-cert. Default: $LOCO_TLS_KEY.")
    var tlsKey: String?

    func run() async throws {
        try await reportingErrors {
            let url = try database.url()
            let logger = database.logger("locod.api")
            try checkedOption(port, "--port", in: 1...65_535, example: "8080")
            try checkedHost(host, "--host")
            try checkedOption(maxContextMib, "--max-context-mib", in: 1...1_048_576, example: "200")
            try checkedOption(poolSize, "--pool-size", in: 1...1000, example: "8")
            try checkedOption(reconcileSeconds, "--reconcile-seconds", in: 1...86_400, example: "5")
            let environment = ProcessInfo.processInfo.environment
            let tls = try ServingTLS.configuration(certificate: tlsCert ?? environment["LOCO_TLS_CERT"], key: tlsKey ?? environment["LOCO_TLS_KEY"])
            try await preflight(url, logger: logger)
            await warnAboutPendingMigrations(url: url, logger: logger)
            let contextRoot = contextDir ?? environment["LOCO_CONTEXT_DIR"] ?? ".loco/contexts"
            let keyPath = registryKey ?? environment["LOCO_REGISTRY_KEY"]
            var issuer: RegistryTokenIssuer?
            if let keyPath, !keyPath.isEmpty {
                guard let pem = try? String(contentsOfFile: keyPath, encoding: .utf8) else {
                    throw UsageError(message: "cannot read the registry token key at \(keyPath)", hint: "Pass --registry-key with a readable PEM RSA private key (scripts/services start makes one).")
                }
                do {
                    issuer = try RegistryTokenIssuer(privateKeyPEM: pem, issuer: registryIssuer, service: registryService)
                } catch {
                    throw UsageError(message: "\(keyPath) is not a PEM RSA private key", hint: "Make one with 'openssl genrsa -out key.pem 2048'.")
                }
            }
            let pool = ConnectionPool(url: url, size: poolSize, logger: logger)
            let runtimeName = runtime ?? environment["LOCO_RUNTIME"] ?? "local"
            var runtimeView: (any AppRuntimeView)?
            var supervisor: ContainerSupervisor?
            switch runtimeName {
            case "local":
                let work = URL(fileURLWithPath: workDir ?? environment["LOCO_WORK_DIR"] ?? ".loco/work")
                let podman = try PodmanRuntime(stateFolder: work.appending(path: "podman"), configure: false, logger: logger)
                runtimeView = podman
                supervisor = ContainerSupervisor(runtime: podman, logger: logger)
            case "none": runtimeView = nil
            default: throw UsageError(message: "--runtime \(runtimeName) is not available", hint: "Use --runtime local (podman) or none.")
            }
            let api = API(database: pool, contexts: ContextStore(root: URL(fileURLWithPath: contextRoot), limit: Int64(maxContextMib) * 1024 * 1024),
                          registry: issuer, logger: logger, runtime: runtimeView)
            let listening: Logger.Metadata = ["address": "\(tls == nil ? "http" : "https")://\(host):\(port)", "contexts": "\(contextRoot)", "registry_tokens": "\(issuer == nil ? "off" : "on")"]
            let server = try tls.map { try HTTPServerBuilder.tls(API.server, tlsConfiguration: $0) } ?? API.server
            // Said once the port is bound, not before: a port taken ends locod with port_in_use.
            let app = Application(router: api.router(), server: server, configuration: .init(address: .hostname(host, port: port), serverName: "loco"),
                                  onServerRunning: { _ in logger.info("API listening", metadata: listening) }, logger: logger)
            let reconciler = Reconciler(api: api, interval: .seconds(reconcileSeconds), logger: logger)
            let services: [any Service] = supervisor.map { [Supervision(supervisor: $0, metrics: api.metrics, interval: .seconds(1))] } ?? []
            let group = ServiceGroup(configuration: .init(services: [reconciler, app] + services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
            let outcome = await Result { try await group.run() }
            await pool.close()
            try outcome.mapError {
                ListenError(explaining: $0, serving: "the API", host: host, port: port, hostOption: "--host", portOption: "--port") ?? $0
            }.get()
        }
    }
}

/// Runs `API.reconcile()` every few seconds until shutdown.
struct Reconciler: Service {
    let api: API
    let interval: Duration
    let logger: Logger

    static let sweepEvery: Duration = .seconds(600)

    func run() async throws {
        await cancelWhenGracefulShutdown {
            var lastSweep = ContinuousClock.now
            while !Task.isCancelled {
                do { try await api.reconcile() } catch { logger.warning("reconcile failed", metadata: ["error": "\(error)"]) }
                if ContinuousClock.now - lastSweep >= Self.sweepEvery {
                    lastSweep = ContinuousClock.now
                    do {
                        let removed = try await api.sweepContexts()
                        if removed > 0 { logger.info("removed unused build contexts", metadata: ["count": "\(removed)"]) }
                    } catch {
                        logger.warning("context sweep failed", metadata: ["error": "\(error)"])
                    }
                }
                try? await Task.sleep(for: interval)
            }
        }
    }
}

/// Starts the serving containers that exited again, once a second (the local runtime).
struct Supervision: Service {
    let supervisor: ContainerSupervisor
    let metrics: APIMetrics
    let interval: Duration

    func run() async throws {
        await cancelWhenGracefulShutdown {
            await supervisor.run(every: interval) { [metrics] restart in metrics.recordRestart(app: restart.app, service: restart.service) }
        }
    }
}

/// `locod api`'s own TLS: a certificate and its key, read and checked before anything starts.
enum ServingTLS {
    static func configuration(certificate: String?, key: String?) throws -> TLSConfiguration? {
        let certificate = certificate.flatMap { $0.isEmpty ? nil : $0 }, key = key.flatMap { $0.isEmpty ? nil : $0 }
        guard certificate != nil || key != nil else { return nil }
        guard let certificate, let key else {
            throw UsageError(message: certificate == nil ? "--tls-key is given without --tls-cert" : "--tls-cert is given without --tls-key",
                             hint: "Pass both: --tls-cert CERT.pem --tls-key KEY.pem (or LOCO_TLS_CERT and LOCO_TLS_KEY).")
        }
        let chain: [NIOSSLCertificate]
        do {
            chain = try NIOSSLCertificate.fromPEMFile(certificate)
        } catch {
            throw UsageError(message: "cannot read a PEM certificate from --tls-cert \(certificate)", hint: "Pass a readable PEM file holding the server's certificate, then any intermediates.")
        }
        guard !chain.isEmpty else {
            throw UsageError(message: "--tls-cert \(certificate) holds no PEM certificate", hint: "Pass a readable PEM file holding the server's certificate, then any intermediates.")
        }
        let privateKey: NIOSSLPrivateKey
        do {
            privateKey = try NIOSSLPrivateKey(file: key, format: .pem)
        } catch {
            throw UsageError(message: "cannot read a PEM private key from --tls-key \(key)", hint: "Pass the certificate's unencrypted PEM key (openssl pkey -in KEY -out KEY.pem removes a passphrase).")
        }
        let configuration = TLSConfiguration.makeServerConfiguration(certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(privateKey))
        do {
            _ = try NIOSSLContext(configuration: configuration)
        } catch {
            throw UsageError(message: "--tls-key \(key) is not the private key of the certificate in --tls-cert \(certificate)", hint: "Pass the key the certificate was made for.")
        }
        return configuration
    }
}
