// Coded errors are shared with modules that do not link the queue (the CLI, build contexts).
@_exported import LocoShared
