"""Session pools: many OpenEnv sessions over one env group, their steps coalesced into batches."""
