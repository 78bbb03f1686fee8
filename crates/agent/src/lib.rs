//! The host agent: owns the machines on one host.
