//! Forwarding an allowed request to the upstream and its answer back: the pooled
//! client, the per-connection lanes, timeouts, and telling a client's broken body from
//! an upstream failure.
//!
//! Bodies stream both ways untouched; the headers are rewritten as
//! [`super::headers`] says.

use super::deadlines::UpstreamWait;
use super::headers::{set_forwarding, strip_headers, Forwarding};
use super::ClientConn;
use crate::config::{UpstreamConfig, UpstreamProtocol};
use crate::metrics::UpstreamError;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri, Version};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamSetupError {
    #[error("cannot read the upstream CA file {path}")]
    CaFile {
        path: std::path::PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("no usable root certificate for the https upstream")]
    Roots(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Why an allowed request got no answer from the upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForwardError {
    /// The upstream failed: 502 or 504, counted as the upstream's.
    Upstream(UpstreamError),
    /// The client's own request body broke on the way (a malformed chunk, a body cut
    /// short): the client's fault, answered 400.
    ClientBody,
}

impl From<UpstreamError> for ForwardError {
    fn from(kind: UpstreamError) -> Self {
        ForwardError::Upstream(kind)
    }
}

/// The client's request body on its way up. It streams untouched; its only job is to
/// mark an error as the client's, so that a send that fails because of it can be
/// told from an upstream failure by walking the error's sources.
pub struct ClientBody(super::RequestBody);

/// The client's request body failed while it was being sent upstream.
#[derive(Debug, thiserror::Error)]
#[error("the client's request body is malformed or ended early")]
pub struct ClientBodyError(#[source] hyper::Error);

impl Body for ClientBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        Pin::new(&mut self.0)
            .poll_frame(cx)
            .map(|frame| frame.map(|r| r.map_err(ClientBodyError)))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.0.size_hint()
    }
}

/// True when `error` (or anything it was caused by) is the client's body failing.
fn caused_by_client(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if e.is::<ClientBodyError>() {
            return true;
        }
        cause = e.source();
    }
    false
}

