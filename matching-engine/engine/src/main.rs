//! matching-engine

fn main() {}
