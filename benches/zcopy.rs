//! `cargo bench`: the full benchmark suite, printed as a table of ratios against baselines.

#[path = "suite.rs"]
#[allow(dead_code)] // the demo uses the parts the bench does not
mod suite;

fn main() {
    // `cargo bench -- --quick` for a shorter run.
    let quick = std::env::args().any(|a| a == "--quick");
    let settings = if quick { suite::Settings::quick() } else { suite::Settings::full() };
    let rows = suite::run(&settings);
    suite::print(&rows);
}
