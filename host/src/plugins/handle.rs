//! A running plugin and its calls: each bounded in time, over gRPC or into a WASM
//! instance.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use webmesh_api::v1::{
    self, auth_plugin_client::AuthPluginClient, ipam_plugin_client::IpamPluginClient,
    plugin_client::PluginClient, storage_plugin_client::StoragePluginClient,
    watch_plugin_client::WatchPluginClient,
};
use webmesh_plugin_sdk::Config as PluginConfig;

use crate::config::PluginTarget;

use super::*;

/// How the node reaches a plugin.
pub(super) enum Backend {
    Grpc(Channel),
    Wasm(Arc<wasm::WasmPlugin>),
}

/// A running plugin the node can call.
pub struct PluginHandle {
    pub name: String,
    pub target: PluginTarget,
    pub info: v1::PluginInfo,
    pub(super) backend: Backend,
    /// Positive AUTH verdicts, remembered briefly (see [`verdicts`]).
    pub(super) verdicts: verdicts::Verdicts,
}

/// One call, in both of its shapes: the gRPC client call, and the WASM export with its
/// request and response encoded as protobuf.
macro_rules! call {
    ($self:ident, $what:literal, $timeout:expr, $req:expr,
     grpc: |$ch:ident, $r:ident| $grpc:expr,
     wasm: |$w:ident, $bytes:ident| $wasm:expr) => {{
        let timeout = $timeout;
        let started = std::time::Instant::now();
        let result = match &$self.backend {
            Backend::Grpc($ch) => {
                let $r = $self.request($req, timeout);
                $self.bounded($what, timeout, $grpc).await
            }
            Backend::Wasm(w) => {
                let $bytes = prost::Message::encode_to_vec(&$req);
                let out = tokio::time::timeout(
                    timeout + Duration::from_millis(100),
                    wasm::run(w.clone(), move |$w| $wasm),
                )
                .await
                .map_err(|_| {
                    Status::deadline_exceeded(format!(
                        "plugin {}: {} did not answer within {timeout:?}",
                        $self.name, $what
                    ))
                })??;
                Decode::decode_from(&$self.name, $what, out)
            }
        };
        crate::metrics::get().plugin_call(&$self.name, $what, started.elapsed(), result.is_ok());
        result
    }};
}

/// Decoding a WASM export's answer into the call's result type.
trait Decode: Sized {
    fn decode_from<B: AsRef<[u8]>>(plugin: &str, what: &str, bytes: B) -> Result<Self, Status>;
}

impl Decode for () {
    fn decode_from<B: AsRef<[u8]>>(_: &str, _: &str, _: B) -> Result<(), Status> {
        Ok(())
    }
}

macro_rules! decode_msg {
    ($($t:ty),*) => {$(
        impl Decode for $t {
            fn decode_from<B: AsRef<[u8]>>(plugin: &str, what: &str, bytes: B) -> Result<$t, Status> {
                <$t as prost::Message>::decode(bytes.as_ref()).map_err(|e| {
                    Status::internal(format!("plugin {plugin}: {what} answered garbage: {e}"))
                })
            }
        }
    )*};
}

decode_msg!(
    v1::AuthenticationResponse,
    v1::AllocatedIp,
    v1::RaftApplyResponse,
    v1::PluginInfo
);

impl PluginHandle {
    fn request<T>(&self, msg: T, timeout: Duration) -> Request<T> {
        let mut r = Request::new(msg);
        r.set_timeout(timeout);
        r
    }

