//! Metrics published with the `metrics` feature.
