//! The Fly Machines API v1 HTTP server.