/// Sorts a failed exchange: the client's broken body is logged at debug (the client's
/// problem, answered 400); anything else is the upstream's, and a warning.
fn classify(kind: UpstreamError, error: &(dyn std::error::Error + 'static)) -> ForwardError {
    if caused_by_client(error) {
        tracing::debug!(%error, cause = crate::logging::error_chain(error), "client request body failed");
        return ForwardError::ClientBody;
    }
    log_failure(kind, error);
    ForwardError::Upstream(kind)
}

/// The one upstream: a pooled client, and for a plain `http` upstream the address
/// that per-connection lanes dial. A reload that changes `[upstream]` builds a new one;
/// lanes opened to the old one are not used for it (its `id` differs).
pub struct Upstream {
    /// Tells this upstream from the one a reload replaced it with.
    id: u64,
    config: UpstreamConfig,
    client: Client<HttpsConnector<HttpConnector>, ClientBody>,
    /// HTTP/1.1 for upgrades (a WebSocket): the same client when `upstream.protocol`
    /// is `http1`, an HTTP/1.1 one beside the HTTP/2 client otherwise.
    upgrades: Client<HttpsConnector<HttpConnector>, ClientBody>,
    /// What requests go upstream as: HTTP/1.1, or HTTP/2 for `h2c` and `h2`.
    version: Version,
    scheme: Scheme,
    authority: Authority,
    /// `host:port` for lanes; `None` for an https upstream (lanes are plain TCP).
    direct: Option<String>,
    connect_timeout: Duration,
    timeout: Duration,
}

/// The upstream connection owned by one HTTP/1 downstream connection, and which
/// upstream it goes to. Requests on an HTTP/1 connection come one at a time, so the
/// lock is never contended: it only makes the slot shareable with the request future.
#[derive(Default)]
pub struct Lane(std::sync::Mutex<Option<(u64, http1::SendRequest<ClientBody>)>>);

impl Lane {
    /// The connection to `upstream`, if it is still open (one to an upstream a reload
    /// replaced is closed here).
    fn take(&self, upstream: u64) -> Option<http1::SendRequest<ClientBody>> {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        slot.take()
            .filter(|(id, s)| *id == upstream && !s.is_closed())
            .map(|(_, s)| s)
    }

    fn put(&self, upstream: u64, sender: http1::SendRequest<ClientBody>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some((upstream, sender));
    }
}

fn log_failure(kind: UpstreamError, error: &(dyn std::error::Error + 'static)) {
    tracing::warn!(
        kind = kind.label(),
        %error,
        cause = crate::logging::error_chain(error),
        "upstream request failed"
    );
}

impl Upstream {
    /// `id` tells this upstream from others built in this process (a reload's).
    pub fn new(config: &UpstreamConfig, id: u64) -> Result<Self, UpstreamSetupError> {
        let upgrades = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector(config, UpstreamProtocol::Http1)?);
        let (client, version) = match config.protocol {
            UpstreamProtocol::Http1 => (upgrades.clone(), Version::HTTP_11),
            protocol => (
                super::h2_upstream::client(connector(config, protocol)?),
                Version::HTTP_2,
            ),
        };
        let parts = config.url.clone().into_parts();
        let direct = match (config.url.scheme_str(), config.url.authority()) {
            (Some("http"), Some(a)) if version == Version::HTTP_11 => {
                Some(format!("{}:{}", a.host(), a.port_u16().unwrap_or(80)))
            }
            _ => None,
        };
        Ok(Self {
            id,
            config: config.clone(),
            client,
            upgrades,
            version,
            direct,
            connect_timeout: config.connect_timeout,
            scheme: parts.scheme.unwrap_or(Scheme::HTTP),
            authority: parts
                .authority
                .unwrap_or_else(|| Authority::from_static("127.0.0.1")),
            timeout: config.timeout,
        })
    }

    /// What this upstream was built from.
    pub fn config(&self) -> &UpstreamConfig {
        &self.config
    }

    /// Forwards one request. An HTTP/1 downstream connection (`conn`) sends on its own
    /// lane: its requests come one at a time, so one upstream connection serves them
    /// all without a pool (no lock, no checkout race, no task per request), and its
    /// watchdog times the upstream's answer ([`UpstreamWait`]). HTTP/2 downstream
    /// streams and https upstreams use the shared pool and a timer each. On a lane the
    /// upstream has `upstream.timeout` from the request's arrival (`arrived`).
    pub async fn forward(
        &self,
        req: Request<super::RequestBody>,
        how: Forwarding<'_>,
        conn: Option<&ClientConn>,
        arrived: std::time::Instant,
    ) -> Result<Response<Incoming>, ForwardError> {
        let mut req = req.map(ClientBody);
        let lane = conn.filter(|_| self.direct.is_some() && req.version() != Version::HTTP_2);
        self.rewrite(&mut req, how, lane.is_none())?;
        // `None`: no answer in time.
        let answer = match lane {
            Some(ClientConn {
                lane,
                seat: Some(seat),
                ..
            }) => {
                let wait = &seat.upstream;
                wait.begin(arrived + self.timeout);
                let sent = self.send_on(lane, wait, req).await;
                (!wait.end()).then_some(sent)
            }
            // HTTP/2 streams, https upstreams, and a connection outside the listener's
            // table (no watchdog): the pool, with a timer.
            _ => tokio::time::timeout(self.timeout, async {
                self.client.request(req).await.map_err(|error| {
                    let kind = if error.is_connect() {
                        UpstreamError::Connect
                    } else {
                        UpstreamError::Protocol
                    };
                    classify(kind, &error)
                })
            })
            .await
            .ok(),
        };
        let Some(answer) = answer else {
            // As loud as a refused connection: the client gets a 504 either way.
            tracing::warn!(
                kind = UpstreamError::Timeout.label(),
                timeout_ms = self.timeout.as_millis() as u64,
                "upstream did not answer in time"
            );
            return Err(ForwardError::Upstream(UpstreamError::Timeout));
        };
        let mut resp = answer?;
        strip_headers(resp.headers_mut(), false);
        // The client's connection and version are the client's: an HTTP/1.0 upstream
        // (python3 -m http.server) must not make ipgate answer an HTTP/1.1 client in
        // HTTP/1.0 and close its connection, as NGINX does not. hyper answers an
        // HTTP/1.0 client in 1.0 on its own.
        *resp.version_mut() = Version::HTTP_11;
        Ok(resp)
    }

    /// Sends on the lane's connection, opening one first when it has none or the
    /// upstream closed it; a connection opened is handed to `wait` to close at its
    /// deadline. Opening and retrying are boxed: both are rare, and every request's
    /// future (copied whole as it is made and moved) would otherwise hold theirs.
    async fn send_on(
        &self,
        lane: &Lane,
        wait: &UpstreamWait,
        req: Request<ClientBody>,
    ) -> Result<Response<Incoming>, ForwardError> {
        let (mut sender, reused) = match lane.take(self.id) {
            Some(sender) => (sender, true),
            None => (Box::pin(self.open_lane(wait)).await?, false),
        };
        match sender.try_send_request(req).await {
            Ok(resp) => {
                lane.put(self.id, sender);
                Ok(resp)
            }
            Err(failure) => Box::pin(self.resend(lane, wait, failure, reused)).await,
        }
    }

    /// After a failed send: a kept-alive connection the upstream closed just as the
    /// request left is retried once on a fresh connection if none of it was sent.
    async fn resend(
        &self,
        lane: &Lane,
        wait: &UpstreamWait,
        mut failure: hyper::client::conn::TrySendError<Request<ClientBody>>,
        reused: bool,
    ) -> Result<Response<Incoming>, ForwardError> {
        // Never after the deadline: the watchdog cut this exchange, and a new connection
        // would only outlive it.
        if let (true, false, Some(req)) = (reused, wait.overdue(), failure.take_message()) {
            tracing::debug!(error = %failure.error(), "upstream closed a kept-alive connection; retrying");
            let mut sender = self.open_lane(wait).await?;
            return match sender.send_request(req).await {
                Ok(resp) => {
                    lane.put(self.id, sender);
                    Ok(resp)
                }
                Err(error) => Err(classify(UpstreamError::Protocol, &error)),
            };
        }
        Err(classify(UpstreamError::Protocol, failure.error()))
    }

    async fn open_lane(
        &self,
        wait: &UpstreamWait,
    ) -> Result<http1::SendRequest<ClientBody>, UpstreamError> {
        let host = self.direct.as_deref().unwrap_or_default();
        let connect = async {
            let stream = TcpStream::connect(host).await?;
            stream.set_nodelay(true)?;
            Ok::<_, std::io::Error>(stream)
        };
        let stream = match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => {
                log_failure(UpstreamError::Connect, &error);
                return Err(UpstreamError::Connect);
            }
            Err(_) => {
                tracing::warn!(kind = "connect", "upstream connect timed out");
                return Err(UpstreamError::Connect);
            }
        };
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|error| {
                log_failure(UpstreamError::Connect, &error);
                UpstreamError::Connect
            })?;
        let task = tokio::spawn(async move {
            if let Err(error) = conn.await {
                tracing::debug!(%error, "upstream connection ended with an error");
            }
        });
        wait.opened(task.abort_handle());
        Ok(sender)
    }

    /// `absolute`: the pooled client wants the full URI; a lane's own connection sends
    /// origin-form (path and query), as any HTTP/1.1 client to a server does.
    fn rewrite(
        &self,
        req: &mut Request<ClientBody>,
        how: Forwarding<'_>,
        absolute: bool,
    ) -> Result<(), UpstreamError> {
        // One Host upstream (`target::check` has vetted the client's): the pinned one,
        // else an absolute-form target's or HTTP/2's authority (RFC 9112 section 3.2.2:
        // it wins over `Host`), else the client's `Host`, else (HTTP/1.0 without one)
        // the upstream's own.
        let host = match (&self.config.host, req.uri().authority()) {
            (Some(pinned), _) => Some(pinned.clone()),
            (None, Some(a)) => {
                Some(HeaderValue::from_str(a.as_str()).map_err(|_| UpstreamError::Protocol)?)
            }
            (None, None) if req.headers().contains_key(header::HOST) => None,
            (None, None) => Some(
                HeaderValue::from_str(self.authority.as_str())
                    .map_err(|_| UpstreamError::Protocol)?,
            ),
        };
        if let Some(host) = host {
            req.headers_mut().insert(header::HOST, host);
        }
        let path = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        *req.uri_mut() = if absolute {
            Uri::builder()
                .scheme(self.scheme.clone())
                .authority(self.authority.clone())
                .path_and_query(path)
                .build()
                .map_err(|_| UpstreamError::Protocol)?
        } else {
            Uri::from(path)
        };
        *req.version_mut() = self.version;
        // gRPC asks for trailers with `TE: trailers`, the one TE value HTTP/2 allows
        // (RFC 9113 section 8.2.2): kept towards an HTTP/2 upstream, dropped otherwise
        // with the other hop-by-hop headers.
        let trailers =
            self.version == Version::HTTP_2 && super::h2_upstream::asks_trailers(req.headers());
        set_forwarding(req.headers_mut(), how, &self.config)?;
        if self.version == Version::HTTP_2 {
            // HTTP/2 names the host in `:authority` (RFC 9113 section 8.3.1), which the
            // pooled client takes from the upstream's url: a `Host` beside it that
            // differs is refused by some servers (nginx answers 400).
            req.headers_mut().remove(header::HOST);
            if trailers {
                req.headers_mut()
                    .insert(header::TE, HeaderValue::from_static("trailers"));
            }
        }
        Ok(())
    }

    /// Forwards an upgrade request (a WebSocket handshake) over HTTP/1.1 on a
    /// connection of its own, with its `Upgrade` and `Connection: upgrade`. A 101
    /// comes back with the upstream's `Upgrade` and `Connection: upgrade`, and the
    /// upstream's end of the tunnel in its extensions (`hyper::upgrade::on`); any other
    /// answer is an ordinary one.
    pub async fn upgrade(
        &self,
        req: Request<super::RequestBody>,
        how: Forwarding<'_>,
    ) -> Result<Response<Incoming>, ForwardError> {
        let mut req = req.map(ClientBody);
        let wanted = req.headers().get(header::UPGRADE).cloned();
        self.rewrite(&mut req, how, true)?;
        *req.version_mut() = Version::HTTP_11;
        if let Some(wanted) = wanted {
            super::tunnel::mark_upgrade(req.headers_mut(), wanted);
        }
        let sent = tokio::time::timeout(self.timeout, self.upgrades.request(req)).await;
        let mut resp = match sent {
            Ok(Ok(resp)) => resp,
            Ok(Err(error)) => {
                let kind = if error.is_connect() {
                    UpstreamError::Connect
                } else {
                    UpstreamError::Protocol
                };
                return Err(classify(kind, &error));
            }
            Err(_) => {
                tracing::warn!(
                    kind = UpstreamError::Timeout.label(),
                    timeout_ms = self.timeout.as_millis() as u64,
                    "upstream did not answer the upgrade in time"
                );
                return Err(ForwardError::Upstream(UpstreamError::Timeout));
            }
        };
        let switched = (resp.status() == http::StatusCode::SWITCHING_PROTOCOLS)
            .then(|| resp.headers().get(header::UPGRADE).cloned())
            .flatten();
        strip_headers(resp.headers_mut(), false);
        if let Some(switched) = switched {
            super::tunnel::mark_upgrade(resp.headers_mut(), switched);
        }
        *resp.version_mut() = Version::HTTP_11;
        Ok(resp)
    }

    /// How long an upgraded connection may carry no byte either way.
    pub fn tunnel_idle_timeout(&self) -> Duration {
        self.config.tunnel_idle_timeout
    }
}

