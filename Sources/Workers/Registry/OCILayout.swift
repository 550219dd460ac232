import Crypto
import Foundation

/// An OCI content descriptor.
public struct Descriptor: Codable, Sendable, Equatable {
    public var mediaType: String
    public var digest: String
    public var size: Int64
    public var annotations: [String: String]?
}

/// An image as an OCI image layout on disk (what the build stage hands to the push stage):
/// `index.json`, `oci-layout`, `blobs/sha256/<hex>`.
public struct OCILayout: Sendable {
    public let folder: URL
    public let manifestDescriptor: Descriptor
    public let manifest: Data
    public let config: Descriptor
    public let layers: [Descriptor]

    struct Index: Codable { var manifests: [Descriptor] }
    struct Manifest: Codable {
        var mediaType: String?
        var config: Descriptor
        var layers: [Descriptor]
    }

    /// Reads the image tagged `reference` (`org.opencontainers.image.ref.name`), or the only one.
    public init(folder: URL, reference: String? = nil) throws {
        self.folder = folder
        let indexData: Data
        do { indexData = try Data(contentsOf: folder.appending(path: "index.json")) } catch {
            throw PushError.layoutInvalid(reason: "no index.json in \(folder.path)")
        }
        guard let index = try? JSONDecoder().decode(Index.self, from: indexData) else {
            throw PushError.layoutInvalid(reason: "index.json does not parse")
        }
        let candidates = reference.map { name in index.manifests.filter { $0.annotations?["org.opencontainers.image.ref.name"] == name } } ?? index.manifests
        guard let descriptor = candidates.first else {
            throw PushError.layoutInvalid(reason: "no image \(reference ?? "") in index.json")
        }
        manifestDescriptor = descriptor
        manifest = try Self.readBlob(folder, descriptor.digest)
        guard Self.digest(of: manifest) == descriptor.digest else { throw PushError.layoutInvalid(reason: "the manifest's digest does not match") }
        guard let parsed = try? JSONDecoder().decode(Manifest.self, from: manifest) else {
            throw PushError.layoutInvalid(reason: "the manifest does not parse (an image index? push one platform)")
        }
        config = parsed.config
        layers = parsed.layers
    }

    public var mediaType: String { manifestDescriptor.mediaType }

    /// Config first, then layers: the blobs a push must make sure the registry has.
    public var blobs: [Descriptor] { [config] + layers }

    public func blobURL(_ digest: String) -> URL {
        folder.appending(path: "blobs/sha256/\(digest.dropFirst("sha256:".count))")
    }

    public var totalSize: Int64 { blobs.reduce(0) { $0 + $1.size } + Int64(manifest.count) }

    static func readBlob(_ folder: URL, _ digest: String) throws -> Data {
        guard digest.hasPrefix("sha256:") else { throw PushError.layoutInvalid(reason: "unsupported digest \(digest)") }
        do { return try Data(contentsOf: folder.appending(path: "blobs/sha256/\(digest.dropFirst(7))")) } catch {
            throw PushError.layoutInvalid(reason: "blob \(digest) is missing")
        }
    }

    static func digest(of data: Data) -> String {
        "sha256:" + SHA256.hash(data: data).map { String(format: "%02x", $0) }.joined()
    }
}
