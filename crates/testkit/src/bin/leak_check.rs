//! The suite's last step: lists host resources left behind by any test,
//! removes them, and fails if there were any.

fn main() {
    let leftovers = midge_testkit::leftovers();
    if leftovers.is_empty() {
        println!("leak check: nothing left behind");
        return;
    }
    eprintln!(
        "leak check: tests left {} resources behind:",
        leftovers.len()
    );
    for item in &leftovers {
        eprintln!("  {item}");
    }
    midge_testkit::remove_all_test_resources();
    std::process::exit(1);
}
