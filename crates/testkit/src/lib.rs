//! Test harness: registry on loopback, test images, unique host prefixes
//! and address pools, the harnesses' leak checks and the suite's.

mod busybox;
mod egress_link;
mod harness_check;
mod ids;
mod internet;
mod leak_scan;
mod pools;
mod postgres;
mod prefix;
mod registry;
mod shared;

pub use busybox::busybox_rootfs;
pub use egress_link::{EgressLink, remove_test_egress_addresses, test_egress_leftovers};
pub use harness_check::{assert_machines_gone, assert_prefix_gone};
pub use ids::{unique_host_id, unique_org_network};
pub use internet::{KilledOnDrop, SourceServer, TestInternet};
pub use leak_scan::{
    TEST_CLUSTER_DIR_PREFIX, TEST_PREFIX_FAMILY, containers_of, leftovers,
    remove_all_test_resources, remove_host_resources,
};
pub use midge_server::host_scan::{machine_leftovers, prefix_leftovers};
pub use pools::{
    PoolLease, TEST_DNS_PREFIX, TEST_PROXY_V6_PREFIX, leased_pools, test_loopback_addresses,
};
pub use postgres::{TEST_POSTGRES_DIR_PREFIX, test_database};
pub use prefix::{unique_cluster_prefix, unique_prefix};
pub use registry::{TEST_REGISTRY_PASSWORD, TEST_REGISTRY_USER, TestRegistry, tar_dir};
pub use shared::{SHARED_IMAGE_REPO_TAG, shared_image_config, shared_test_image};
