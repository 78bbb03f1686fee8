//! Apps and organizations.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CreateAppRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Older clients send `app_name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org_slug: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    #[serde(flatten)]
    pub extra: crate::config::Extra,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Organization {
    pub name: String,
    pub slug: String,
    #[serde(default)]
    pub internal_numeric_id: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct App {
    pub id: String,
    pub name: String,
    pub status: String,
    pub organization: Organization,
    #[serde(default)]
    pub network: String,
    #[serde(default)]
    pub machine_count: u64,
    #[serde(default)]
    pub volume_count: u64,
    #[serde(default)]
    pub internal_numeric_id: i64,
    /// Where the proxy serves the app (midge's extension).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListAppsResponse {
    pub total_apps: u64,
    pub apps: Vec<App>,
}
