//! Redis Sentinel: finding the master through the sentinels and following a failover
//! (docs/counter-store.md §12).
//!
//! The store talks to the master through a [`ConnectionManager`], which reconnects to one
//! fixed address; after a failover that address is a replica (or gone), so the manager
//! itself cannot follow. [`Follower`] holds the manager of the current master behind an
//! [`ArcSwapOption`] and a background task replaces it when the sentinels name another
//! master. The task re-asks the sentinels
//! - at once when a sentinel publishes `+switch-master` for our master (subscribed on every
//!   sentinel, so one that is down does not hide the event),
//! - every half second otherwise, which also catches a master that answers but is
//!   no longer one (ROLE is checked on every new address, and on the current one each
//!   round: an old master that comes back is demoted to a replica and would refuse writes
//!   with READONLY).
//!
//! Meanwhile calls fail (no master, or the dead one), the store's breaker opens and requests
//! are answered per `--on-backend-error`; the first call that reaches the new master closes
//! it. The redis crate's own `sentinel` module hands out a client for the master of the
//! moment but does not follow a failover on a long-lived manager, so this small finder is
//! ours.

use std::sync::Arc;
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use ::redis::{Client, IntoConnectionInfo, TlsCertificates, Value};
use arc_swap::ArcSwapOption;
use futures_util::StreamExt;
use tokio::sync::Notify;

use super::url;

/// How often the sentinels are asked when no `+switch-master` arrived: a bound on how long a
/// missed event (every sentinel unreachable at that moment) delays following a failover.
const RECHECK_INTERVAL: Duration = Duration::from_millis(500);

/// How long one question to one sentinel (connect included) may take before the next
/// sentinel is asked.
const SENTINEL_TIMEOUT: Duration = Duration::from_millis(500);

/// How long to wait before re-subscribing to a sentinel whose event stream ended.
const RESUBSCRIBE_DELAY: Duration = Duration::from_millis(500);

/// `--redis-sentinel MASTER,host:port,...`, parsed.
#[derive(Clone, PartialEq, Eq)]
pub struct SentinelTarget {
    /// The name the sentinels monitor the master under.
    pub master: String,
    /// The sentinels: `host:port`, `redis://host:port` or `rediss://host:port` (TLS to the
    /// sentinels, and to the master they name).
    pub sentinels: Vec<String>,
    /// The sentinels' password (`--redis-sentinel-password-file`; the reference's
    /// `REDIS_SENTINEL_AUTH`), not the master's.
    pub password: Option<String>,
}

impl std::fmt::Debug for SentinelTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sentinels: Vec<String> = self.sentinels.iter().map(|s| url::redact(s)).collect();
        f.debug_struct("SentinelTarget")
            .field("master", &self.master)
            .field("sentinels", &sentinels)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

impl SentinelTarget {
    /// Parses `MASTER,host:port[,host:port...]`, the reference's `REDIS_URL` for
    /// `REDIS_TYPE=sentinel`.
    pub fn parse(s: &str) -> Result<SentinelTarget, String> {
        let mut parts = s.split(',').map(str::trim);
        let master = parts.next().unwrap_or_default();
        if master.is_empty() || master.contains(':') {
            return Err(format!(
                "expected MASTER,host:port[,host:port...] (the master's name first), got {:?}",
                url::redact(s)
            ));
        }
        let sentinels: Vec<String> = parts.map(str::to_owned).collect();
        if sentinels.is_empty() {
            return Err("expected at least one sentinel address after the master's name".into());
        }
        if let Some(empty) = sentinels.iter().position(String::is_empty) {
            return Err(format!("sentinel address {} is empty", empty + 1));
        }
        Ok(SentinelTarget {
            master: master.to_owned(),
            sentinels,
            password: None,
        })
    }

    /// Whether the connections use TLS: when any sentinel is written `rediss://`.
    fn tls(&self) -> bool {
        self.sentinels.iter().any(|s| s.starts_with("rediss://"))
    }
}

