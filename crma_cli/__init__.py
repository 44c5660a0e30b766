"""The `crma` command: the composition root that wires app/, worker/ and crma_core/."""
