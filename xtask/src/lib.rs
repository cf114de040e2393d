//! Lab and build orchestration.
