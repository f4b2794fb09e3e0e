"""Helpers every layer may use: atomic file writes, scratch folders, command-line plumbing,
figures. They import nothing else of cspsr_tf."""
