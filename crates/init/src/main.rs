//! midge-init: PID 1 inside every machine.

mod pid1;

fn main() {
    std::process::exit(pid1::run());
}
