//! One module per subcommand.

pub(crate) mod backup;
pub(crate) mod client;
pub(crate) mod db;
pub(crate) mod dev;
pub(crate) mod docs;
pub(crate) mod gateway;
pub(crate) mod kv;
pub(crate) mod kv_bulk;
pub(crate) mod node;
