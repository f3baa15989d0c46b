//! Shared parts of the examples: a toy in-memory identity service, and the
//! standalone node (`aegis node` with that service added).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use aegis::caller_from_request;
use aegis::services::identity::identity_service_server::IdentityService;
use aegis::services::identity::{
    GetUserByEmailRequest, GetUserRequest, GetUserResponse, ListProvidersRequest,
    ListProvidersResponse, ListUserSessionsRequest, ListUserSessionsResponse, Provider,
    RevokeSessionRequest, RevokeSessionResponse, RevokeUserSessionsRequest,
    RevokeUserSessionsResponse, SessionEvent, SessionEventType, SessionInfo,
    SubscribeSessionEventsRequest, ValidateSessionRequest, ValidateSessionResponse,
};
use tokio::sync::broadcast;
use tokio_stream::Stream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[derive(Clone)]
struct Session {
    user_id: String,
    created_at: i64,
    expires_at: i64,
}

/// An in-memory identity service: users `alice` and `bob`, sessions
/// `token-alice` and `token-bob` valid for an hour from start. It records
/// which node called it last, as the mTLS certificate says.
#[derive(Clone)]
pub struct ToyIdentity {
    node_id: String,
    sessions: Arc<Mutex<HashMap<String, Session>>>,
    events: broadcast::Sender<SessionEvent>,
    /// The caller of the last call, from its certificate.
    pub last_caller: Arc<Mutex<Option<String>>>,
    /// Calls answered.
    pub calls: Arc<AtomicUsize>,
}

