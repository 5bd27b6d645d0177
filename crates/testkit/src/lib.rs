//! Test fixtures for meshsync. The main one is [`sim::Cluster`]: real SQLite stores joined by
//! real sync sessions over a simulated network whose time, latency, partitions, link failures
//! and restarts are all driven by one seeded random generator, so a failing run is replayed
//! exactly from its seed.

pub mod sim;
