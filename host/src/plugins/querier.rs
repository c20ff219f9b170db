//! `Plugin.InjectQuerier`: the node opens the stream; the plugin asks GET / LIST / ITER
//! over keys and the node answers from its replica. Read-only.

use std::sync::{Arc, RwLock};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use webmesh_api::v1::{
    PluginQuery, PluginQueryResult, plugin_client::PluginClient, plugin_query::QueryCommand,
};

use super::PluginHandle;
use crate::store::engine::Engine;

/// The replica plugins read. The plugins outlive a node under the AppDaemon, which
/// starts and stops nodes: empty before a node runs and between a Disconnect and the
/// next Connect.
#[derive(Clone, Default)]
pub struct StateSlot(Arc<RwLock<Option<Engine>>>);

impl StateSlot {
    pub fn new(engine: Engine) -> StateSlot {
        StateSlot(Arc::new(RwLock::new(Some(engine))))
    }

    pub fn set(&self, engine: Option<Engine>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = engine;
    }

    fn get(&self) -> Option<Engine> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Opens the querier stream to `plugin` and answers its queries until the stream ends
/// (the plugin stopped, or does not want one).
pub fn open(plugin: Arc<PluginHandle>, state: StateSlot) {
    tokio::spawn(async move {
        let Some(channel) = plugin.channel() else {
            return; // WASM plugins query through an import instead.
        };
        let (tx, rx) = mpsc::channel::<PluginQueryResult>(64);
        let mut client = PluginClient::new(channel.clone());
        let mut queries = match client.inject_querier(ReceiverStream::new(rx)).await {
            Ok(r) => r.into_inner(),
            Err(s) => {
                if s.code() != tonic::Code::Unimplemented {
                    tracing::debug!(plugin = %plugin.name, error = %s, "querier not opened");
                }
                return;
            }
        };
        while let Ok(Some(q)) = queries.message().await {
            for r in answer(&state, q) {
                if tx.send(r).await.is_err() {
                    return;
                }
            }
        }
    });
}

/// The results for one query: GET one (or error "key not found"), LIST one with the
/// keys, ITER one per key then a last one with error "EOF".
pub fn answer(state: &StateSlot, q: PluginQuery) -> Vec<PluginQueryResult> {
    let result = |key: String, value: Vec<String>, error: String| PluginQueryResult {
        id: q.id.clone(),
        key,
        value,
        error,
    };
    let Some(engine) = state.get() else {
        return vec![result(
            q.query.clone(),
            vec![],
            "the node is not connected to a mesh".into(),
        )];
    };
    match QueryCommand::try_from(q.command) {
        Ok(QueryCommand::Get) => match engine.get(&q.query) {
            Ok(Some(e)) => vec![result(e.key, vec![e.value], String::new())],
            Ok(None) => vec![result(q.query.clone(), vec![], "key not found".into())],
            Err(e) => vec![result(q.query.clone(), vec![], e.to_string())],
        },
        Ok(QueryCommand::List) => match engine.list(&q.query) {
            Ok(es) => vec![result(
                q.query.clone(),
                es.into_iter().map(|e| e.key).collect(),
                String::new(),
            )],
            Err(e) => vec![result(q.query.clone(), vec![], e.to_string())],
        },
        Ok(QueryCommand::Iter) => match engine.list(&q.query) {
            Ok(es) => {
                let mut out: Vec<_> = es
                    .into_iter()
                    .map(|e| result(e.key, vec![e.value], String::new()))
                    .collect();
                out.push(result(String::new(), vec![], "EOF".into()));
                out
            }
            Err(e) => vec![result(q.query.clone(), vec![], e.to_string())],
        },
        Err(_) => vec![result(
            q.query.clone(),
            vec![],
            format!("unknown query command {}", q.command),
        )],
    }
}
