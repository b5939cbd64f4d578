"""Reports over the ledger: totals and groups, in the terminal and as JSON."""
