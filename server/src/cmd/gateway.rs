//! `ourkv gateway`: the HTTP API in front of a cluster.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use crate::cli::{HttpOpts, RunOpts};
use crate::cmd::node::{identity, mycelium_node};
use crate::{gateway, http, resolve};

/// The nodes a gateway talks to, and how.
pub(crate) struct Nodes {
    pub(crate) master: String,
    pub(crate) workers: Vec<String>,
    pub(crate) cluster: Option<PathBuf>,
    pub(crate) mycelium_api: Option<String>,
}

pub(crate) fn run_gateway(
    http: &str,
    nodes: Nodes,
    opts: HttpOpts,
    run: RunOpts,
) -> Result<ExitCode> {
    let identity = identity(nodes.cluster.as_deref())?;
    let master = resolve(&nodes.master)?;
    identity.check_peer(master)?;
    let workers = nodes
        .workers
        .iter()
        .map(|w| resolve(w))
        .collect::<Result<Vec<_>>>()?;
    for w in &workers {
        identity.check_peer(*w)?;
    }
    let http = resolve(http)?;
    opts.check(http)?;
    run.runtime()?.block_on(async {
        let mut client = replication::Client::new(&identity)?;
        if let Some(api) = &nodes.mycelium_api {
            let info = mycelium_node(api).await?;
            for n in std::iter::once(&master).chain(&workers) {
                if !replication::identity::is_overlay(n.ip()) {
                    tracing::warn!(node = %n, "with --mycelium-api, this node is not on the overlay (400::/7)");
                }
            }
            client = client.with_v6_source(info.ip)?;
        }
        let gw = gateway::Gateway::new(
            client,
            master,
            workers,
            opts.api_token.clone(),
        );
        let gw = opts.configure(gw);
        gw.discover();
        http::serve(
            gw,
            http,
            opts.limits(),
            format!("gateway listening on http://{http}"),
        )
        .await
    })?;
    Ok(ExitCode::SUCCESS)
}
