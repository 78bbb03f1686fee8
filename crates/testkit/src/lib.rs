//! Test harness: registry on loopback, test images, unique host prefixes, leak check.