/// The connector for `protocol`: TCP (nodelay, keepalive, the connect timeout), with
/// TLS for an `https` upstream offering ALPN `h2` for `h2` and nothing for HTTP/1.1.
fn connector(
    config: &UpstreamConfig,
    protocol: UpstreamProtocol,
) -> Result<HttpsConnector<HttpConnector>, UpstreamSetupError> {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(config.connect_timeout));
    connector.set_nodelay(true);
    connector.set_keepalive(Some(Duration::from_secs(60)));
    connector.enforce_http(false);
    let tls = https_connector(config)?;
    Ok(match protocol {
        UpstreamProtocol::Http1 => tls.https_or_http().enable_http1().wrap_connector(connector),
        UpstreamProtocol::H2c => tls.https_or_http().enable_http2().wrap_connector(connector),
        UpstreamProtocol::H2 => tls.https_only().enable_http2().wrap_connector(connector),
    })
}

/// TLS towards an `https` upstream: the configured CA file, or the system's roots.
/// A plain `http` upstream never handshakes, so it needs no roots at all.
fn https_connector(
    config: &UpstreamConfig,
) -> Result<
    hyper_rustls::HttpsConnectorBuilder<hyper_rustls::builderstates::WantsSchemes>,
    UpstreamSetupError,
> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let builder = match (&config.ca_file, config.url.scheme_str()) {
        (Some(path), _) => {
            let mut roots = rustls::RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|source| UpstreamSetupError::CaFile {
                    path: path.clone(),
                    source,
                })?;
            let (added, ignored) = roots.add_parsable_certificates(certs);
            tracing::info!(path = %path.display(), added, ignored, "upstream CA file loaded");
            if added == 0 {
                return Err(UpstreamSetupError::Roots(
                    format!("{} holds no usable CA certificate", path.display()).into(),
                ));
            }
            builder.with_tls_config(client_config(provider, roots)?)
        }
        (None, Some("https")) => builder
            .with_provider_and_native_roots(provider)
            .map_err(|e| UpstreamSetupError::Roots(Box::new(e)))?,
        (None, _) => {
            builder.with_tls_config(client_config(provider, rustls::RootCertStore::empty())?)
        }
    };
    Ok(builder)
}

fn client_config(
    provider: Arc<rustls::crypto::CryptoProvider>,
    roots: rustls::RootCertStore,
) -> Result<rustls::ClientConfig, UpstreamSetupError> {
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| UpstreamSetupError::Roots(Box::new(e)))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