/// How to reach the sentinels and the master they name.
#[derive(Clone)]
pub struct SentinelOptions {
    /// Sentinels and master name.
    pub target: SentinelTarget,
    /// The master's password (`--redis-password-file`).
    pub password: Option<String>,
    /// PEM CA for TLS.
    pub ca_pem: Option<Vec<u8>>,
    /// Deadline of every call to the master.
    pub timeout: Duration,
}

/// The current master's connection, replaced on failover by a background task.
pub struct Follower {
    current: ArcSwapOption<Master>,
    wake: Notify,
}

/// One master address and its connection.
struct Master {
    address: (String, u16),
    manager: ConnectionManager,
}

impl std::fmt::Debug for Follower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let current = self.current.load();
        f.debug_struct("Follower")
            .field("master", &current.as_ref().map(|m| &m.address))
            .finish_non_exhaustive()
    }
}

/// The sentinels: each one's name for logs (credentials redacted), its client, and the
/// connection last used to ask it, kept so that asking every [`RECHECK_INTERVAL`] does not
/// open a connection each time.
struct Sentinels {
    clients: Vec<(String, Client)>,
    connections: Vec<Option<MultiplexedConnection>>,
}

impl Follower {
    /// Checks the addresses and starts following (inside a Tokio runtime). The master is
    /// found in the background: the service starts while the sentinels are unreachable.
    pub fn start(options: SentinelOptions) -> Result<Arc<Follower>, String> {
        let sentinels = Sentinels::new(&options)?;
        let follower = Arc::new(Follower {
            current: ArcSwapOption::empty(),
            wake: Notify::new(),
        });
        for (name, client) in &sentinels.clients {
            tokio::spawn(watch_switches(
                Arc::downgrade(&follower),
                name.clone(),
                client.clone(),
                options.target.master.clone(),
            ));
        }
        tokio::spawn(follow(Arc::downgrade(&follower), sentinels, options));
        Ok(follower)
    }

    /// The current master's connection manager (a cheap, multiplexed handle).
    pub fn live(&self) -> Option<ConnectionManager> {
        self.current.load().as_ref().map(|m| m.manager.clone())
    }
}

impl Sentinels {
    fn new(options: &SentinelOptions) -> Result<Sentinels, String> {
        let certs = TlsCertificates {
            client_tls: None,
            root_cert: options.ca_pem.clone(),
        };
        let mut clients = Vec::new();
        for raw in &options.target.sentinels {
            let shown = url::redact(raw);
            let mut info = url::with_scheme(raw)
                .into_connection_info()
                .map_err(|e| format!("sentinel {shown}: {e}"))?;
            if let Some(p) = &options.target.password {
                let settings = info.redis_settings().clone().set_password(p);
                info = info.set_redis_settings(settings);
            }
            let client = if raw.starts_with("rediss://") && options.ca_pem.is_some() {
                Client::build_with_tls(info, certs.clone())
            } else {
                Client::open(info)
            }
            .map_err(|e| format!("sentinel {shown}: {e}"))?;
            clients.push((shown, client));
        }
        let connections = vec![None; clients.len()];
        Ok(Sentinels {
            clients,
            connections,
        })
    }

    /// Asks each sentinel in turn for the master's address; the first answer wins. A
    /// sentinel that fails loses its cached connection, so the next question reconnects.
    async fn master_address(&mut self, master: &str) -> Option<(String, u16)> {
        for ((name, client), cached) in self.clients.iter().zip(self.connections.iter_mut()) {
            let asked = async {
                let mut conn = match cached.take() {
                    Some(c) => c,
                    None => client.get_multiplexed_async_connection().await?,
                };
                let reply = ::redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg(master)
                    .query_async::<Option<(String, u16)>>(&mut conn)
                    .await?;
                Ok::<_, ::redis::RedisError>((conn, reply))
            };
            let answer = match tokio::time::timeout(SENTINEL_TIMEOUT, asked).await {
                Ok(Ok((conn, reply))) => {
                    *cached = Some(conn);
                    Ok(Ok(reply))
                }
                Ok(Err(e)) => Ok(Err(e)),
                Err(elapsed) => Err(elapsed),
            };
            match answer {
                Ok(Ok(Some(address))) => return Some(address),
                Ok(Ok(None)) => {
                    tracing::warn!(sentinel = %name, master, "the sentinel does not know this master")
                }
                Ok(Err(e)) => tracing::debug!(sentinel = %name, error = %e, "sentinel unreachable"),
                Err(_) => tracing::debug!(sentinel = %name, "sentinel did not answer in time"),
            }
        }
        None
    }
}

