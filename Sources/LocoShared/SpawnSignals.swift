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
