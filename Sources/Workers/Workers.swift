// Workers: filled in by its own issue.
