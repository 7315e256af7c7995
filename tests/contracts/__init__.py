"""Contract tests: every registered backend and family against the contracts the one job relies on."""
