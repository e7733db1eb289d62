"""Command-line tools: capture readers and writers, offline decode, record, the demo, the entry point."""
