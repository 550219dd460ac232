// LocoCore: filled in by its own issue.