impl ToyIdentity {
    /// A fresh service, answering as `node_id`.
    pub fn new(node_id: impl Into<String>) -> Self {
        let created_at = now();
        let sessions = ["alice", "bob"]
            .into_iter()
            .map(|u| {
                (
                    format!("token-{u}"),
                    Session {
                        user_id: u.to_owned(),
                        created_at,
                        expires_at: created_at + 3600,
                    },
                )
            })
            .collect();
        Self {
            node_id: node_id.into(),
            sessions: Arc::new(Mutex::new(sessions)),
            events: broadcast::channel(64).0,
            last_caller: Arc::new(Mutex::new(None)),
            calls: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The node ID this service answers as.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    fn seen<T>(&self, req: &Request<T>) -> Result<String, Status> {
        let caller =
            caller_from_request(req).map_err(|e| Status::unauthenticated(e.to_string()))?;
        let id = caller.node_id.to_string();
        *self
            .last_caller
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(id.clone());
        self.calls.fetch_add(1, Ordering::Relaxed);
        Ok(id)
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn user(id: &str) -> Option<GetUserResponse> {
        ["alice", "bob"].contains(&id).then(|| GetUserResponse {
            id: id.to_owned(),
            email: format!("{id}@example.com"),
            name: id.to_owned(),
            avatar_url: String::new(),
            email_verified: true,
            created_at: 1_700_000_000,
        })
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<SessionEvent, Status>> + Send>>;

#[tonic::async_trait]
impl IdentityService for ToyIdentity {
    async fn validate_session(
        &self,
        req: Request<ValidateSessionRequest>,
    ) -> Result<Response<ValidateSessionResponse>, Status> {
        let caller = self.seen(&req)?;
        tracing::info!(provider = %self.node_id, %caller, "ValidateSession");
        let session = self.sessions().get(&req.get_ref().token).cloned();
        Ok(Response::new(match session {
            Some(s) if s.expires_at > now() => ValidateSessionResponse {
                valid: true,
                user_id: s.user_id,
                expires_at: s.expires_at,
            },
            _ => ValidateSessionResponse::default(),
        }))
    }

    async fn get_user(
        &self,
        req: Request<GetUserRequest>,
    ) -> Result<Response<GetUserResponse>, Status> {
        self.seen(&req)?;
        Self::user(&req.get_ref().user_id)
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("no user {:?}", req.get_ref().user_id)))
    }

    async fn get_user_by_email(
        &self,
        req: Request<GetUserByEmailRequest>,
    ) -> Result<Response<GetUserResponse>, Status> {
        self.seen(&req)?;
        let email = &req.get_ref().email;
        email
            .strip_suffix("@example.com")
            .and_then(Self::user)
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("no user with email {email:?}")))
    }

    async fn list_providers(
        &self,
        req: Request<ListProvidersRequest>,
    ) -> Result<Response<ListProvidersResponse>, Status> {
        self.seen(&req)?;
        let providers = Self::user(&req.get_ref().user_id)
            .map(|u| {
                vec![Provider {
                    r#type: "password".into(),
                    provider_user_id: u.id,
                    linked_at: u.created_at,
                }]
            })
            .unwrap_or_default();
        Ok(Response::new(ListProvidersResponse { providers }))
    }

    async fn revoke_session(
        &self,
        req: Request<RevokeSessionRequest>,
    ) -> Result<Response<RevokeSessionResponse>, Status> {
        self.seen(&req)?;
        let token = &req.get_ref().token;
        if let Some(s) = self.sessions().remove(token) {
            let _ = self.events.send(SessionEvent {
                r#type: SessionEventType::Revoked as i32,
                token_prefix: token.chars().take(6).collect(),
                user_id: s.user_id,
                timestamp: now(),
            });
        }
        Ok(Response::new(RevokeSessionResponse {}))
    }

    async fn revoke_user_sessions(
        &self,
        req: Request<RevokeUserSessionsRequest>,
    ) -> Result<Response<RevokeUserSessionsResponse>, Status> {
        self.seen(&req)?;
        let user = &req.get_ref().user_id;
        let mut sessions = self.sessions();
        let before = sessions.len();
        sessions.retain(|_, s| &s.user_id != user);
        let revoked = before - sessions.len();
        Ok(Response::new(RevokeUserSessionsResponse {
            revoked_count: u32::try_from(revoked).unwrap_or(u32::MAX),
        }))
    }

    async fn list_user_sessions(
        &self,
        req: Request<ListUserSessionsRequest>,
    ) -> Result<Response<ListUserSessionsResponse>, Status> {
        self.seen(&req)?;
        let user = &req.get_ref().user_id;
        let sessions = self
            .sessions()
            .iter()
            .filter(|(_, s)| &s.user_id == user)
            .map(|(t, s)| SessionInfo {
                token_prefix: t.chars().take(6).collect(),
                created_at: s.created_at,
                expires_at: s.expires_at,
                user_agent: String::new(),
                ip_address: String::new(),
            })
            .collect();
        Ok(Response::new(ListUserSessionsResponse { sessions }))
    }

    type SubscribeSessionEventsStream = EventStream;

    async fn subscribe_session_events(
        &self,
        req: Request<SubscribeSessionEventsRequest>,
    ) -> Result<Response<Self::SubscribeSessionEventsStream>, Status> {
        self.seen(&req)?;
        let stream = tokio_stream::wrappers::BroadcastStream::new(self.events.subscribe())
            .filter_map(|e| e.ok().map(Ok));
        Ok(Response::new(Box::pin(stream)))
    }
}

/// `aegis node` with the toy identity service served for every
/// `identity/*` service the node declares: the `node` example and the
/// `aegis-node` binary of the process tests.
pub fn node_main() -> std::process::ExitCode {
    use aegis::services::identity::identity_service_server::IdentityServiceServer;
    let args: Vec<String> = std::env::args().skip(1).collect();
    aegis_cli::node::main_with(&args, |builder, options| {
        if !options.services.iter().any(|s| s.name == "identity") {
            return builder;
        }
        let identity = ToyIdentity::new(options.id.clone().unwrap_or_default());
        builder.with_service_registration(move |routes| {
            routes.add_service(IdentityServiceServer::new(identity.clone()));
        })
    })
}