    /// Runs one call with a hard bound, and names the plugin in any error.
    async fn bounded<T>(
        &self,
        what: &str,
        timeout: Duration,
        call: impl std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    ) -> Result<T, Status> {
        match tokio::time::timeout(timeout + Duration::from_millis(100), call).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(s)) => Err(self.named(what, s)),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "plugin {}: {what} did not answer within {timeout:?}",
                self.name
            ))),
        }
    }

    fn named(&self, what: &str, s: Status) -> Status {
        match s.code() {
            // The plugin's own verdicts pass through unchanged.
            Code::InvalidArgument
            | Code::NotFound
            | Code::AlreadyExists
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::FailedPrecondition
            | Code::ResourceExhausted => s,
            Code::DeadlineExceeded => Status::deadline_exceeded(format!(
                "plugin {}: {what} did not answer in time",
                self.name
            )),
            code => Status::new(
                if code == Code::Unknown {
                    Code::Unavailable
                } else {
                    code
                },
                format!("plugin {}: {what}: {}", self.name, s.message()),
            ),
        }
    }

    pub fn is_wasm(&self) -> bool {
        matches!(self.backend, Backend::Wasm(_))
    }

    pub async fn authenticate(&self, req: v1::AuthenticationRequest) -> Result<String, Status> {
        let key = self.verdicts.enabled().then(|| verdicts::key_of(&req));
        if let Some(id) = key
            .as_ref()
            .and_then(|k| self.verdicts.get(k, Instant::now()))
        {
            return Ok(id);
        }
        let r: v1::AuthenticationResponse = call!(self, "Authenticate", AUTH_TIMEOUT, req,
            grpc: |ch, r| AuthPluginClient::new(ch.clone()).authenticate(r),
            wasm: |w, b| w.authenticate(b))?;
        if let Some(k) = key
            && !r.id.is_empty()
        {
            self.verdicts.put(k, r.id.clone(), Instant::now());
        }
        Ok(r.id)
    }

    pub async fn allocate(&self, req: v1::AllocateIpRequest) -> Result<String, Status> {
        let r: v1::AllocatedIp = call!(self, "Allocate", CALL_TIMEOUT, req,
            grpc: |ch, r| IpamPluginClient::new(ch.clone()).allocate(r),
            wasm: |w, b| w.allocate(b))?;
        Ok(r.ip)
    }

    pub async fn release(&self, req: v1::ReleaseIpRequest) -> Result<(), Status> {
        call!(self, "Release", CALL_TIMEOUT, req,
            grpc: |ch, r| IpamPluginClient::new(ch.clone()).release(r),
            wasm: |w, b| w.release(b).map(|()| Vec::new()))
    }

    pub async fn store(&self, req: v1::StoreLogRequest) -> Result<v1::RaftApplyResponse, Status> {
        call!(self, "Store", CALL_TIMEOUT, req,
            grpc: |ch, r| StoragePluginClient::new(ch.clone()).store(r),
            wasm: |w, b| w.store(b))
    }

    pub async fn restore(&self, req: v1::DataSnapshot) -> Result<(), Status> {
        // A snapshot may be large; give it longer.
        call!(self, "RestoreSnapshot", CALL_TIMEOUT * 6, req,
            grpc: |ch, r| StoragePluginClient::new(ch.clone()).restore_snapshot(r),
            wasm: |w, b| w.restore(b).map(|()| Vec::new()))
    }

    pub async fn emit(&self, req: v1::Event) -> Result<(), Status> {
        call!(self, "Emit", CALL_TIMEOUT, req,
            grpc: |ch, r| WatchPluginClient::new(ch.clone()).emit(r),
            wasm: |w, b| w.emit(b).map(|()| Vec::new()))
    }

    pub(super) async fn get_info(&self) -> Result<v1::PluginInfo, Status> {
        call!(self, "GetInfo", HANDSHAKE_TIMEOUT, (),
            grpc: |ch, r| PluginClient::new(ch.clone()).get_info(r),
            wasm: |w, _b| w.get_info())
    }

    pub(super) async fn configure(&self, config: &PluginConfig) -> Result<(), Status> {
        let req = v1::PluginConfiguration {
            config: Some(config.to_struct()),
        };
        call!(self, "Configure", HANDSHAKE_TIMEOUT, req,
            grpc: |ch, r| PluginClient::new(ch.clone()).configure(r),
            wasm: |w, b| w.configure(b).map(|()| Vec::new()))
    }

    pub(super) async fn close(&self) -> Result<(), Status> {
        call!(self, "Close", Duration::from_secs(1), (),
            grpc: |ch, r| PluginClient::new(ch.clone()).close(r),
            wasm: |w, _b| w.close().map(|()| Vec::new()))
    }

    /// The gRPC channel, for process and remote plugins.
    pub(super) fn channel(&self) -> Option<&Channel> {
        match &self.backend {
            Backend::Grpc(ch) => Some(ch),
            Backend::Wasm(_) => None,
        }
    }
}
