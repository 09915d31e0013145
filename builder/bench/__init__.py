"""Benchmarks: engine latency, throughput, memory and accuracy vs fp32 (`bench engines`), serving
latency and throughput (`bench serve`), and their Markdown report (`bench report`)."""
