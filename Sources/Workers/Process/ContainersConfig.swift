import Foundation

/// The containers/* config files buildah and podman read, owned by the project: vfs storage in
/// a state folder of its own, plain-HTTP registries marked insecure, and (for podman) the engine
/// settings that work on these hosts. Returns the environment that points the tools at them.
enum ContainersConfig {
    /// With `write: false` the files are only pointed at (a process that reads what another one
    /// configured, like the API reading app logs where the workers run apps).
    static func write(stateFolder: URL, insecureRegistries: [String], engine: Bool, write: Bool = true) throws -> [String: String] {
        let storage = stateFolder.appending(path: "storage.conf")
        let registries = stateFolder.appending(path: "registries.conf")
        let containers = stateFolder.appending(path: "containers.conf")
        var environment = [
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": stateFolder.path,
            "CONTAINERS_STORAGE_CONF": storage.path,
            "CONTAINERS_REGISTRIES_CONF": registries.path,
        ]
        if engine { environment["CONTAINERS_CONF"] = containers.path }
        guard write else { return environment }
        try FileManager.default.createDirectory(at: stateFolder, withIntermediateDirectories: true)
        let runroot = engine ? try podmanRunroot(stateFolder) : "\(stateFolder.path)/run"
        try """
            [storage]
            driver = "vfs"
            graphroot = "\(stateFolder.path)/storage"
            runroot = "\(runroot)"
            """.write(to: storage, atomically: true, encoding: .utf8)
        // Several worker processes (one per stage, say) share a state folder:
        // a registry one of them marked insecure stays marked, whoever writes last.
        let known = (try? String(contentsOf: registries, encoding: .utf8))?.split(separator: "\n").compactMap { line -> String? in
            guard line.hasPrefix("location = \"") else { return nil }
            return String(line.dropFirst("location = \"".count).dropLast())
        } ?? []
        var text = "unqualified-search-registries = []\n"
        for registry in Set(known + insecureRegistries).sorted() { text += "\n[[registry]]\nlocation = \"\(registry)\"\ninsecure = true\n" }
        try text.write(to: registries, atomically: true, encoding: .utf8)
        if engine {
            // crun fails on these hosts' hybrid cgroups, and runc cannot set rlimits equal to the hard limits.
            try """
                [engine]
                cgroup_manager = "cgroupfs"
                events_logger = "file"
                runtime = "runc"
                [containers]
                default_ulimits = ["nofile=16384:16384", "nproc=4096:4096"]
                """.write(to: containers, atomically: true, encoding: .utf8)
        }
        return environment
    }

    /// When a container exits, conmon runs `podman container cleanup` with the runroot as a flag,
    /// and podman 4.3 refuses a flag longer than 50 characters: with the runroot in a deep state
    /// folder, no cleanup ever ran, so exited containers stayed "stopped" and their restart policy
    /// never acted. A short folder under /run (runtime state, gone at reboot as podman expects;
    /// /tmp/loco-podman-UID for a user who may not write /run),
    /// named by a hash of the state folder, with a `runroot` link in the state folder so the
    /// scripts can remove it. A storage made with the old runroot keeps it: podman records the
    /// runroot in its database and refuses any other.
    static let runrootParents = ["/run/loco-podman/", "/tmp/loco-podman-"]

    static func podmanRunroot(_ stateFolder: URL) throws -> String {
        let long = "\(stateFolder.path)/run"
        let database = stateFolder.appending(path: "storage/libpod/bolt_state.db")
        if let data = try? Data(contentsOf: database), data.range(of: Data(long.utf8)) != nil { return long }
        // FNV-1a: stable across processes (Swift's Hasher is seeded per process).
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in stateFolder.standardizedFileURL.path.utf8 { hash = (hash ^ UInt64(byte)) &* 0x100_0000_01b3 }
        // /run is root's; anyone else gets the same under /tmp (still short).
        var short = runrootParents[0] + String(hash, radix: 16)
        if (try? FileManager.default.createDirectory(atPath: short, withIntermediateDirectories: true)) == nil {
            short = runrootParents[1] + "\(getuid())/" + String(hash, radix: 16)
            try FileManager.default.createDirectory(atPath: short, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        }
        let link = stateFolder.appending(path: "runroot")
        if (try? FileManager.default.destinationOfSymbolicLink(atPath: link.path)) != short {
            try? FileManager.default.removeItem(at: link)
            try FileManager.default.createSymbolicLink(atPath: link.path, withDestinationPath: short)
        }
        return short
    }

    /// The runtime state of a storage about to go, when it is one `podmanRunroot` made.
    static func removePodmanRunroot(_ stateFolder: URL) {
        guard let runroot = try? FileManager.default.destinationOfSymbolicLink(atPath: stateFolder.appending(path: "runroot").path),
              runrootParents.contains(where: runroot.hasPrefix) else { return }
        try? FileManager.default.removeItem(atPath: runroot)
    }
}