/// Finds the master, connects, and keeps following it until the follower is dropped.
async fn follow(
    follower: std::sync::Weak<Follower>,
    mut sentinels: Sentinels,
    options: SentinelOptions,
) {
    let mut unreachable_logged = false;
    loop {
        let Some(strong) = follower.upgrade() else {
            return;
        };
        let current = strong.current.load_full();
        match sentinels.master_address(&options.target.master).await {
            Some(address) => {
                unreachable_logged = false;
                let moved = current.as_ref().is_none_or(|m| m.address != address);
                if moved {
                    match connect_master(&address, &options).await {
                        Ok(manager) => {
                            tracing::info!(
                                master = %format!("{}:{}", address.0, address.1),
                                name = %options.target.master,
                                "Redis Sentinel: using this master"
                            );
                            strong
                                .current
                                .store(Some(Arc::new(Master { address, manager })));
                        }
                        Err(e) => tracing::warn!(
                            master = %format!("{}:{}", address.0, address.1),
                            error = %e,
                            "Redis Sentinel: the named master is not usable yet"
                        ),
                    }
                } else if let Some(m) = &current {
                    // Same address: make sure it is still a master (a demoted one answers
                    // READONLY to every script call).
                    match check_role(m.manager.clone(), options.timeout).await {
                        Ok(()) => {}
                        Err(RoleError::NotMaster(role)) => {
                            tracing::warn!(
                                role = %role,
                                "Redis Sentinel: the master was demoted; waiting for the sentinels"
                            );
                            strong.current.store(None);
                        }
                        Err(RoleError::Failed(e)) => {
                            tracing::debug!(error = %e, "Redis Sentinel: the master's ROLE check failed")
                        }
                    }
                }
            }
            None => {
                if !unreachable_logged {
                    tracing::warn!(
                        name = %options.target.master,
                        "Redis Sentinel: no sentinel named the master; asking again"
                    );
                    unreachable_logged = true;
                }
            }
        }
        drop(strong);
        let Some(strong) = follower.upgrade() else {
            return;
        };
        let _ = tokio::time::timeout(RECHECK_INTERVAL, strong.wake.notified()).await;
    }
}

/// A manager for `address`, once its ROLE says master.
async fn connect_master(
    address: &(String, u16),
    options: &SentinelOptions,
) -> Result<ConnectionManager, String> {
    let scheme = if options.target.tls() {
        "rediss"
    } else {
        "redis"
    };
    let mut info = format!("{scheme}://{}:{}", address.0, address.1)
        .into_connection_info()
        .map_err(|e| e.to_string())?;
    if let Some(p) = &options.password {
        let settings = info.redis_settings().clone().set_password(p);
        info = info.set_redis_settings(settings);
    }
    let client = if options.target.tls() && options.ca_pem.is_some() {
        Client::build_with_tls(
            info,
            TlsCertificates {
                client_tls: None,
                root_cert: options.ca_pem.clone(),
            },
        )
    } else {
        Client::open(info)
    }
    .map_err(|e| e.to_string())?;
    // The same reconnection settings as a single-node target (mod.rs): short, bounded
    // retries, so a dead master fails calls fast and the breaker takes over.
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(options.timeout.max(Duration::from_millis(250))))
        .set_response_timeout(Some(options.timeout.max(SENTINEL_TIMEOUT)))
        .set_number_of_retries(2)
        .set_min_delay(Duration::from_millis(10))
        .set_max_delay(Duration::from_millis(200));
    let manager = tokio::time::timeout(
        SENTINEL_TIMEOUT * 2,
        ConnectionManager::new_with_config(client, config),
    )
    .await
    .map_err(|_| "connecting timed out".to_owned())?
    .map_err(|e| e.to_string())?;
    check_role(manager.clone(), SENTINEL_TIMEOUT)
        .await
        .map_err(|e| match e {
            RoleError::NotMaster(role) => format!("ROLE is {role}, not master"),
            RoleError::Failed(e) => e,
        })?;
    Ok(manager)
}

