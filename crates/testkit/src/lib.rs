//! Test harness: registry on loopback, test images, unique host prefixes, leak check.

mod busybox;
mod postgres;
mod prefix;
mod registry;
mod shared;

pub use busybox::busybox_rootfs;
pub use postgres::{TEST_POSTGRES_DIR_PREFIX, test_database};
pub use prefix::{unique_cluster_prefix, unique_prefix};
pub use registry::{TEST_REGISTRY_PASSWORD, TEST_REGISTRY_USER, TestRegistry, tar_dir};
pub use shared::{SHARED_IMAGE_REPO_TAG, shared_image_config, shared_test_image};

mod hosts;
pub use hosts::*;
