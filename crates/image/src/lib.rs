//! OCI images: pull from registries, import archives, content store and shared layer store.
