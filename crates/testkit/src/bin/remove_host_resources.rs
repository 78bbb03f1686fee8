//! Removes every host resource one resource prefix names (containers,
//! mounts under its data dir, namespaces, veths, nftables table, cgroups),
//! for scripts that run a real `midge up` and must leave nothing behind.
//!
//! Usage: `midge-remove-host-resources PREFIX DATA_DIR`

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [prefix, data_dir] = args.as_slice() else {
        eprintln!("usage: midge-remove-host-resources PREFIX DATA_DIR");
        std::process::exit(2);
    };
    // Only test prefixes: this must never touch a real host's machines.
    if !prefix.starts_with(midge_testkit::TEST_PREFIX_FAMILY) {
        eprintln!(
            "refusing {prefix:?}: not a test prefix ({}…)",
            midge_testkit::TEST_PREFIX_FAMILY
        );
        std::process::exit(2);
    }
    midge_testkit::remove_host_resources(prefix, std::path::Path::new(data_dir));
}