/// Why a ROLE check did not confirm a master.
enum RoleError {
    /// It answered another role (`slave` during or after a failover).
    NotMaster(String),
    /// No usable answer.
    Failed(String),
}

/// `ROLE`'s first element must be `master`.
async fn check_role(mut manager: ConnectionManager, timeout: Duration) -> Result<(), RoleError> {
    let role = ::redis::cmd("ROLE");
    let asked = role.query_async::<Value>(&mut manager);
    let reply = tokio::time::timeout(timeout.max(SENTINEL_TIMEOUT), asked)
        .await
        .map_err(|_| RoleError::Failed("ROLE timed out".into()))?
        .map_err(|e| RoleError::Failed(e.to_string()))?;
    match role_of(&reply) {
        Some("master") => Ok(()),
        Some(other) => Err(RoleError::NotMaster(other.to_owned())),
        None => Err(RoleError::Failed("ROLE gave an unexpected reply".into())),
    }
}

/// The role name at the head of a `ROLE` reply.
fn role_of(reply: &Value) -> Option<&str> {
    let Value::Array(items) = reply else {
        return None;
    };
    match items.first()? {
        Value::BulkString(b) => std::str::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

/// Subscribes to `+switch-master` on one sentinel and wakes the follower when our master
/// moved; resubscribes when the stream ends (the sentinel restarted).
async fn watch_switches(
    follower: std::sync::Weak<Follower>,
    name: String,
    client: Client,
    master: String,
) {
    loop {
        if follower.strong_count() == 0 {
            return;
        }
        let subscribed = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe("+switch-master").await?;
            Ok::<_, ::redis::RedisError>(pubsub)
        };
        if let Ok(Ok(mut pubsub)) = tokio::time::timeout(SENTINEL_TIMEOUT, subscribed).await {
            let mut messages = pubsub.on_message();
            while let Some(message) = messages.next().await {
                let payload: String = message.get_payload().unwrap_or_default();
                // `<name> <old ip> <old port> <new ip> <new port>`
                if payload.split(' ').next() == Some(master.as_str()) {
                    tracing::info!(sentinel = %name, event = %payload, "Redis Sentinel: +switch-master");
                    match follower.upgrade() {
                        Some(f) => f.wake.notify_one(),
                        None => return,
                    }
                }
            }
        }
        tokio::time::sleep(RESUBSCRIBE_DELAY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_reference_format() {
        let t = SentinelTarget::parse("mymaster,10.0.0.1:26379, s2:26379").unwrap();
        assert_eq!(t.master, "mymaster");
        assert_eq!(t.sentinels, vec!["10.0.0.1:26379", "s2:26379"]);
        assert!(!t.tls());
        let t = SentinelTarget::parse("m,rediss://s1:26379").unwrap();
        assert!(t.tls());
    }

    #[test]
    fn refuses_a_missing_name_or_sentinel() {
        assert!(SentinelTarget::parse("").is_err());
        assert!(SentinelTarget::parse("mymaster").is_err());
        let e = SentinelTarget::parse("s1:26379,s2:26379").unwrap_err();
        assert!(e.contains("master's name first"), "{e}");
        assert!(SentinelTarget::parse("m,s1:1,").is_err());
    }

    #[test]
    fn reads_the_role() {
        let master = Value::Array(vec![
            Value::BulkString(b"master".to_vec()),
            Value::Int(10),
            Value::Array(vec![]),
        ]);
        assert_eq!(role_of(&master), Some("master"));
        let replica = Value::Array(vec![Value::BulkString(b"slave".to_vec())]);
        assert_eq!(role_of(&replica), Some("slave"));
        assert_eq!(role_of(&Value::Nil), None);
    }
}
