"""Engine benchmarks: accuracy of reduced precisions against fp32 (more measures to come)."""
