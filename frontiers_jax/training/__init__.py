"""The shared training machinery: one loop, one step shape, every workload."""
