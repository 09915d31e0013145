"""The build steps that quantise a graph (int8 Q/DQ and weight-only, int4), driving the algorithms
in `calibration` with a model directory and the build's calibration settings."""
