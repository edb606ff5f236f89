//! executor

fn main() {}
