#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Makes a `posix_spawn` child start with every signal unblocked and at its default action.
///
/// Without this a child inherits the spawning thread's signal mask, and the threads of a Swift
/// process block nearly every signal (measured: SIGTERM, SIGINT, SIGHUP among them), so a
/// child that does not reset the mask itself never sees the SIGTERM meant to stop it (`timeout`
/// in a test could not stop the command it ran).
public func resetSignals(of attributes: inout posix_spawnattr_t, flags: Int32 = 0) {
    var none = sigset_t()
    sigemptyset(&none)
    posix_spawnattr_setsigmask(&attributes, &none)
    var standard = sigset_t()
    sigemptyset(&standard)
    for signal: Int32 in 1..<32 where signal != SIGKILL && signal != SIGSTOP { sigaddset(&standard, signal) }
    posix_spawnattr_setsigdefault(&attributes, &standard)
    posix_spawnattr_setflags(&attributes, Int16(flags | Int32(POSIX_SPAWN_SETSIGMASK) | Int32(POSIX_SPAWN_SETSIGDEF)))
}

#if canImport(Glibc)
/// glibc's posix_spawn_file_actions_addclosefrom_np (2.34+; left out of Swift's Glibc module).
@_silgen_name("posix_spawn_file_actions_addclosefrom_np")
private func systemAddCloseFrom(_ actions: UnsafeMutablePointer<posix_spawn_file_actions_t>, _ lowest: Int32) -> Int32

/// Makes a `posix_spawn` child start with stdin, stdout and stderr only; add it after the
/// actions that set those up.
///
/// Sockets are not close-on-exec (a process's database connections among them), and a child
/// that lives on, like a container's monitor or nginx, kept them open: PostgreSQL kept those
/// sessions, and a worker's presence lock with them, long after the worker had exited.
public func closeInheritedDescriptors(of actions: inout posix_spawn_file_actions_t) {
    _ = systemAddCloseFrom(&actions, 3)
}
#endif
