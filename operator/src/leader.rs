//! Leader election with a `coordination.k8s.io/v1` Lease, so two operator
//! replicas can run and only one reconciles. A replica takes the Lease when
//! it is free or its holder stopped renewing for `LEASE_DURATION`, renews
//! it every `RENEW_EVERY`, and stops (the process exits, Kubernetes restarts
//! it as a standby) when the Lease is taken or renewals have failed for so
//! long that it may have expired: reconciling without the Lease could race
//! the new leader. Expiry is judged against the local clock, as client-go
//! does; replicas whose clocks differ by more than a few seconds could
//! briefly both lead.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::{Client, Error};
use tracing::{info, warn};

/// How long a Lease is valid without renewal.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How often the holder renews.
pub const RENEW_EVERY: Duration = Duration::from_secs(5);

/// A Lease this process competes for.
#[derive(Clone)]
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

impl Elector {
    /// Compete for Lease `name` in `namespace` as `identity` (the pod name).
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str) -> Self {
        Elector { api: Api::namespaced(client, namespace), name: name.into(), identity: identity.into() }
    }

    fn spec(&self, transitions: i32, acquired: Option<MicroTime>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
            acquire_time: Some(acquired.unwrap_or_else(now)),
            renew_time: Some(now()),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// One attempt: `Ok(true)` if this process holds the Lease afterwards.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(self.name.clone()), ..ObjectMeta::default() },
                spec: Some(self.spec(0, None)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let ours = spec.holder_identity.as_deref() == Some(self.identity.as_str());
        let expired = match (&spec.renew_time, spec.lease_duration_seconds) {
            (Some(MicroTime(t)), Some(secs)) => {
                let age = Timestamp::now().duration_since(*t).unsigned_abs();
                age > Duration::from_secs(secs.max(0) as u64)
            }
            _ => true,
        };
        if !ours && !expired {
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!ours);
        lease.spec = Some(self.spec(transitions, if ours { spec.acquire_time } else { None }));
        // The resourceVersion read above makes this a compare-and-swap: if
        // another replica took the Lease meanwhile, this fails with 409.
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Wait until this process holds the Lease.
    pub async fn acquire(&self) {
        let mut waiting_logged = false;
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    info!(lease = %self.name, identity = %self.identity, "Acquired the leader lease");
                    return;
                }
                Ok(false) if !waiting_logged => {
                    info!(lease = %self.name, "Another replica leads; standing by");
                    waiting_logged = true;
                }
                Ok(false) => {}
                Err(e) => warn!(error = %e, lease = %self.name, "Could not read the leader lease"),
            }
            tokio::time::sleep(RENEW_EVERY / 2).await;
        }
    }

    /// Give the Lease up on a clean shutdown, so a standby takes over at
    /// once instead of after `LEASE_DURATION` (client-go's ReleaseOnCancel):
    /// it is marked expired, still naming this holder, and only if this
    /// process holds it.
    pub async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else { return };
        let Some(spec) = lease.spec.as_mut() else { return };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::UNIX_EPOCH));
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(_) => info!(lease = %self.name, "Released the leader lease"),
            Err(e) => warn!(error = %e, lease = %self.name, "Could not release the leader lease"),
        }
    }

    /// Renew until the Lease is lost, or renewals have failed for so long
    /// that another replica may already have taken it; returns why.
    pub async fn hold(&self) -> String {
        let mut last_ok = std::time::Instant::now();
        loop {
            tokio::time::sleep(RENEW_EVERY).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => last_ok = std::time::Instant::now(),
                Ok(false) => return "another replica took the leader lease".into(),
                Err(e) if last_ok.elapsed() + RENEW_EVERY >= LEASE_DURATION => {
                    return format!("could not renew the leader lease in time: {e}");
                }
                Err(e) => warn!(error = %e, "Renewing the leader lease failed; retrying"),
            }
        }
    }
}
